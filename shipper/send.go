package shipper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"filippo.io/age"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper/blocks"
)

// Defaults chosen by benchmark (see the README's Performance section).
const (
	DefaultBlockSize   = 1 << 20
	DefaultSegmentSize = 64 << 20
	DefaultStreams     = 4
)

// ErrSourceChanged means a source file changed while it was being shipped.
var ErrSourceChanged = blocks.ErrSourceChanged

// SendOptions configure Send.
type SendOptions struct {
	Recipients  []age.Recipient
	Jobs        int   // parallel readers and sealers; 0 = all CPUs; clamped to the memory bound
	Streams     int   // segments uploaded at once; 0 = DefaultStreams
	BlockSize   int64 // 0 = DefaultBlockSize
	SegmentSize int64 // 0 = DefaultSegmentSize
	Compress    bool  // zstd per block where it helps
	Label       string
	Counters    *Counters // may be nil
	Now         func() time.Time

	// Resuming: with a StateDir, an interrupted send leaves a journal there
	// and the next Send of the same sources to the same Dest resumes it.
	StateDir     string
	Dest         string // names the destination in the journal
	RecipientsID string // RecipientsFingerprint of the recipients
	NoResume     bool
	// Base makes the send keep DR state for (Dest, sources) in StateDir
	// and, given "latest" or a shipment id, compare every block with that
	// earlier shipment and ship only the blocks that changed: the new
	// shipment refers to the records of the base for the others. When the
	// state does not fit the destination or the options, the send is a full
	// one (Log says why). "none" forces a full shipment that starts a new
	// chain. Needs StateDir and RecipientsID.
	Base string
	// BaseSizeOnly checks the base segments an incremental shipment may
	// use for their presence and size only. By default their content is
	// read back and checked too (their CRC32C, as key-less verify does):
	// a base segment damaged since it was sent would otherwise give an
	// incremental shipment that exits 0 and cannot be restored.
	BaseSizeOnly bool
	Retries      int           // attempts after a transient failure, each resuming
	RetryDelay   time.Duration // first backoff delay; doubles each time
	// CleanLeftovers says the caller holds the destination's lock: no
	// other run can be writing there, so unfinished uploads (S3 multipart
	// uploads) that earlier runs left under shipment folders are aborted.
	CleanLeftovers bool
	Log            func(format string, a ...any)
}

// SendResult describes a finished shipment.
type SendResult struct {
	ID       string
	Files    int
	Resumed  bool // continued an interrupted shipment
	Attempts int
	Duration time.Duration
	Base     string // the shipment this one is incremental on; "" for a full one
	// FullReason says why a send asked to be incremental is a full one.
	FullReason string
	// Inventory is the SHA-256 of the inventory object the send put: what
	// SignShipment signs must be what this send wrote.
	Inventory archive.Digest
}

