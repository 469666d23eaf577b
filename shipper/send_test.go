package shipper_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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

// setup is what most send tests start from: a random image in a
// temporary folder, its sources, a key pair and a local destination.
type setup struct {
	dir, src string
	data     []byte
	sources  []archive.Source
	id       *age.X25519Identity
	rcpt     age.Recipient
	base     *local.Transport
}

// newSetup writes an image of n random bytes to dir/disk.img; the
// destination is dir/dest.
func newSetup(t *testing.T, n int) *setup {
	s := &setup{dir: t.TempDir()}
	s.src = filepath.Join(s.dir, "disk.img")
	s.data = writeRandom(t, s.src, n)
	var err error
	if s.sources, err = archive.CollectSources([]string{s.src}); err != nil {
		t.Fatal(err)
	}
	s.id, s.rcpt = newIdentity(t)
	if s.base, err = local.New(filepath.Join(s.dir, "dest")); err != nil {
		t.Fatal(err)
	}
	return s
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
	s := newSetup(t, 20*64<<10)
	data, sources, id, rcpt, base := s.data, s.sources, s.id, s.rcpt, s.base
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
	s := newSetup(t, 12*64<<10)
	data, sources, id, rcpt, base := s.data, s.sources, s.id, s.rcpt, s.base
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

// headerLate holds the first header Put until a segment is at the
// destination and its completion had time to be counted, and notes how
// many were counted by then.
type headerLate struct {
	shipper.Transport
	cnt   *shipper.Counters
	segs  atomic.Int32
	held  atomic.Bool
	early atomic.Int64
}

func (h *headerLate) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if strings.HasSuffix(name, "/"+archive.HeaderObject) && h.held.CompareAndSwap(false, true) {
		for deadline := time.Now().Add(10 * time.Second); h.segs.Load() < 1 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond)
		h.early.Store(h.cnt.Segments.Load())
	}
	err := h.Transport.Put(ctx, name, r, size)
	if err == nil && strings.Contains(name, "/segments/") {
		h.segs.Add(1)
	}
	return err
}

// TestSegmentsCountOnceHeaderLanded: a segment counts as complete (for
// the journal, and so for a resumed send) only once the shipment's header
// is at the destination, as a resume needs it; a send killed earlier
// starts a new shipment, and one killed during the header's Put left its
// temporary behind.
func TestSegmentsCountOnceHeaderLanded(t *testing.T) {
	s := newSetup(t, 12*64<<10)
	data, sources, id, rcpt, base := s.data, s.sources, s.id, s.rcpt, s.base
	cnt := new(shipper.Counters)
	tr := &headerLate{Transport: base, cnt: cnt}
	res, err := shipper.Send(context.Background(), tr, sources, shipper.SendOptions{
		Recipients: []age.Recipient{rcpt}, BlockSize: 64 << 10, SegmentSize: 128 << 10, Streams: 2, Counters: cnt,
	})
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	if tr.segs.Load() < 2 {
		t.Fatalf("%d segments put: want several", tr.segs.Load())
	}
	if n := tr.early.Load(); n != 0 {
		t.Fatalf("%d segments counted complete before the header landed", n)
	}
	if cnt.Segments.Load() < 2 {
		t.Fatalf("%d segments counted complete in the end", cnt.Segments.Load())
	}
	restore(t, base, res.ID, id, data)
}

// interrupted runs a send of a new 48-block image that the link cuts
// after okSegs segments, and returns what a rerun needs.
type interruptedSend struct {
	dir, src string
	data     []byte
	sources  []archive.Source
	id       age.Identity
	base     *local.Transport
	opts     shipper.SendOptions
	logs     *bytes.Buffer
	ship     string // the incomplete shipment
}

func interrupt(t *testing.T, okSegs int32, streams int) *interruptedSend {
	t.Helper()
	dir := t.TempDir()
	base, _ := local.New(filepath.Join(dir, "dest"))
	s := interruptOn(t, base, dir, okSegs, streams)
	s.base = base
	return s
}

