package shipper

import (
	"context"
	"fmt"
	"time"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper/restore"
)

// ErrExists means an output file exists and --force was not given.
var ErrExists = restore.ErrExists

// ReceiveOptions configure Receive and ReceiveInto.
type ReceiveOptions struct {
	Jobs     int // openers (each also writes); 0: restore.DefaultOpeners
	Streams  int
	Force    bool
	Counters *Counters
	Dest     string                        // names the destination in the restore marker
	Log      func(format string, a ...any) // notices; may be nil

	ReadBack    bool              // read every written block back after the sync (see restore.Options)
	NoSameOwner bool              // as root, do not restore owners and groups
	Include     []string          // restore only the files these shell patterns match
	Devices     map[string]string // restore these files onto block devices, in place
	LockWait    time.Duration     // wait this long for another receive into the folder
	// CheckHeld, for ReceiveInto: see restore.Options.CheckHeld.
	CheckHeld func(restore.Holding) error
	// Retries is how many times a receive that lost its connection is
	// tried again, each attempt resuming, after RetryDelay (doubling).
	Retries    int
	RetryDelay time.Duration
	// Finalize runs on each file written before it is renamed into place.
	Finalize func(ctx context.Context, f *restore.FinalFile) error
}

// ReceiveResult lists the restored files.
type ReceiveResult struct {
	Files    []string       // every file and folder, as restored on disk
	Entries  []archive.File // the manifest entry of each of Files (--include restores some)
	Written  int64          // bytes written or zeroed (receive --into: only the blocks that differed)
	Reused   int64          // data bytes an interrupted receive had written, reused
	Attempts int
}

// Receive restores the shipment into dir through the restore writer (see
// package restore for what it guarantees): nothing is at a final name
// until every file of the shipment checks out. A receive that was
// interrupted (killed, a lost connection) resumes: the blocks it wrote are
// checked on disk and reused. A lost connection is retried opts.Retries
// times.
func (sh *Shipment) Receive(ctx context.Context, dir string, opts ReceiveOptions) (*ReceiveResult, error) {
	return sh.receive(ctx, dir, opts, false)
}

func (sh *Shipment) receive(ctx context.Context, dir string, opts ReceiveOptions, update bool) (*ReceiveResult, error) {
	if opts.Counters == nil {
		opts.Counters = new(Counters)
	}
	if opts.Log == nil {
		opts.Log = func(string, ...any) {}
	}
	if opts.RetryDelay <= 0 {
		opts.RetryDelay = time.Second
	}
	if opts.Jobs <= 0 {
		opts.Jobs = restore.DefaultOpeners()
	}
	opts.Jobs, opts.Streams = sh.clampPipeline(opts.Jobs, opts.Streams, opts.Log)
	run := restore.NewRun()
	for attempt := 1; ; attempt++ {
		res, err := sh.receiveAttempt(ctx, dir, opts, update, run)
		if err == nil {
			res.Attempts = attempt
			return res, nil
		}
		if !retryableReceive(ctx, err) || attempt > opts.Retries {
			return nil, err
		}
		delay := opts.RetryDelay << min(attempt-1, 6)
		opts.Log("attempt %d failed: %v; resuming in %s", attempt, err, delay)
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, err
		}
	}
}

