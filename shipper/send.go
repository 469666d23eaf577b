package shipper

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"filippo.io/age"
	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/shipper/internal/bufpool"
)

// Defaults chosen by benchmark (see the README's Performance section).
const (
	DefaultBlockSize   = 1 << 20
	DefaultSegmentSize = 64 << 20
	DefaultStreams     = 4
)

// ErrSourceChanged means a source file changed while it was being shipped.
var ErrSourceChanged = errors.New("source changed while shipping: is the VM still running?")

// SendOptions configure Send.
type SendOptions struct {
	Recipients  []age.Recipient
	Jobs        int   // parallel readers and sealers; 0 = all CPUs
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
	Base       string
	Retries    int           // attempts after a transient failure, each resuming
	RetryDelay time.Duration // first backoff delay; doubles each time
	Log        func(format string, a ...any)
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
}

// fileState is what the pipeline learns about one source file.
type fileState struct {
	src     archive.Source
	f       *os.File
	size    int64
	stamp   stamp
	ranges  []archive.Range
	digests []archive.Digest
	kinds   []byte          // per block: kindHole, kindZero or kindData
	blocks  []archive.Block // per block; Length 0 unless data; Segment holds the segment number
	placed  []bool          // per block: already in a complete segment (resume)

	// Incremental sends.
	base *drFile          // this file in the base's table, or nil
	kd   []archive.Digest // per data block: its keyed digest, for the next table
	ref  []bool           // per block: unchanged since the base, its base record used
}

// stamp is what must not change while a file is read.
type stamp = archive.Stamp

var statStamp = archive.StampOf

type blockJob struct {
	file   int
	index  int64
	off    int64
	n      int64
	placed bool // only its digest is needed
}

type sealedBlock struct {
	file       int
	index      int64
	record     []byte
	buf        []byte // to return to the pool
	compressed bool
	digest     archive.Digest
}

// sendState is what survives from one attempt of a send to the next, and
// what the journal persists across processes.
type sendState struct {
	j           *journal
	journalPath string
	resumed     bool
	dr          *drStore // nil unless DR state is kept
	base        *drBase  // nil for a full shipment
}

func (state *sendState) baseID() string {
	if state.base == nil {
		return ""
	}
	return state.base.t.ID
}