// interruptOver interrupts a send to tr (one stream).
func interruptOver(t *testing.T, tr shipper.Transport, okSegs int32) *interruptedSend {
	return interruptOn(t, tr, t.TempDir(), okSegs, 1)
}

func interruptOn(t *testing.T, tr shipper.Transport, dir string, okSegs int32, streams int) *interruptedSend {
	t.Helper()
	// Block i has i%16+1 random pages, then zeros: records of many lengths.
	data := make([]byte, 48*64<<10)
	for i := range 48 {
		rand.Read(data[i*64<<10 : i*64<<10+(i%16+1)*4096])
	}
	return interruptData(t, tr, dir, okSegs, streams, data)
}

// interruptData is interruptOn with the image's content.
func interruptData(t *testing.T, tr shipper.Transport, dir string, okSegs int32, streams int, data []byte) *interruptedSend {
	t.Helper()
	s := &interruptedSend{dir: dir, logs: new(bytes.Buffer), data: data}
	s.src = filepath.Join(s.dir, "disk.img")
	if err := os.WriteFile(s.src, s.data, 0o644); err != nil {
		t.Fatal(err)
	}
	s.sources, _ = archive.CollectSources([]string{s.src})
	var rcpt age.Recipient
	s.id, rcpt = newIdentity(t)
	s.opts = shipper.SendOptions{
		Recipients: []age.Recipient{rcpt}, BlockSize: 64 << 10, SegmentSize: 256 << 10, Jobs: 2, Streams: streams,
		StateDir: filepath.Join(s.dir, "state"), Dest: "test-dest", RecipientsID: "r1",
		Log: func(f string, a ...any) { fmt.Fprintf(s.logs, f+"\n", a...) },
	}
	if _, err := shipper.Send(context.Background(), &faulty{Transport: tr, okSegs: okSegs}, s.sources, s.opts); err == nil {
		t.Fatal("interrupted send succeeded")
	}
	ships, _ := shipper.List(context.Background(), tr)
	if len(ships) != 1 || ships[0].Complete {
		t.Fatalf("after the interruption: %+v", ships)
	}
	s.ship = ships[0].ID
	return s
}

func (s *interruptedSend) journal() string {
	return shipper.JournalPath(s.opts.StateDir, s.opts.Dest, s.sources)
}

// rerun runs the same send again and checks that the shipment it
// completes decodes to the source.
func (s *interruptedSend) rerun(t *testing.T) *shipper.SendResult {
	t.Helper()
	return s.rerunWith(t, s.base)
}

func (s *interruptedSend) rerunWith(t *testing.T, tr shipper.Transport) *shipper.SendResult {
	t.Helper()
	s.logs.Reset()
	res, err := shipper.Send(context.Background(), tr, s.sources, s.opts)
	if err != nil {
		t.Fatalf("rerun: %v\n%s", err, s.logs)
	}
	restore(t, s.base, res.ID, s.id, s.data)
	return res
}

// records returns the records of the 'R' bodies of segment seg.
func records(bodies [][]byte, seg uint32) [][]byte {
	var recs [][]byte
	for _, body := range bodies {
		if body[0] != 'R' || binary.BigEndian.Uint32(body[1:]) != seg {
			continue
		}
		for p := body[5:]; len(p) > 0; p = p[shipper.JournalRecordSize:] {
			recs = append(recs, p[:shipper.JournalRecordSize])
		}
	}
	return recs
}

func addUint32(b []byte, d int32) {
	binary.BigEndian.PutUint32(b, uint32(int32(binary.BigEndian.Uint32(b))+d))
}

func swap(a, b []byte) {
	t := append([]byte(nil), a...)
	copy(a, b)
	copy(b, t)
}

