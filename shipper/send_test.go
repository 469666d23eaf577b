package shipper_test

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
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/local"
)

// faulty wraps a Transport and fails segment Puts after the first okSegs,
// like a connection that drops in the middle of a send; with late, after
// reading all of the segment's bytes (as when the sync or rename fails,
// while the sender already writes the next segment).
type faulty struct {
	shipper.Transport
	okSegs   int32
	late     bool
	segPuts  atomic.Int32
	mu       sync.Mutex
	putNames []string
}

var errDropped = errors.New("connection dropped")

func (f *faulty) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if strings.Contains(name, "/segments/") {
		if f.segPuts.Add(1) > f.okSegs {
			if f.late {
				io.Copy(io.Discard, r)
			} else {
				io.CopyN(io.Discard, r, 1000)
			}
			return errDropped
		}
	}
	f.mu.Lock()
	f.putNames = append(f.putNames, name)
	f.mu.Unlock()
	return f.Transport.Put(ctx, name, r, size)
}

func newIdentity(t *testing.T) (*age.X25519Identity, age.Recipient) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id, id.Recipient()
}

func writeRandom(t *testing.T, path string, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestResumeAfterInterruptedSend(t *testing.T) {
	for _, late := range []bool{false, true} {
		t.Run(fmt.Sprintf("late=%v", late), func(t *testing.T) { testResume(t, late) })
	}
}

func testResume(t *testing.T, late bool) {
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	data := writeRandom(t, src, 40*64<<10) // 40 blocks of 64 KiB
	sources, err := archive.CollectSources([]string{src})
	if err != nil {
		t.Fatal(err)
	}
	id, rcpt := newIdentity(t)
	base, _ := local.New(filepath.Join(dir, "dest"))
	opts := shipper.SendOptions{
		Recipients: []age.Recipient{rcpt}, BlockSize: 64 << 10, SegmentSize: 256 << 10, Jobs: 2, Streams: 1,
		StateDir: filepath.Join(dir, "state"), Dest: "test-dest", RecipientsID: "r1",
	}

	// First run: the link drops after 3 segments.
	tr := &faulty{Transport: base, okSegs: 3, late: late}
	_, err = shipper.Send(context.Background(), tr, sources, opts)
	if !errors.Is(err, errDropped) || !strings.Contains(err.Error(), "run the same command again to resume") {
		t.Fatalf("interrupted send: err = %v, want the dropped connection and how to resume", err)
	}
	ships, _ := shipper.List(context.Background(), base)
	if len(ships) != 1 || ships[0].Complete {
		t.Fatalf("after the interruption list = %+v, want one incomplete shipment", ships)
	}

	// Rerun: only the missing segments go up, under a new key slot.
	tr2 := &faulty{Transport: base, okSegs: 1 << 30}
	res, err := shipper.Send(context.Background(), tr2, sources, opts)
	if err != nil {
		t.Fatalf("resumed send: %v", err)
	}
	if res.ID != ships[0].ID || !res.Resumed {
		t.Errorf("rerun made shipment %s (resumed %v), want to resume %s", res.ID, res.Resumed, ships[0].ID)
	}
	if got := tr2.segPuts.Load(); got < 1 || got > 8 {
		t.Errorf("rerun uploaded %d segments; the full shipment has ~10 and 3 were already there", got)
	}
	for _, n := range tr2.putNames {
		// (The header is put again by every attempt: the same bytes.)
		for _, old := range []string{"segments/00000001", "segments/00000002", "segments/00000003", "keys/0000"} {
			if strings.HasSuffix(n, old) {
				t.Errorf("rerun uploaded %s again", n)
			}
		}
	}
	restore(t, base, res.ID, id, data)
}

func TestRetryWithinOneRun(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	data := writeRandom(t, src, 20*64<<10)
	sources, _ := archive.CollectSources([]string{src})
	id, rcpt := newIdentity(t)
	base, _ := local.New(filepath.Join(dir, "dest"))
	tr := &flaky{Transport: base}
	var logs bytes.Buffer
	res, err := shipper.Send(context.Background(), tr, sources, shipper.SendOptions{
		Recipients: []age.Recipient{rcpt}, BlockSize: 64 << 10, SegmentSize: 128 << 10, Streams: 2,
		Retries: 3, RetryDelay: 1, Log: func(f string, a ...any) { logs.WriteString(f + "\n") },
	})
	if err != nil {
		t.Fatalf("send with one dropped segment and retries: %v", err)
	}
	if res.Attempts != 2 || !strings.Contains(logs.String(), "resuming") {
		t.Errorf("attempts = %d, log %q; want a second, resuming attempt", res.Attempts, logs.String())
	}
	restore(t, base, res.ID, id, data)
}

// flaky fails the third segment Put once.
type flaky struct {
	shipper.Transport
	n atomic.Int32
}

func (f *flaky) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if strings.Contains(name, "/segments/") && f.n.Add(1) == 3 {
		return errDropped
	}
	return f.Transport.Put(ctx, name, r, size)
}