// Send reads the sources, seals their blocks under a fresh shipment key
// wrapped for opts.Recipients, and puts the shipment to tr. Holes are never
// read; all-zero blocks are not shipped. The manifest is put last, so a
// failed or interrupted Send leaves an incomplete shipment that receive
// refuses and list marks incomplete.
//
// A transient failure is retried opts.Retries times with backoff; each
// retry, like a rerun of the same command after a crash, resumes: segments
// already complete at the destination are kept, the rest is sealed under a
// new key slot.
func Send(ctx context.Context, tr Transport, sources []archive.Source, opts SendOptions) (*SendResult, error) {
	start := time.Now()
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Jobs <= 0 {
		opts.Jobs = runtime.NumCPU()
	}
	if opts.Streams <= 0 {
		opts.Streams = DefaultStreams
	}
	if opts.BlockSize == 0 {
		opts.BlockSize = DefaultBlockSize
	}
	if opts.BlockSize < archive.MinBlockSize || opts.BlockSize > archive.MaxBlockSize {
		return nil, fmt.Errorf("block size %d out of range [%d, %d]", opts.BlockSize, archive.MinBlockSize, archive.MaxBlockSize)
	}
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = DefaultSegmentSize
	}
	if opts.Counters == nil {
		opts.Counters = new(Counters)
	}
	if opts.Log == nil {
		opts.Log = func(string, ...any) {}
	}
	if opts.RetryDelay <= 0 {
		opts.RetryDelay = time.Second
	}
	if len(opts.Recipients) == 0 {
		return nil, errors.New("no recipients")
	}

	// Open every file first: a missing or unreadable source fails before
	// anything is written to the destination.
	files := make([]*fileState, len(sources))
	defer func() {
		for _, fs := range files {
			if fs != nil && fs.f != nil {
				fs.f.Close()
			}
		}
	}()
	for i, src := range sources {
		st := &fileState{src: src}
		files[i] = st
		if src.Info.IsDir() {
			continue
		}
		f, err := os.Open(src.Path)
		if err != nil {
			return nil, fmt.Errorf("open source: %w", err)
		}
		st.f = f
		if st.stamp, err = statStamp(f); err != nil {
			return nil, err
		}
		st.size = st.stamp.Size
		if st.ranges, err = archive.DataRanges(f, st.size); err != nil {
			return nil, err
		}
	}

	state := &sendState{}
	var fullReason string
	if opts.Base != "" {
		if opts.StateDir == "" || opts.RecipientsID == "" {
			return nil, errors.New("incremental shipments need a state directory and recipients (not a passphrase)")
		}
		dr, err := openDRStore(opts.StateDir, opts.Dest, sources)
		if err != nil {
			return nil, err
		}
		state.dr = dr
		if opts.Base != "none" {
			base, why, err := dr.chooseBase(ctx, tr, opts.Base, opts)
			if err != nil {
				return nil, err
			}
			if base == nil {
				fullReason = why
				opts.Log("sending a full shipment: %s", why)
			} else {
				state.base = base
				for _, st := range files {
					if st.f != nil {
						st.base = base.files[st.src.Name]
					}
				}
			}
		}
	}
	if opts.StateDir != "" {
		state.journalPath = journalPath(opts.StateDir, opts.Dest, sources)
		if opts.NoResume {
			os.Remove(state.journalPath)
		} else if err := state.loadResumable(ctx, tr, files, opts); err != nil {
			return nil, err
		}
	}

	for attempt := 1; ; attempt++ {
		for _, st := range files {
			st.reset(opts.BlockSize)
		}
		opts.Counters.Reset()
		id, err := sendAttempt(ctx, tr, files, state, opts)
		if err == nil {
			if state.journalPath != "" {
				os.Remove(state.journalPath)
			}
			return &SendResult{ID: id, Files: len(files), Resumed: state.resumed, Attempts: attempt, Duration: time.Since(start),
				Base: state.baseID(), FullReason: fullReason}, nil
		}
		if !retryable(ctx, err) || attempt > opts.Retries {
			if state.j != nil && len(state.j.Segments) > 0 && state.journalPath != "" && retryable(ctx, err) {
				err = fmt.Errorf("%w\n(%d segments of shipment %s are at the destination: run the same command again to resume)",
					err, len(state.j.Segments), state.j.ID)
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
		state.resumed = true
	}
}

// retryable reports whether another attempt might succeed.
func retryable(ctx context.Context, err error) bool {
	return ctx.Err() == nil && !errors.Is(err, ErrPermanent) && !errors.Is(err, ErrAuth) &&
		!errors.Is(err, ErrSourceChanged) && !errors.Is(err, archive.ErrIntegrity) && !errors.Is(err, context.Canceled)
}

func (st *fileState) reset(bs int64) {
	if st.f == nil {
		return
	}
	nb := (st.size + bs - 1) / bs
	st.digests = make([]archive.Digest, nb)
	st.blocks = make([]archive.Block, nb)
	st.kinds = make([]byte, nb)
	st.placed = make([]bool, nb)
	st.kd = make([]archive.Digest, nb)
	st.ref = make([]bool, nb)
}



// loadResumable adopts the journal of an interrupted send when the sources
// are unchanged and the destination still holds its incomplete shipment.
func (state *sendState) loadResumable(ctx context.Context, tr Transport, files []*fileState, opts SendOptions) error {
	j, err := loadJournal(state.journalPath)
	if err != nil || j == nil {
		return err
	}
	compression := map[bool]string{false: "none", true: "zstd"}[opts.Compress]
	why := ""
	switch {
	case j.Dest != opts.Dest || len(j.Files) != len(files):
		why = "the sources differ"
	case j.BlockSize != opts.BlockSize || j.Compression != compression || j.Label != opts.Label:
		why = "--block-size, --compress or --name differ"
	case j.Recipients != opts.RecipientsID:
		why = "the recipients differ"
	case j.Base != state.baseID():
		why = "its base differs"
	}
	if why == "" {
		for i, st := range files {
			if st.journalFile() != j.Files[i] {
				why = fmt.Sprintf("%s changed since", st.src.Path)
				break
			}
		}
	}
	if why == "" {
		if _, err := tr.Stat(ctx, j.ID+"/"+archive.ManifestObject); err == nil {
			why = "it completed"
		} else if hb, err := getObject(ctx, tr, j.ID+"/"+archive.HeaderObject, 64<<10); err != nil || archive.ObjectDigest(hb) != j.HeaderDigest {
			why = "its header is gone from the destination"
		}
	}
	if why != "" {
		opts.Log("not resuming shipment %s (%s): starting a new shipment", j.ID, why)
		os.Remove(state.journalPath)
		return nil
	}
	// Keep only segments still complete at the destination.
	kept := j.Segments[:0]
	for _, s := range j.Segments {
		if oi, err := tr.Stat(ctx, j.ID+"/"+s.Name); err == nil && oi.Size == s.Size {
			kept = append(kept, s)
		}
	}
	j.Segments = kept
	state.j, state.resumed = j, true
	opts.Log("resuming shipment %s: %d segments already at the destination", j.ID, len(kept))
	return nil
}

// sendAttempt runs one attempt of a send and returns the shipment id.
func sendAttempt(ctx context.Context, tr Transport, files []*fileState, state *sendState, opts SendOptions) (string, error) {
	cnt := opts.Counters
	for _, st := range files {
		cnt.Total.Add(st.size)
	}
	compression := map[bool]string{false: "none", true: "zstd"}[opts.Compress]
	putObject := func(name string, b []byte) error {
		if err := tr.Put(ctx, name, bytes.NewReader(b), int64(len(b))); err != nil {
			return fmt.Errorf("put %s: %w", name, err)
		}
		cnt.Shipped.Add(int64(len(b)))
		return nil
	}
	saveJournal := func() {
		if state.journalPath == "" {
			return
		}
		if err := state.j.save(state.journalPath); err != nil {
			opts.Log("warning: %v (an interrupted send will not resume)", err)
		}
	}

	var hdr archive.Header
	if state.j == nil {
		id, err := archive.NewID(opts.Now())
		if err != nil {
			return "", err
		}
		hdr = archive.Header{
			Format: archive.FormatVersion, ID: id, Created: opts.Now().UTC().Truncate(time.Second),
			Label: opts.Label, BlockSize: opts.BlockSize, Cipher: archive.CipherName, Compression: compression,
		}
		if state.base != nil {
			hdr.Format, hdr.Base = archive.FormatIncremental, state.baseID()
		}
		hb, err := hdr.Marshal()
		if err != nil {
			return "", err
		}
		j := &journal{Format: 1, Dest: opts.Dest, ID: id, Created: hdr.Created, Label: opts.Label, BlockSize: opts.BlockSize,
			Compression: compression, Recipients: opts.RecipientsID, HeaderDigest: archive.ObjectDigest(hb), Base: hdr.Base}
		for _, st := range files {
			j.Files = append(j.Files, st.journalFile())
		}
		state.j = j
		saveJournal()
	} else {
		hdr = archive.Header{
			Format: archive.FormatVersion, ID: state.j.ID, Created: state.j.Created,
			Label: state.j.Label, BlockSize: state.j.BlockSize, Cipher: archive.CipherName, Compression: state.j.Compression,
		}
		if state.j.Base != "" {
			hdr.Format, hdr.Base = archive.FormatIncremental, state.j.Base
		}
	}
	j := state.j
	id := j.ID
	hb, err := hdr.Marshal()
	if err != nil {
		return "", err
	}
	if archive.ObjectDigest(hb) != j.HeaderDigest {
		panic("shipper: internal error: header does not match the journal")
	}

	// A fresh key for every attempt: blocks sealed before stay under their
	// own slot, and nothing is ever sealed twice under one key and salt
	// space for different plaintext.
	key, err := cipher.NewKey()
	if err != nil {
		return "", err
	}
	wrapped, err := key.Wrap(opts.Recipients...)
	if err != nil {
		return "", fmt.Errorf("wrap shipment key: %w", err)
	}
	slot := j.Slots
	if slot > 9999 {
		return "", fmt.Errorf("shipment %s: too many attempts", id)
	}
	j.Slots++
	saveJournal()
	// The header and the wrapped key go up while the blocks are sealed: on
	// a long link their round trips (create, write, sync, rename) would
	// otherwise delay the first segment by a second or more. Only the
	// manifest, written last, makes the shipment complete. Every attempt
	// puts the header again (the same bytes), so a retry never depends on
	// whether an earlier attempt's header landed.
	var small errgroup.Group
	keyLanded := make(chan bool, 1)
	small.Go(func() error { return putObject(id+"/"+archive.HeaderObject, hb) })
	small.Go(func() error {
		err := putObject(id+"/"+archive.KeyObject(slot), wrapped)
		keyLanded <- err == nil
		close(keyLanded)
		return err
	})
	// A segment counts as complete (for the journal, and so for a resumed
	// send) only once the key that sealed it is at the destination too.
	keyOK := sync.OnceValue(func() bool { return <-keyLanded })
	smallDone := false
	defer func() {
		if !smallDone {
			small.Wait()
		}
	}()

	// Mark the blocks already in complete segments.
	nextSeg := 1
	for _, s := range j.Segments {
		n, _ := archive.SegmentNumber(s.Name)
		nextSeg = max(nextSeg, n+1)
		for _, b := range s.Blocks {
			st := files[b.File]
			st.placed[b.Index] = true
			st.blocks[b.Index] = archive.Block{Index: b.Index, Segment: n, Offset: b.Offset, Length: b.Length, Compressed: b.Compressed}
		}
		cnt.Shipped.Add(s.Size)
	}

	codec, err := archive.NewCodec(key, id, hdr.Format, opts.Compress, opts.Jobs)
	if err != nil {
		return "", err
	}
	defer codec.Close()

	var mu sync.Mutex
	onSegment := func(s archive.Segment, blocks []journalBlock) {
		if !keyOK() {
			return // this attempt fails; a retry seals these blocks again
		}
		mu.Lock()
		defer mu.Unlock()
		j.Segments = append(j.Segments, journalSegment{Segment: s, Blocks: blocks})
		saveJournal()
	}
	if err := runSendPipeline(ctx, tr, id, slot, nextSeg, files, codec, state.dr, opts, onSegment); err != nil {
		return "", err
	}
	smallDone = true
	if err := small.Wait(); err != nil {
		return "", err
	}

	// A source that changed while it was read would restore as a mix of old
	// and new blocks: refuse to complete such a shipment.
	for _, st := range files {
		if st.f == nil {
			continue
		}
		now, err := statStamp(st.f)
		if err != nil {
			return "", err
		}
		if now != st.stamp {
			return "", fmt.Errorf("%s: %w", st.src.Path, ErrSourceChanged)
		}
	}

	sort.Slice(j.Segments, func(a, b int) bool { return j.Segments[a].Name < j.Segments[b].Name })
	m := &archive.Manifest{
		Format: hdr.Format, ID: id, Created: hdr.Created, Label: hdr.Label,
		HeaderDigest: j.HeaderDigest, BlockSize: opts.BlockSize, Compression: compression,
	}
	segIndex := map[int]int{}
	for i, s := range j.Segments {
		n, _ := archive.SegmentNumber(s.Name)
		segIndex[n] = i
		m.Segments = append(m.Segments, s.Segment)
	}
	refs := state.base.plan(files)
	m.Bases = refs.bases
	for _, st := range files {
		m.Files = append(m.Files, st.manifestFile(opts.BlockSize, segIndex, refs))
	}
	mb, err := m.Seal(key, slot)
	if err != nil {
		return "", err
	}
	inv := &archive.Inventory{Format: hdr.Format, ID: id}
	inv.Objects = append(inv.Objects, archive.InventoryEntry{Name: archive.HeaderObject, Size: int64(len(hb)), BLAKE3: j.HeaderDigest})
	// The wrapped keys of the bases, copied so that the newest shipment
	// holds every key a receiver must unwrap.
	for _, kc := range refs.keyCopies(state.base) {
		if err := putObject(id+"/"+kc.name, kc.b); err != nil {
			return "", err
		}
		inv.Objects = append(inv.Objects, archive.InventoryEntry{Name: kc.name, Size: int64(len(kc.b)), BLAKE3: archive.ObjectDigest(kc.b)})
	}
	for _, b := range m.Bases {
		ib := archive.InventoryBase{ID: b.ID}
		for _, s := range b.Segments {
			ib.Objects = append(ib.Objects, archive.InventoryEntry{Name: s.Name, Size: s.Size, BLAKE3: s.BLAKE3})
		}
		inv.Bases = append(inv.Bases, ib)
	}
	for s := 0; s < j.Slots; s++ {
		if s == slot {
			inv.Objects = append(inv.Objects, archive.InventoryEntry{Name: archive.KeyObject(s), Size: int64(len(wrapped)), BLAKE3: archive.ObjectDigest(wrapped)})
			continue
		}
		kb, err := getObject(ctx, tr, id+"/"+archive.KeyObject(s), 1<<20)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				continue // an attempt that died before its key landed
			}
			return "", err
		}
		inv.Objects = append(inv.Objects, archive.InventoryEntry{Name: archive.KeyObject(s), Size: int64(len(kb)), BLAKE3: archive.ObjectDigest(kb)})
	}
	for _, s := range m.Segments {
		inv.Objects = append(inv.Objects, archive.InventoryEntry{Name: s.Name, Size: s.Size, BLAKE3: s.BLAKE3})
	}
	inv.Objects = append(inv.Objects, archive.InventoryEntry{Name: archive.ManifestObject, Size: int64(len(mb)), BLAKE3: archive.ObjectDigest(mb)})
	ib, err := inv.Marshal()
	if err != nil {
		return "", err
	}
	if err := putObject(id+"/"+archive.InventoryObject, ib); err != nil {
		return "", err
	}
	if err := putObject(id+"/"+archive.ManifestObject, mb); err != nil {
		return "", err
	}
	if state.dr != nil {
		t := state.newTable(id, opts, m, inv, ib, files, segIndex)
		if err := state.dr.save(t); err != nil {
			opts.Log("warning: %v (the next send with --base will be a full one)", err)
		}
	}
	// Segments left by attempts that died before recording them are not
	// part of the shipment: remove them (best effort).
	if state.resumed {
		listed := map[string]bool{}
		for _, o := range inv.Objects {
			listed[id+"/"+o.Name] = true
		}
		listed[id+"/"+archive.InventoryObject] = true
		var stray []string
		tr.List(ctx, id+"/", func(oi ObjectInfo) error {
			if !listed[oi.Name] {
				stray = append(stray, oi.Name)
			}
			return nil
		})
		for _, name := range stray {
			tr.Delete(ctx, name)
		}
		if tc, ok := tr.(TemporaryRemover); ok {
			tc.RemoveTemporaries(ctx, id)
		}
	}
	return id, nil
}