// journalEdits are the edits of issue 14 that made a resumed send exit 0
// with a broken shipment, on a journal whose records no longer hold
// offsets (they are the running sum of the lengths): each edits the
// records of segment 1 (and 2).
var journalEdits = map[string]func(recs1, recs2 [][]byte){
	"offset +1":                       func(r, _ [][]byte) { addUint32(r[0][12:], 1); addUint32(r[1][12:], -1) },
	"length -1":                       func(r, _ [][]byte) { addUint32(r[0][12:], -1) },
	"swapped offsets":                 func(r, _ [][]byte) { swap(r[0][12:16], r[1][12:16]) },
	"swapped indexes":                 func(r, _ [][]byte) { swap(r[0][4:12], r[1][4:12]) },
	"indexes swapped across segments": func(r1, r2 [][]byte) { swap(r1[len(r1)-1][4:12], r2[0][4:12]) },
}

// TestResumeWithEditedJournal makes the journal edits of issue 14: by
// hand (the MAC no longer verifies: the journal is moved aside and a new
// shipment starts) and as if with the state key (the MAC verifies: what
// the records claim is checked against the segments and the sources).
// Either way the send ends with a shipment that decodes to the source.
func TestResumeWithEditedJournal(t *testing.T) {
	for name, edit := range journalEdits {
		for _, remac := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/remac=%v", name, remac), func(t *testing.T) {
				s := interrupt(t, 4, 1)
				shipper.RewriteJournal(t, s.journal(), s.opts.StateDir, remac, func(bodies [][]byte) [][]byte {
					r1, r2 := records(bodies, 1), records(bodies, 2)
					if len(r1) < 2 || len(r2) < 1 || binary.BigEndian.Uint32(r1[0][12:]) == binary.BigEndian.Uint32(r1[1][12:]) {
						t.Fatalf("segments 1 and 2 hold %d and %d records, of equal lengths", len(r1), len(r2))
					}
					edit(r1, r2)
					return bodies
				})
				res := s.rerun(t)
				if !remac {
					bad, _ := filepath.Glob(s.journal() + ".bad-*")
					if res.Resumed || len(bad) != 1 || !strings.Contains(s.logs.String(), "moved aside to "+bad[0]) {
						t.Errorf("resumed %v, moved aside %v, log:\n%s", res.Resumed, bad, s.logs)
					}
				} else if !res.Resumed || res.ID != s.ship {
					t.Errorf("resumed %v shipment %s, want %s resumed", res.Resumed, res.ID, s.ship)
				}
			})
		}
	}
}

// TestResumeFindsMisplacedRecords: a logic fault that swaps two whole
// records of equal length between segments in the journal (every field,
// the MAC recomputed) keeps every segment's records in order, tiling it,
// and each record's block digest and length right; only the records' tags
// show that neither record is where the journal says. The rerun must
// send both segments' blocks again, not complete a shipment that cannot
// be opened.
func TestResumeFindsMisplacedRecords(t *testing.T) {
	dir := t.TempDir()
	base, _ := local.New(filepath.Join(dir, "dest"))
	data := make([]byte, 24*64<<10)
	rand.Read(data) // incompressible: every record has the same length
	s := interruptData(t, base, dir, 3, 1, data)
	s.base = base
	shipper.RewriteJournal(t, s.journal(), s.opts.StateDir, true, func(bodies [][]byte) [][]byte {
		r1, r2 := records(bodies, 1), records(bodies, 2)
		if len(r1) < 2 || len(r2) < 2 || binary.BigEndian.Uint64(r1[len(r1)-1][4:])+1 != binary.BigEndian.Uint64(r2[0][4:]) {
			t.Fatalf("segments 1 and 2 do not hold consecutive blocks: %d and %d records", len(r1), len(r2))
		}
		swap(r1[len(r1)-1], r2[0]) // blocks k+1 and k: both segments still ascend
		return bodies
	})
	res := s.rerun(t)
	if !res.Resumed || !strings.Contains(s.logs.String(), "is not where the journal says") {
		t.Errorf("resumed %v; log:\n%s", res.Resumed, s.logs)
	}
}

