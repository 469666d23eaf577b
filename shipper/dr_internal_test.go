package shipper

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coldship/coldship/archive"
)

// countingWaiter records what the bandwidth wrapper asks of the bucket.
type countingWaiter struct {
	mu    sync.Mutex
	total int
	max   int
}

func (w *countingWaiter) WaitN(ctx context.Context, n int) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.total += n
	w.max = max(w.max, n)
	return ctx.Err()
}

// memTransport holds objects in memory: enough to see what the wrapper
// passes through.
type memTransport struct {
	Transport
	mu      sync.Mutex
	objects map[string][]byte
}

func (m *memTransport) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.objects[name] = b
	return nil
}

func (m *memTransport) Open(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b := m.objects[name][offset:]
	if length >= 0 {
		b = b[:length]
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

func TestLimitBandwidthPaysForEveryByte(t *testing.T) {
	for _, size := range []int{0, 1, 32<<10 - 1, 32 << 10, 32<<10 + 1, 5<<20 + 17} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			w := &countingWaiter{}
			tr := LimitBandwidth(&memTransport{objects: map[string][]byte{}}, 100<<10).(*limitedTransport)
			tr.lim = w
			data := make([]byte, size)
			rand.Read(data)
			ctx := context.Background()
			if err := tr.Put(ctx, "x", bytes.NewReader(data), int64(size)); err != nil {
				t.Fatal(err)
			}
			rc, err := tr.Open(ctx, "x", 0, -1)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read back %d bytes, %v", len(got), err)
			}
			if w.total != 2*size {
				t.Errorf("the bucket was asked for %d bytes, want %d (every byte put and read)", w.total, 2*size)
			}
			if w.max > tr.burst {
				t.Errorf("asked for %d tokens at once, more than the burst %d", w.max, tr.burst)
			}
		})
	}
}

func TestLimitBandwidthStopsOnCancel(t *testing.T) {
	tr := LimitBandwidth(&memTransport{objects: map[string][]byte{}}, 1) // a byte per second
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := tr.Put(ctx, "x", bytes.NewReader(make([]byte, 1<<20)), 1<<20)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Put under a cancelled context: %v", err)
	}
}

func TestRunLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks", "x.lock")
	ctx := context.Background()
	l, err := AcquireLock(ctx, path, "destination d", 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = AcquireLock(ctx, path, "destination d", 0)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Errorf("second lock: %v; want ErrLocked naming the holder", err)
	}
	go func() {
		time.Sleep(100 * time.Millisecond)
		l.Release()
	}()
	l2, err := AcquireLock(ctx, path, "destination d", time.Minute)
	if err != nil {
		t.Fatalf("waiting for the lock: %v", err)
	}
	l2.Release()
	l2.Release() // harmless
	cctx, cancel := context.WithCancel(ctx)
	l3, _ := AcquireLock(ctx, path, "destination d", 0)
	cancel()
	if _, err := AcquireLock(cctx, path, "destination d", time.Minute); !errors.Is(err, context.Canceled) {
		t.Errorf("waiting under a cancelled context: %v", err)
	}
	l3.Release()
}

func TestKeyedDigestHidesContent(t *testing.T) {
	dir := t.TempDir()
	k1, err := loadStateKeys(dir, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(stateKeyFile(dir))
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state key mode %v, want 0600", fi.Mode())
	}
	k2, _ := loadStateKeys(dir, t.Logf)
	d := archive.FormDigest([]byte{1, 'x'}, 4096)
	if k1.keyedDigest(3, d) != k2.keyedDigest(3, d) || k1.id != k2.id || k1.journalMAC != k2.journalMAC {
		t.Error("the state key is not kept")
	}
	if k1.keyedDigest(3, d) == d || k1.keyedDigest(3, d) == k1.keyedDigest(4, d) {
		t.Error("keyed digest equals the plain one, or does not bind the block's place")
	}
	if k1.journalMAC == k1.tableMAC {
		t.Error("the journal and the DR tables share a MAC key")
	}
	other, _ := loadStateKeys(t.TempDir(), t.Logf)
	if other.keyedDigest(3, d) == k1.keyedDigest(3, d) || other.id == k1.id {
		t.Error("another state key gives the same keyed digest")
	}
	eph, _ := loadStateKeys("", t.Logf)
	if eph.keyedDigest(3, d) == k1.keyedDigest(3, d) {
		t.Error("a run without a state directory uses the state key")
	}
}