func (st *fileState) manifestFile(blockSize int64, segIndex map[int]int, refs *refPlan) archive.File {
	fi := st.src.Info
	f := archive.File{Path: st.src.Name, Mode: fi.Mode().Perm(), MTime: fi.ModTime().UTC()}
	if fi.IsDir() {
		f.Type = archive.TypeDir
		return f
	}
	f.Type = archive.TypeFile
	f.Size = st.size
	f.MTime = time.Unix(st.stamp.MTime.Unix()).UTC()
	f.BLAKE3 = archive.FileDigest(st.size, blockSize, st.digests)
	for i, k := range st.kinds {
		kind := [...]string{archive.KindHole, archive.KindZero, archive.KindData}[k]
		off := int64(i) * blockSize
		n := archive.BlockLen(st.size, blockSize, int64(i))
		if l := len(f.Extents); l > 0 && f.Extents[l-1].Kind == kind {
			f.Extents[l-1].Length += n
		} else {
			f.Extents = append(f.Extents, archive.Extent{Kind: kind, Offset: off, Length: n})
		}
		if kind == archive.KindData {
			var b archive.Block
			if st.ref[i] {
				b = refs.block(st.base, int64(i))
			} else {
				b = st.blocks[i]
				b.Segment = segIndex[b.Segment]
			}
			b.BLAKE3 = st.digests[i]
			f.Blocks = append(f.Blocks, b)
		}
	}
	return f
}