// TestResumeRechecksReusedSegments flips a bit in a segment already at
// the destination (same size): the rerun reads it back, finds it
// differs, and sends its blocks again.
func TestResumeRechecksReusedSegments(t *testing.T) {
	s := interrupt(t, 4, 1)
	p := filepath.Join(s.dir, "dest", s.ship, "segments", "00000002")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	os.WriteFile(p, b, 0o644)
	cnt := new(shipper.Counters)
	s.opts.Counters = cnt
	res := s.rerun(t)
	if !res.Resumed || !strings.Contains(s.logs.String(), "segment segments/00000002 of shipment "+s.ship+": its content differs") {
		t.Errorf("resumed %v; log:\n%s", res.Resumed, s.logs)
	}
	if cnt.SegmentsReused.Load() != 3 {
		t.Errorf("%d segments reused, want the 3 intact ones", cnt.SegmentsReused.Load())
	}
	if _, err := os.Stat(p); err == nil {
		t.Error("the damaged segment is still at the destination")
	}
}

// TestDamagedJournalMovedAside: a journal that does not parse is moved
// aside with a warning, and the send completes a new shipment without a
// human.
func TestDamagedJournalMovedAside(t *testing.T) {
	s := interrupt(t, 2, 1)
	os.WriteFile(s.journal(), []byte("not a journal"), 0o600)
	res := s.rerun(t)
	bad, _ := filepath.Glob(s.journal() + ".bad-*")
	if res.Resumed || res.ID == s.ship || len(bad) != 1 || !strings.Contains(s.logs.String(), "warning: ") {
		t.Errorf("resumed %v as %s, moved aside %v, log:\n%s", res.Resumed, res.ID, bad, s.logs)
	}
}

// TestDamagedStateKeyReplaced: a state key file that holds no key is
// moved aside with a warning and replaced; the journal it keyed no longer
// verifies, so the send starts a new shipment, without a human.
func TestDamagedStateKeyReplaced(t *testing.T) {
	s := interrupt(t, 2, 1)
	key := filepath.Join(s.opts.StateDir, "dr", "state.key")
	os.WriteFile(key, []byte("not a key\n"), 0o600)
	res := s.rerun(t)
	bad, _ := filepath.Glob(key + ".bad-*")
	if res.Resumed || len(bad) != 1 || !strings.Contains(s.logs.String(), "moved aside to "+bad[0]) {
		t.Errorf("resumed %v, moved aside %v, log:\n%s", res.Resumed, bad, s.logs)
	}
	if b, err := os.ReadFile(key); err != nil || len(strings.TrimSpace(string(b))) != 64 {
		t.Errorf("no new state key: %q %v", b, err)
	}
}

// TestKeySlotNeverOverwritten resumes with a journal that forgot its key
// slots (restored from an old backup): the rerun must not write its key
// over keys/0000, which sealed the segments already there.
func TestKeySlotNeverOverwritten(t *testing.T) {
	s := interrupt(t, 3, 1)
	k0 := filepath.Join(s.dir, "dest", s.ship, "keys", "0000")
	before, err := os.ReadFile(k0)
	if err != nil {
		t.Fatal(err)
	}
	shipper.RewriteJournal(t, s.journal(), s.opts.StateDir, true, func(bodies [][]byte) [][]byte {
		var out [][]byte
		for _, b := range bodies {
			if b[0] != 'K' {
				out = append(out, b)
			}
		}
		return out
	})
	rec := &recorder{Transport: s.base}
	res := s.rerunWith(t, rec)
	for _, n := range rec.names() {
		if strings.HasSuffix(n, "/keys/0000") {
			t.Fatalf("the rerun wrote %s", n)
		}
	}
	if !res.Resumed || res.ID != s.ship {
		t.Errorf("resumed %v as %s", res.Resumed, res.ID)
	}
	if after, err := os.ReadFile(k0); err == nil && !bytes.Equal(before, after) {
		t.Error("keys/0000 changed")
	}
	if names := keyObjectNames(t, s.base, s.ship); len(names) < 1 || names[0] == "keys/0000" {
		t.Errorf("key objects %v: want the rerun's own slot, not keys/0000", names)
	}
}