// receiveAttempt is one attempt: open the restore writer (resuming what
// an earlier attempt left), stream the table, fetch and write what is
// needed, commit.
func (sh *Shipment) receiveAttempt(ctx context.Context, dir string, opts ReceiveOptions, update bool, run uint32) (res *ReceiveResult, err error) {
	m := sh.Manifest
	cnt := opts.Counters
	cnt.Total.Store(0)
	cnt.Done.Store(0)
	cnt.Data.Store(0)
	rs := restore.Shipment{ID: m.ID, Format: m.Format, BlockSize: m.BlockSize, Files: m.Files, Label: &m.Label}
	if sh.trust != nil {
		rs.Chain, rs.Statement = sh.trust.Statement.Chain, sh.trust.SHA256
	}
	w, err := restore.Open(ctx, rs, restore.Options{
		Dir: dir, Update: update, Force: opts.Force, Resume: true, ReadBack: opts.ReadBack, NoSameOwner: opts.NoSameOwner,
		Include: opts.Include, Devices: opts.Devices, LockWait: opts.LockWait, Jobs: opts.Jobs, Dest: opts.Dest,
		CheckHeld: opts.CheckHeld, Counters: cnt, Finalize: opts.Finalize, Log: opts.Log, Run: run,
	})
	if err != nil {
		return nil, err
	}
	defer func() {
		// Kept for the next attempt or run to resume, unless it failed in
		// a way that would fail again.
		w.Close(err != nil && (retryableReceive(ctx, err) || ctx.Err() != nil))
	}()
	cnt.Hole.Store(0)
	cnt.Sparse.Store(0)
	v3 := m.Format >= archive.FormatV3
	for i := range m.Files {
		if w.Restored(i) {
			cnt.Total.Add(m.Files[i].Size)
			if v3 {
				cnt.Sparse.Add(zeroBlockBytes(&m.Files[i], m.BlockSize))
			}
		}
	}
	err = sh.readBlocks(ctx, fetch{
		streams: opts.Streams, jobs: opts.Jobs, cnt: cnt,
		want: func(e *archive.TableEntry) (bool, error) {
			if !w.Restored(int(e.File)) {
				return false, nil
			}
			return w.Need(int(e.File), int64(e.Block), e.Digest)
		},
		handle: func(e *archive.TableEntry, payload []byte, data int64) error {
			if v3 {
				return w.WriteForm(int(e.File), int64(e.Block), payload, e.Digest, data)
			}
			return w.WriteDense(int(e.File), int64(e.Block), payload, e.Digest)
		},
	})
	if err != nil {
		return nil, err
	}
	r, err := w.Commit(ctx)
	if err != nil {
		return nil, err
	}
	if r.Reused > 0 {
		opts.Log("resumed an interrupted receive: %d bytes were already written and checked", r.Reused)
	}
	res = &ReceiveResult{Files: r.Files, Written: r.Written, Reused: r.Reused}
	for _, i := range r.Entries {
		res.Entries = append(res.Entries, m.Files[i])
	}
	return res, nil
}

// Verify authenticates every block of the shipment, checks every file's
// whole-file digest (and, format 3, data bytes) and every segment's
// checksum, writing nothing.
func (sh *Shipment) Verify(ctx context.Context, streams, jobs int, cnt *Counters) error {
	return sh.verify(ctx, streams, jobs, cnt)
}

// fileDigests computes, for verify, each file's whole-file digest from
// the table's digests as it streams by.
type fileDigests struct {
	m    *archive.Manifest
	file int
	fd   *archive.FileDigester
}

// add takes the next entry of the table (nil at its end), finishing the
// files before it.
func (d *fileDigests) add(e *archive.TableEntry) error {
	end := len(d.m.Files)
	if e != nil {
		end = int(e.File)
	}
	for ; d.file < end; d.file++ {
		if err := d.finish(); err != nil {
			return err
		}
	}
	if e == nil {
		return nil
	}
	if d.fd == nil {
		f := &d.m.Files[d.file]
		d.fd = archive.NewFileDigester(d.m.Format, f.Size, d.m.BlockSize)
	}
	return d.fd.Add(int64(e.Block), e.Digest)
}

func (d *fileDigests) finish() error {
	f := &d.m.Files[d.file]
	fd := d.fd
	d.fd = nil
	if f.Type != archive.TypeFile {
		return nil
	}
	if fd == nil {
		fd = archive.NewFileDigester(d.m.Format, f.Size, d.m.BlockSize)
	}
	if fd.Sum() != f.BLAKE3 {
		return fmt.Errorf("%s: whole-file digest does not match its blocks: %w", f.Path, archive.ErrIntegrity)
	}
	return nil
}

// zeroBlockBytes returns the bytes of f's blocks that hold no data (zero
// blocks, never fetched), as the restore writer passes them: at least the
// file less its data blocks (a short last block counts whole).
func zeroBlockBytes(f *archive.File, blockSize int64) int64 {
	return max(0, f.Size-f.DataBlocks*blockSize)
}