// Block kinds as kept in fileState.kinds.
const (
	kindHole byte = iota
	kindZero
	kindData
)

// runSendPipeline runs the feeder, the readers/sealers and the segment
// writers. Blocks already placed (a resumed send) are read for their digest
// only. New segments are numbered from nextSeg and sealed under key slot;
// onSegment records each one once it is complete at the destination.
// Memory is bounded by the buffer pools: jobs+1 plaintext blocks and
// 2*(jobs+streams) sealed records.
func runSendPipeline(ctx context.Context, tr Transport, id string, slot, nextSeg int, files []*fileState, codec *archive.Codec,
	dr *drStore, opts SendOptions, onSegment func(archive.Segment, []journalBlock)) error {
	cnt := opts.Counters
	bs := opts.BlockSize
	plainPool := bufpool.New(opts.Jobs+1, int(bs))
	sealedPool := bufpool.New(2*opts.Jobs+2*opts.Streams, int(cipher.SealedSize(bs)))
	zero := make([]byte, bs)

	g, gctx := errgroup.WithContext(ctx)
	done := gctx.Done()
	jobs := make(chan blockJob, opts.Jobs*2)
	sealed := make(chan sealedBlock, opts.Streams*2)

	g.Go(func() error {
		defer close(jobs)
		for fi, st := range files {
			if st.f == nil {
				continue
			}
			cursor := 0
			for i := range int64(len(st.kinds)) {
				off := i * bs
				n := archive.BlockLen(st.size, bs, i)
				if !archive.Overlaps(st.ranges, &cursor, off, n) && !st.placed[i] {
					st.kinds[i] = kindHole
					st.digests[i] = archive.ZeroDigest(n)
					cnt.Hole.Add(n)
					cnt.Done.Add(n)
					continue
				}
				select {
				case jobs <- blockJob{file: fi, index: i, off: off, n: n, placed: st.placed[i]}:
				case <-done:
					return gctx.Err()
				}
			}
		}
		return nil
	})

	var workers sync.WaitGroup
	for range opts.Jobs {
		workers.Add(1)
		g.Go(func() error {
			defer workers.Done()
			scratch := make([]byte, 0, bs)
			for j := range jobs {
				if err := sealOne(gctx, j, files[j.file], codec, dr, plainPool, sealedPool, zero, scratch, sealed, cnt); err != nil {
					return err
				}
			}
			return nil
		})
	}
	go func() {
		workers.Wait()
		close(sealed)
	}()

	var segCounter atomic.Int64
	segCounter.Store(int64(nextSeg - 1))
	for range opts.Streams {
		g.Go(func() error {
			var cur *segmentWriter
			var blocks []journalBlock
			// A segment whose bytes are all written finishes (the
			// transport syncs and renames it: round trips on a WAN) while
			// the next one is written; one at a time per stream, so that
			// a slow finish holds back the stream.
			finishing := make(chan struct{}, 1)
			finish := func() error {
				select {
				case finishing <- struct{}{}:
				case <-done:
					cur.abort()
					cur = nil
					return gctx.Err()
				}
				w, wblocks := cur, blocks
				cur, blocks = nil, nil
				w.pw.Close()
				g.Go(func() error {
					defer func() { <-finishing }()
					s, err := w.close()
					if err != nil {
						return err
					}
					s.Key = slot
					onSegment(s, wblocks)
					cnt.Segments.Add(1)
					return nil
				})
				return nil
			}
			defer func() {
				if cur != nil {
					cur.abort()
				}
			}()
			for sb := range sealed {
				if cur == nil {
					cur = openSegment(gctx, tr, id, int(segCounter.Add(1)))
				}
				off := cur.size
				if err := cur.write(sb.record); err != nil {
					sealedPool.Put(sb.buf)
					return err
				}
				st := files[sb.file]
				n := int64(len(sb.record))
				st.blocks[sb.index] = archive.Block{
					Index: sb.index, Segment: cur.n, Offset: off, Length: n, Compressed: sb.compressed,
				}
				blocks = append(blocks, journalBlock{File: sb.file, Index: sb.index, Offset: off, Length: n, Compressed: sb.compressed})
				cnt.Shipped.Add(n)
				sealedPool.Put(sb.buf)
				if cur.size >= opts.SegmentSize {
					if err := finish(); err != nil {
						return err
					}
				}
			}
			if cur != nil {
				return finish()
			}
			return nil
		})
	}
	return g.Wait()
}