// TestResumeCountsThisRun: after a resume, bytes shipped are those of the
// rerun only, and the reused segments are counted apart.
func TestResumeCountsThisRun(t *testing.T) {
	s := interrupt(t, 5, 1)
	var reusedBytes int64
	segs, _ := filepath.Glob(filepath.Join(s.dir, "dest", s.ship, "segments", "*"))
	for _, p := range segs {
		fi, _ := os.Stat(p)
		reusedBytes += fi.Size()
	}
	cnt := new(shipper.Counters)
	s.opts.Counters = cnt
	s.rerun(t)
	var total int64
	filepath.Walk(filepath.Join(s.dir, "dest", s.ship), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			total += fi.Size()
		}
		return nil
	})
	if cnt.SegmentsReused.Load() != int64(len(segs)) || cnt.Reused.Load() != reusedBytes {
		t.Errorf("reused %d segments of %d bytes, want %d of %d", cnt.SegmentsReused.Load(), cnt.Reused.Load(), len(segs), reusedBytes)
	}
	if shipped := cnt.Shipped.Load(); shipped <= 0 || shipped > total-reusedBytes+4096 {
		t.Errorf("shipped %d bytes; the shipment holds %d, of which %d were reused", shipped, total, reusedBytes)
	}
	var data int64
	for off := 0; off < len(s.data); off += 4096 {
		if !bytes.Equal(s.data[off:off+4096], make([]byte, 4096)) {
			data += 4096
		}
	}
	if cnt.Data.Load() != data || cnt.Total.Load() != int64(len(s.data)) || cnt.Zero.Load() != int64(len(s.data))-data {
		t.Errorf("data %d, zero %d, total %d; want %d of data in %d", cnt.Data.Load(), cnt.Zero.Load(), cnt.Total.Load(), data, len(s.data))
	}
}

// permanentPut fails every segment Put with a permanent error.
type permanentPut struct {
	shipper.Transport
	puts     atomic.Int32
	midWrite bool // fail part way through the segment, not after reading it all
}

func (p *permanentPut) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if strings.Contains(name, "/segments/") {
		p.puts.Add(1)
		if !p.midWrite {
			io.Copy(io.Discard, r)
			return fmt.Errorf("disk full: %w", shipper.ErrPermanent)
		}
		// As the local transport meets a full disk: the copy (through the
		// reader's WriteTo) fails part way with the file system's error,
		// which the transport then classifies.
		_, err := io.Copy(&fullDisk{room: 1000}, r)
		return fmt.Errorf("write %s: the destination is full: %w (%w)", name, err, shipper.ErrPermanent)
	}
	return p.Transport.Put(ctx, name, r, size)
}

// fullDisk takes room bytes, then fails as a full file system does.
type fullDisk struct{ room int }

func (d *fullDisk) Write(p []byte) (int, error) {
	n := min(len(p), d.room)
	d.room -= n
	if n < len(p) {
		return n, &fs.PathError{Op: "write", Path: "/dest/.00000001.tmp", Err: syscall.ENOSPC}
	}
	return n, nil
}

