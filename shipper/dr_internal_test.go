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

func TestDRBlockRoundTrip(t *testing.T) {
	var kd archive.Digest
	rand.Read(kd[:])
	for _, b := range []drBlock{
		{kind: kindHole},
		{kind: kindZero},
		{kind: kindData, compressed: true, ship: 65535, file: 1<<32 - 1, seg: 123456, off: 1 << 40, n: 64<<20 + 4152, kd: kd},
	} {
		f := drFile{Blocks: make([]byte, drBlockSize)}
		b.put(f.Blocks)
		got, ok := f.block(0)
		if !ok || got != b {
			t.Errorf("round trip: %+v, want %+v", got, b)
		}
		if _, ok := f.block(1); ok {
			t.Error("block past the end")
		}
	}
}

func TestKeyedDigestHidesContent(t *testing.T) {
	dir := t.TempDir()
	s1, err := openDRStore(dir, "d", nil)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(dir, "dr", "state.key"))
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state key mode %v, want 0600", fi.Mode())
	}
	s2, _ := openDRStore(dir, "d", nil)
	d := archive.BlockDigest([]byte("block"))
	if s1.keyed(3, d) != s2.keyed(3, d) || s1.keyID != s2.keyID {
		t.Error("the state key is not kept")
	}
	if s1.keyed(3, d) == d || s1.keyed(3, d) == s1.keyed(4, d) {
		t.Error("keyed digest equals the plain one, or does not bind the block's place")
	}
	other, _ := openDRStore(t.TempDir(), "d", nil)
	if other.keyed(3, d) == s1.keyed(3, d) || other.keyID == s1.keyID {
		t.Error("another state key gives the same keyed digest")
	}
}

func TestDRTableCheck(t *testing.T) {
	id := "20261121T233000Z-3f9a1c2e"
	good := func() *drTable {
		tb := &drTable{Format: drFormat, ID: id, BlockSize: 1 << 20,
			Shipments: []drShipment{{ID: id, Segments: []archive.Segment{{Name: archive.SegmentObject(1), Size: 5000}}}},
			Files:     []drFile{{Name: "disk", Size: 2 << 20, Blocks: make([]byte, 2*drBlockSize)}}}
		drBlock{kind: kindData, n: 1000, off: 4000}.put(tb.Files[0].Blocks)
		return tb
	}
	if err := good().check(); err != nil {
		t.Fatalf("good table: %v", err)
	}
	for name, mutate := range map[string]func(tb *drTable){
		"short table":      func(tb *drTable) { tb.Files[0].Size = 3 << 20 },
		"outside segment":  func(tb *drTable) { drBlock{kind: kindData, n: 1001, off: 4000}.put(tb.Files[0].Blocks) },
		"missing segment":  func(tb *drTable) { drBlock{kind: kindData, seg: 1, n: 10}.put(tb.Files[0].Blocks) },
		"missing shipment": func(tb *drTable) { drBlock{kind: kindData, ship: 1, n: 10}.put(tb.Files[0].Blocks) },
		"other id":         func(tb *drTable) { tb.Shipments[0].ID = "20261121T233000Z-00000000" },
		"format":           func(tb *drTable) { tb.Format = 9 },
	} {
		tb := good()
		mutate(tb)
		if tb.check() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