func sealOne(ctx context.Context, j blockJob, st *fileState, codec *archive.Codec, dr *drStore, plainPool, sealedPool *bufpool.Pool,
	zero, scratch []byte, out chan<- sealedBlock, cnt *Counters) error {
	done := ctx.Done()
	buf, ok := plainPool.Get(done)
	if !ok {
		return ctx.Err()
	}
	defer plainPool.Put(buf)
	p := buf[:j.n]
	if _, err := st.f.ReadAt(p, j.off); err != nil {
		if err == io.EOF {
			return fmt.Errorf("read %s at %d: %w", st.src.Path, j.off, ErrSourceChanged)
		}
		return fmt.Errorf("read %s at %d: %w", st.src.Path, j.off, err)
	}
	cnt.Read.Add(j.n)
	isZero := bytes.Equal(p, zero[:j.n])
	if j.placed {
		// Shipped by an earlier attempt: only its digest is needed.
		if isZero {
			return fmt.Errorf("%s block %d: %w", st.src.Path, j.index, ErrSourceChanged)
		}
		st.kinds[j.index] = kindData
		st.digests[j.index] = archive.BlockDigest(p)
		if dr != nil {
			st.kd[j.index] = dr.keyed(j.index, st.digests[j.index])
		}
		cnt.Data.Add(j.n)
		cnt.Done.Add(j.n)
		return nil
	}
	if isZero {
		st.kinds[j.index] = kindZero
		st.digests[j.index] = archive.ZeroDigest(j.n)
		cnt.Zero.Add(j.n)
		cnt.Done.Add(j.n)
		return nil
	}
	d := archive.BlockDigest(p)
	if dr != nil {
		kd := dr.keyed(j.index, d)
		st.kd[j.index] = kd
		if e, ok := st.base.block(j.index); ok && e.kind == kindData && e.kd == kd {
			// Unchanged since the base: its record there serves.
			st.kinds[j.index] = kindData
			st.digests[j.index] = d
			st.ref[j.index] = true
			cnt.Unchanged.Add(j.n)
			cnt.Done.Add(j.n)
			return nil
		}
	}
	sbuf, ok := sealedPool.Get(done)
	if !ok {
		return ctx.Err()
	}
	rec, compressed, err := codec.Seal(sbuf[:0], scratch, p, uint32(j.file), uint64(j.index))
	if err != nil {
		sealedPool.Put(sbuf)
		return fmt.Errorf("seal %s block %d: %w", st.src.Path, j.index, err)
	}
	st.kinds[j.index] = kindData
	st.digests[j.index] = d
	cnt.Data.Add(j.n)
	cnt.Done.Add(j.n)
	select {
	case out <- sealedBlock{file: j.file, index: j.index, record: rec, buf: sbuf, compressed: compressed, digest: d}:
		return nil
	case <-done:
		sealedPool.Put(sbuf)
		return ctx.Err()
	}
}