// TestPermanentErrorNotRetried: a permanent error fails the send at once,
// also when the transport meets it part way through a segment (a full
// disk), while the sender is still writing into it.
func TestPermanentErrorNotRetried(t *testing.T) {
	for _, midWrite := range []bool{false, true} {
		dir := t.TempDir()
		src := filepath.Join(dir, "disk.img")
		writeRandom(t, src, 8*64<<10)
		sources, _ := archive.CollectSources([]string{src})
		_, rcpt := newIdentity(t)
		base, _ := local.New(filepath.Join(dir, "dest"))
		tr := &permanentPut{Transport: base, midWrite: midWrite}
		_, err := shipper.Send(context.Background(), tr, sources, shipper.SendOptions{
			Recipients: []age.Recipient{rcpt}, BlockSize: 64 << 10, Streams: 1, Retries: 5, RetryDelay: time.Millisecond,
		})
		if !errors.Is(err, shipper.ErrPermanent) || tr.puts.Load() != 1 {
			t.Errorf("midWrite=%v: err %v after %d segment puts; want the permanent error after one", midWrite, err, tr.puts.Load())
		}
	}
}

// recorder records the names of the objects put.
type recorder struct {
	shipper.Transport
	mu  sync.Mutex
	put []string
}

func (r *recorder) Put(ctx context.Context, name string, rd io.Reader, size int64) error {
	r.mu.Lock()
	r.put = append(r.put, name)
	r.mu.Unlock()
	return r.Transport.Put(ctx, name, rd, size)
}

func (r *recorder) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.put...)
}

// TestSendSizes sends files of every size around page and block bounds,
// random and zero, with and without compression, in one shipment, and
// decodes it.
func TestSendSizes(t *testing.T) {
	for _, compress := range []bool{false, true} {
		t.Run(fmt.Sprintf("compress=%v", compress), func(t *testing.T) {
			dir := t.TempDir()
			vm := filepath.Join(dir, "vm")
			os.MkdirAll(filepath.Join(vm, "empty-dir"), 0o755)
			want := map[string][]byte{}
			for _, n := range []int{0, 1, 4095, 4096, 4097, 65535, 65536, 65537, 196625} {
				for _, kind := range []string{"zero", "random"} {
					b := make([]byte, n)
					if kind == "random" {
						rand.Read(b)
					}
					name := fmt.Sprintf("%s-%d", kind, n)
					os.WriteFile(filepath.Join(vm, name), b, 0o640)
					want["vm/"+name] = b
				}
			}
			sources, err := archive.CollectSources([]string{vm})
			if err != nil {
				t.Fatal(err)
			}
			id, rcpt := newIdentity(t)
			tr, _ := local.New(filepath.Join(dir, "dest"))
			res, err := shipper.Send(context.Background(), tr, sources, shipper.SendOptions{
				Recipients: []age.Recipient{rcpt}, BlockSize: 64 << 10, SegmentSize: 100 << 10, Compress: compress, Jobs: 3, Streams: 2,
			})
			if err != nil {
				t.Fatal(err)
			}
			got := decodeV3(t, tr, res.ID, []age.Identity{id})
			for name, b := range want {
				if !bytes.Equal(got[name], b) {
					t.Errorf("%s decodes to other bytes", name)
				}
			}
			if len(got) != len(want) {
				t.Errorf("%d files decoded, want %d", len(got), len(want))
			}
		})
	}
}

// failPut fails the Put of one object, naming it as transports do.
type failPut struct {
	shipper.Transport
	suffix string
}

func (f failPut) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if strings.HasSuffix(name, f.suffix) {
		io.Copy(io.Discard, r)
		return fmt.Errorf("put %s: %w", name, shipper.ErrPermanent)
	}
	return f.Transport.Put(ctx, name, r, size)
}

// TestPutErrorNamesObjectOnce: a failed put is reported with the object's
// name once (the transport names it; the send does not say it again).
func TestPutErrorNamesObjectOnce(t *testing.T) {
	for _, suffix := range []string{"/segments/00000001", "/" + archive.InventoryObject, "/" + archive.BlocksObject, "/" + archive.ManifestObject, "/keys/0000"} {
		s := newSetup(t, 256<<10)
		_, err := shipper.Send(context.Background(), failPut{s.base, suffix}, s.sources, shipper.SendOptions{
			Recipients: []age.Recipient{s.rcpt}, BlockSize: 64 << 10, Streams: 1, Retries: 0,
		})
		if err == nil {
			t.Fatalf("%s: the send succeeded", suffix)
		}
		if n := strings.Count(err.Error(), suffix); n != 1 {
			t.Errorf("%s: named %d times in %q", suffix, n, err)
		}
	}
}