// testTable writes a DR table of one file of two blocks, block 1 a record
// of 1000 bytes at 4000 of a segment of 5000, and returns the store.
func testTable(t *testing.T, mutate func(tb *drTable, e *archive.TableEntry)) (*drStore, *drTable) {
	t.Helper()
	keys, _ := loadStateKeys(t.TempDir(), t.Logf)
	s := &drStore{dir: t.TempDir(), keys: keys}
	id := "20261121T233000Z-3f9a1c2e"
	tb := &drTable{Format: drFormat, ID: id, BlockSize: 1 << 20, StateKey: keys.id,
		Shipments: []drShipment{{ID: id, Keys: []drKey{{Slot: 0}}, Segments: []archive.Segment{{Name: archive.SegmentObject(1), Size: 5000}}}},
		Files:     []drFile{{Name: "vm", Dir: true}, {Name: "vm/disk", Size: 2 << 20, First: 0, Count: 1}}}
	e := archive.TableEntry{File: 1, Block: 1, Offset: 4000, Length: 1000}
	if mutate != nil {
		mutate(tb, &e)
	}
	w, err := s.newWriter(id)
	if err != nil {
		t.Fatal(err)
	}
	w.add(&e)
	if err := s.save(tb, w); err != nil {
		t.Fatal(err)
	}
	return s, tb
}

func TestDRTableCheck(t *testing.T) {
	s, tb := testTable(t, nil)
	t2, err := s.load(tb.ID)
	if err != nil {
		t.Fatalf("good table: %v", err)
	}
	n := 0
	if err := s.readBlocks(t2, func(*archive.TableEntry) error { n++; return nil }); err != nil || n != 1 {
		t.Fatalf("good table: %v (%d entries)", err, n)
	}
	for name, mutate := range map[string]func(tb *drTable, e *archive.TableEntry){
		"outside segment":  func(tb *drTable, e *archive.TableEntry) { e.Length = 1001 },
		"missing segment":  func(tb *drTable, e *archive.TableEntry) { e.Segment = 1 },
		"missing shipment": func(tb *drTable, e *archive.TableEntry) { e.Base = 1 },
		"past the file":    func(tb *drTable, e *archive.TableEntry) { e.Block = 2 },
		"wrong file":       func(tb *drTable, e *archive.TableEntry) { e.File = 0 },
	} {
		s, tb := testTable(t, mutate)
		t2, err := s.load(tb.ID)
		if err == nil {
			err = s.readBlocks(t2, func(*archive.TableEntry) error { return nil })
		}
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	for name, mutate := range map[string]func(tb *drTable){
		"other id":      func(tb *drTable) { tb.Shipments[0].ID = "20261121T233000Z-00000000" },
		"format":        func(tb *drTable) { tb.Format = 9 },
		"count":         func(tb *drTable) { tb.Files[1].Count = 3 },
		"entries":       func(tb *drTable) { tb.Entries = 2 },
		"dir with data": func(tb *drTable) { tb.Files[0].Count = 1 },
		// The destination vouches for each shipment's segments and keys,
		// not for their order, which the entries index.
		"segments out of order": func(tb *drTable) {
			tb.Shipments[0].Segments = []archive.Segment{{Name: archive.SegmentObject(2), Size: 5000}, {Name: archive.SegmentObject(1), Size: 5000}}
		},
		"not a segment name": func(tb *drTable) { tb.Shipments[0].Segments = []archive.Segment{{Name: "keys/0000", Size: 5000}} },
		"key slot not listed": func(tb *drTable) {
			tb.Shipments[0].Segments = []archive.Segment{{Name: archive.SegmentObject(1), Size: 5000, Key: 1}}
		},
		"key slots out of order": func(tb *drTable) { tb.Shipments[0].Keys = []drKey{{Slot: 1}, {Slot: 0}} },
		"bases out of order": func(tb *drTable) {
			tb.Shipments = append(tb.Shipments, drShipment{ID: "20261120T233000Z-00000002"}, drShipment{ID: "20261120T233000Z-00000001"})
		},
		"itself as a base": func(tb *drTable) { tb.Shipments = append(tb.Shipments, drShipment{ID: tb.ID}) },
	} {
		tb := *tb
		tb.Files = append([]drFile(nil), tb.Files...)
		tb.Shipments = append([]drShipment(nil), tb.Shipments...)
		mutate(&tb)
		if tb.check() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A block file changed behind the sender's back does not verify.
	b, _ := os.ReadFile(s.blocksPath(tb.ID))
	b[30] ^= 1
	os.WriteFile(s.blocksPath(tb.ID), b, 0o600)
	if err := s.readBlocks(t2, func(*archive.TableEntry) error { return nil }); err == nil {
		t.Error("a changed block file verifies")
	}
	// An older table says so.
	os.WriteFile(s.headerPath(tb.ID), []byte(`{"format":1,"blocks":"AAAA"}`), 0o600)
	if _, err := s.load(tb.ID); !errors.Is(err, errOlderFormat) {
		t.Errorf("a format 1 table: %v", err)
	}
}