// Send reads the sources, seals their blocks under a fresh shipment key
// wrapped for opts.Recipients, and puts a format 3 shipment to tr. Holes are
// never read, zero pages are not shipped; the manifest is put last, so a
// failed or interrupted Send leaves an incomplete shipment that receive
// refuses and list marks incomplete. Memory does not grow with the
// sources: per-block state is kept in a file (see blockState).
//
// A transient failure is retried opts.Retries times with backoff; each
// retry, like a rerun of the same command after a crash, resumes: segments
// already complete at the destination are checked and kept, the rest is
// sealed under a new key slot. A resumed send completes only a shipment
// that passes the key-less check of its inventory.
func Send(ctx context.Context, tr Transport, sources []archive.Source, opts SendOptions) (*SendResult, error) {
	start := time.Now()
	if err := opts.normalize(); err != nil {
		return nil, err
	}
	files, err := openSources(sources)
	if err != nil {
		return nil, err
	}
	defer closeSources(files)
	if opts.CleanLeftovers {
		// Best effort: what is not aborted now, the next run or prune does.
		if _, err := AbortLeftoverUploads(ctx, tr, "", start, opts.Log); err != nil {
			opts.Log("warning: %v", err)
		}
	}
	r := &sendRun{tr: tr, opts: &opts, files: files, sources: sources}
	defer r.close()
	if err := r.prepare(ctx); err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		resetAttempt(opts.Counters)
		id, err := r.attempt(ctx)
		if err == nil {
			r.j.close(true)
			return &SendResult{ID: id, Files: len(files), Resumed: r.resumed, Attempts: attempt, Duration: time.Since(start),
				Base: r.base.id(), FullReason: r.fullReason, Inventory: r.inventory}, nil
		}
		if !retryable(ctx, err) || attempt > opts.Retries {
			if n := len(r.j.complete()); n > 0 && r.j.path != "" && retryable(ctx, err) {
				err = fmt.Errorf("%w\n(%d segments of shipment %s are at the destination: run the same command again to resume)",
					err, n, r.j.hdr.ID)
			}
			return nil, err
		}
		delay := opts.RetryDelay << min(attempt-1, 6)
		opts.Log("attempt %d failed: %v; resuming in %s", attempt, err, delay)
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, err
		}
		r.resumed = true
	}
}

// normalize fills in defaults and checks the options.
func (o *SendOptions) normalize() error {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	if o.Counters == nil {
		o.Counters = new(Counters)
	}
	if o.Streams <= 0 {
		o.Streams = DefaultStreams
	}
	if o.BlockSize == 0 {
		o.BlockSize = DefaultBlockSize
	}
	if o.BlockSize < archive.MinBlockSize || o.BlockSize > archive.MaxBlockSize || o.BlockSize%archive.PageSize != 0 {
		return fmt.Errorf("block size %d: want a multiple of 4 KiB in [%d, %d]", o.BlockSize, archive.MinBlockSize, archive.MaxBlockSize)
	}
	if o.SegmentSize <= 0 {
		o.SegmentSize = DefaultSegmentSize
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = time.Second
	}
	if len(o.Recipients) == 0 {
		return errors.New("no recipients")
	}
	if o.Base != "" && (o.StateDir == "" || o.RecipientsID == "") {
		return errors.New("incremental shipments need a state directory and recipients (not a passphrase)")
	}
	if o.Jobs <= 0 {
		o.Jobs = runtime.NumCPU()
	}
	if limit := blocks.MaxJobs(o.BlockSize, 0, true); o.Jobs > limit {
		o.Log("notice: --jobs %d would take more memory than the bound allows at this block size: using %d", o.Jobs, limit)
		o.Jobs = limit
	}
	return nil
}

// resetAttempt zeroes the counters an attempt counts again from the
// start; what was put (Shipped, Segments) and reused counts for the run.
func resetAttempt(c *Counters) {
	for _, v := range c.PerAttempt() {
		v.Store(0)
	}
}

// retryable reports whether another attempt might succeed.
func retryable(ctx context.Context, err error) bool {
	return ctx.Err() == nil && !errors.Is(err, ErrPermanent) && !errors.Is(err, ErrAuth) &&
		!errors.Is(err, ErrSourceChanged) && !errors.Is(err, archive.ErrIntegrity) && !errors.Is(err, context.Canceled) &&
		!errors.Is(err, context.DeadlineExceeded)
}

// sendRun is what lasts from one attempt of a send to the next.
type sendRun struct {
	tr         Transport
	opts       *SendOptions
	files      []*sendFile
	sources    []archive.Source
	keys       *stateKeys
	j          *journal
	resumed    bool
	dr         *drStore // nil unless DR state is kept
	base       *drBase  // nil for a full shipment
	fullReason string
	state      *blockState
	inventory  archive.Digest // SHA-256 of the inventory object finish put
}

func (r *sendRun) close() {
	r.state.close()
	r.j.close(false)
}

func (r *sendRun) compression() string {
	return map[bool]string{false: "none", true: "zstd"}[r.opts.Compress]
}