// touchOnPut runs touch when the first segment is put: something that
// writes into a source folder while it is shipped.
type touchOnPut struct {
	shipper.Transport
	once  sync.Once
	touch func()
}

func (p *touchOnPut) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if strings.Contains(name, "/segments/") {
		p.once.Do(p.touch)
	}
	return p.Transport.Put(ctx, name, r, size)
}

// TestFolderChangedWhileShipped: a file that appears in, or is renamed
// within, a source folder while it is shipped is a source that changed
// (exit 6), not a shipment that exits 0 without it.
func TestFolderChangedWhileShipped(t *testing.T) {
	for name, change := range map[string]func(vm string){
		"file appears":   func(vm string) { os.WriteFile(filepath.Join(vm, "sub", "new.img"), []byte("x"), 0o644) },
		"file renamed":   func(vm string) { os.Rename(filepath.Join(vm, "sub", "small"), filepath.Join(vm, "sub", "moved")) },
		"folder appears": func(vm string) { os.Mkdir(filepath.Join(vm, "snap"), 0o755) },
	} {
		dir := t.TempDir()
		vm := filepath.Join(dir, "vm")
		os.MkdirAll(filepath.Join(vm, "sub"), 0o755)
		writeRandom(t, filepath.Join(vm, "disk.img"), 4*64<<10)
		os.WriteFile(filepath.Join(vm, "sub", "small"), []byte("s"), 0o644)
		sources, err := archive.CollectSources([]string{vm})
		if err != nil {
			t.Fatal(err)
		}
		_, rcpt := newIdentity(t)
		base, _ := local.New(filepath.Join(dir, "dest"))
		tr := &touchOnPut{Transport: base, touch: func() { change(vm) }}
		_, err = shipper.Send(context.Background(), tr, sources, shipper.SendOptions{
			Recipients: []age.Recipient{rcpt}, BlockSize: 64 << 10, Streams: 1,
		})
		if !errors.Is(err, shipper.ErrSourceChanged) {
			t.Errorf("%s: err %v; want ErrSourceChanged", name, err)
		}
		if m, _ := filepath.Glob(filepath.Join(dir, "dest", "*", archive.ManifestObject)); len(m) != 0 {
			t.Errorf("%s: a manifest was put: %v", name, m)
		}
	}
}

// TestSourceGoneBeforeOpen: a file listed as a source and gone when the
// send opens it is a source that changed (exit 6), not an unreadable
// one (exit 1): the operator looks at what else touches the VM's files.
func TestSourceGoneBeforeOpen(t *testing.T) {
	dir := t.TempDir()
	vm := filepath.Join(dir, "vm")
	os.MkdirAll(vm, 0o755)
	writeRandom(t, filepath.Join(vm, "disk.img"), 64<<10)
	os.WriteFile(filepath.Join(vm, "vm.xml"), []byte("<domain/>"), 0o644)
	sources, err := archive.CollectSources([]string{vm})
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(vm, "vm.xml"))
	_, rcpt := newIdentity(t)
	tr, _ := local.New(filepath.Join(dir, "dest"))
	_, err = shipper.Send(context.Background(), tr, sources, shipper.SendOptions{
		Recipients: []age.Recipient{rcpt}, BlockSize: 64 << 10, Streams: 1,
	})
	if !errors.Is(err, shipper.ErrSourceChanged) || !strings.Contains(fmt.Sprint(err), "vm.xml") {
		t.Errorf("err %v; want ErrSourceChanged naming vm.xml", err)
	}
}