// segmentWriter streams one segment object to the transport through a pipe.
type segmentWriter struct {
	n    int
	name string
	pw   *io.PipeWriter
	h    hash.Hash
	size int64
	res  chan error
}

func openSegment(ctx context.Context, tr Transport, id string, n int) *segmentWriter {
	pr, pw := io.Pipe()
	w := &segmentWriter{n: n, name: archive.SegmentObject(n), pw: pw, h: blake3.New(), res: make(chan error, 1)}
	go func() {
		err := tr.Put(ctx, id+"/"+w.name, pr, -1)
		if err != nil {
			err = fmt.Errorf("put %s/%s: %w", id, w.name, err)
			pr.CloseWithError(err)
		} else {
			pr.CloseWithError(fmt.Errorf("put %s/%s: transport returned before reading all data", id, w.name))
		}
		w.res <- err
	}()
	return w
}

func (w *segmentWriter) write(p []byte) error {
	w.h.Write(p)
	if _, err := w.pw.Write(p); err != nil {
		return err
	}
	w.size += int64(len(p))
	return nil
}

func (w *segmentWriter) close() (archive.Segment, error) {
	w.pw.Close()
	if err := <-w.res; err != nil {
		return archive.Segment{}, err
	}
	var d archive.Digest
	w.h.Sum(d[:0])
	return archive.Segment{Name: w.name, Size: w.size, BLAKE3: d, Key: 0}, nil
}

func (w *segmentWriter) abort() {
	w.pw.CloseWithError(errors.New("send aborted"))
	<-w.res
}