func TestSourceChangedStartsNewShipment(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	writeRandom(t, src, 10*64<<10)
	sources, _ := archive.CollectSources([]string{src})
	id, rcpt := newIdentity(t)
	base, _ := local.New(filepath.Join(dir, "dest"))
	var logs bytes.Buffer
	opts := shipper.SendOptions{
		Recipients: []age.Recipient{rcpt}, BlockSize: 64 << 10, SegmentSize: 128 << 10, Streams: 1,
		StateDir: filepath.Join(dir, "state"), Dest: "d", RecipientsID: "r",
		Log: func(f string, a ...any) { logs.WriteString(f + "\n") },
	}
	if _, err := shipper.Send(context.Background(), &faulty{Transport: base, okSegs: 2}, sources, opts); err == nil {
		t.Fatal("interrupted send succeeded")
	}
	data := writeRandom(t, src, 10*64<<10) // the source changes meanwhile
	sources, _ = archive.CollectSources([]string{src})
	res, err := shipper.Send(context.Background(), base, sources, opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Resumed || !strings.Contains(logs.String(), "starting a new shipment") {
		t.Errorf("resumed = %v, log %q: want a new shipment, said so", res.Resumed, logs.String())
	}
	restore(t, base, res.ID, id, data)
}

func restore(t *testing.T, tr shipper.Transport, shipID string, id age.Identity, want []byte) {
	t.Helper()
	files := decodeV3(t, tr, shipID, []age.Identity{id})
	if !bytes.Equal(files["disk.img"], want) {
		t.Fatalf("restored image differs from the source")
	}
}

// keyFails fails the first key Put, after the segments of that attempt had
// time to land: they must not count as shipped, since no key opens them.
type keyFails struct {
	shipper.Transport
	failed atomic.Bool
}

func (k *keyFails) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if strings.HasSuffix(name, "/keys/0000") && k.failed.CompareAndSwap(false, true) {
		time.Sleep(300 * time.Millisecond)
		return errDropped
	}
	return k.Transport.Put(ctx, name, r, size)
}

func TestKeyLostSegmentsResent(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	data := writeRandom(t, src, 12*64<<10)
	sources, _ := archive.CollectSources([]string{src})
	id, rcpt := newIdentity(t)
	base, _ := local.New(filepath.Join(dir, "dest"))
	res, err := shipper.Send(context.Background(), &keyFails{Transport: base}, sources, shipper.SendOptions{
		Recipients: []age.Recipient{rcpt}, BlockSize: 64 << 10, SegmentSize: 128 << 10, Streams: 2, Retries: 2, RetryDelay: 1,
	})
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	if _, err := base.Stat(context.Background(), res.ID+"/keys/0000"); !errors.Is(err, shipper.ErrNotFound) {
		t.Fatalf("keys/0000 should be missing: %v", err)
	}
	restore(t, base, res.ID, id, data)
}