// formerState returns, for a labelled series without DR state of its own,
// the state that an earlier coldship kept for its sources whatever their
// label, with the shipment there to build on: the newest of this label
// (for --base latest) or the one named, if it is of this label (its
// header at the destination says). Without one, it returns the series'
// own, empty state.
func (r *sendRun) formerState(ctx context.Context) (*drStore, string) {
	opts := r.opts
	old := openDRStore(opts.StateDir, opts.Dest, r.sources, "", r.keys)
	ids := old.tables()
	for i := len(ids) - 1; i >= 0; i-- {
		if opts.Base != "latest" && ids[i] != opts.Base {
			continue
		}
		if h, _, err := readHeader(ctx, r.tr, ids[i]); err == nil && h.Label == opts.Label {
			return old, ids[i]
		}
		if opts.Base != "latest" {
			break
		}
	}
	return r.dr, opts.Base
}

// prepare loads the state key, chooses the base, resumes or starts the
// journal, and opens the per-block state.
func (r *sendRun) prepare(ctx context.Context) error {
	opts := r.opts
	var err error
	if r.keys, err = loadStateKeys(opts.StateDir, opts.Log); err != nil {
		return err
	}
	if opts.Base != "" {
		r.dr = openDRStore(opts.StateDir, opts.Dest, r.sources, opts.Label, r.keys)
		if opts.Base != "none" {
			from, want := r.dr, opts.Base
			if opts.Label != "" && len(r.dr.tables()) == 0 {
				from, want = r.formerState(ctx)
			}
			base, why, err := from.chooseBase(ctx, r.tr, want, opts)
			if err != nil {
				return err
			}
			if base == nil {
				r.fullReason = why
				opts.Log("sending a full shipment: %s", why)
			}
			r.base = base
		}
	}
	jpath, statesDir := "", ""
	if opts.StateDir != "" {
		jpath = journalPath(opts.StateDir, opts.Dest, r.sources)
		statesDir = filepath.Dir(jpath)
		os.Remove(strings.TrimSuffix(jpath, ".journal") + ".json") // of an older coldship: its shipment is of format 1 or 2
		if opts.NoResume {
			os.Remove(jpath)
		} else if err := r.loadJournal(ctx, jpath); err != nil {
			return err
		}
	}
	if r.j == nil {
		if err := r.newJournal(jpath); err != nil {
			return err
		}
	}
	r.j.warn = func(err error) { opts.Log("warning: %v (an interrupted send will not resume)", err) }
	r.state, err = newBlockState(statesDir, strings.TrimSuffix(filepath.Base(jpath), ".journal")+".blocks")
	return err
}

// newJournal starts a new shipment: its id, header and journal.
func (r *sendRun) newJournal(path string) error {
	opts := r.opts
	now := opts.Now()
	id, err := archive.NewID(now)
	if err != nil {
		return err
	}
	hdr := journalHeader{Format: journalFormat, Dest: opts.Dest, ID: id, Created: now.UTC().Truncate(time.Second),
		Label: opts.Label, BlockSize: opts.BlockSize, Compression: r.compression(), Recipients: opts.RecipientsID, Base: r.base.id()}
	for _, sf := range r.files {
		hdr.Files = append(hdr.Files, sf.journalFile())
	}
	_, hb, err := shipmentHeader(&hdr)
	if err != nil {
		return err
	}
	hdr.HeaderDigest = archive.ObjectDigest(hb)
	r.j, err = createJournal(path, r.keys.journalMAC, hdr)
	return err
}

// shipmentHeader returns the header object of the shipment a journal is for.
func shipmentHeader(j *journalHeader) (*archive.Header, []byte, error) {
	h := &archive.Header{Format: archive.FormatV3, ID: j.ID, Created: j.Created, Label: j.Label, BlockSize: j.BlockSize,
		Cipher: archive.CipherName, Compression: j.Compression, Base: j.Base}
	b, err := h.Marshal()
	return h, b, err
}
