package shipper

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"filippo.io/age"
	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
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
}

// SendResult describes a finished shipment.
type SendResult struct {
	ID       string
	Files    int
	Duration time.Duration
}

// fileState is what the pipeline learns about one source file.
type fileState struct {
	src     archive.Source
	f       *os.File
	size    int64
	stamp   stamp
	ranges  []archive.Range
	digests []archive.Digest
	kinds   []byte          // per block: archive.KindData/Hole/Zero initial
	blocks  []archive.Block // per block; Length 0 unless data
}

// stamp is what must not change while a file ships.
type stamp struct {
	size         int64
	mtime, ctime syscall.Timespec
	ino          uint64
}

func statStamp(f *os.File) (stamp, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return stamp{}, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return stamp{size: st.Size, mtime: st.Mtim, ctime: st.Ctim, ino: st.Ino}, nil
}

type blockJob struct {
	file  int
	index int64
	off   int64
	n     int64
}

type sealedBlock struct {
	file       int
	index      int64
	record     []byte
	buf        []byte // to return to the pool
	compressed bool
	digest     archive.Digest
}

// Send reads the sources, seals their blocks under a fresh shipment key
// wrapped for opts.Recipients, and puts the shipment to tr. Holes are never
// read; all-zero blocks are not shipped. The manifest is put last, so a
// failed or interrupted Send leaves an incomplete shipment that receive
// refuses and list marks incomplete.
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
	if len(opts.Recipients) == 0 {
		return nil, errors.New("no recipients")
	}
	cnt := opts.Counters

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
		st.size = st.stamp.size
		if st.ranges, err = archive.DataRanges(f, st.size); err != nil {
			return nil, err
		}
		nb := (st.size + opts.BlockSize - 1) / opts.BlockSize
		st.digests = make([]archive.Digest, nb)
		st.blocks = make([]archive.Block, nb)
		st.kinds = make([]byte, nb)
		cnt.Total.Add(st.size)
	}

	id, err := archive.NewID(opts.Now())
	if err != nil {
		return nil, err
	}
	key, err := cipher.NewKey()
	if err != nil {
		return nil, err
	}
	wrapped, err := key.Wrap(opts.Recipients...)
	if err != nil {
		return nil, fmt.Errorf("wrap shipment key: %w", err)
	}
	compression := "none"
	if opts.Compress {
		compression = "zstd"
	}
	hdr := archive.Header{
		Format: archive.FormatVersion, ID: id, Created: opts.Now().UTC().Truncate(time.Second),
		Label: opts.Label, BlockSize: opts.BlockSize, Cipher: archive.CipherName, Compression: compression,
	}
	hb, err := hdr.Marshal()
	if err != nil {
		return nil, err
	}
	inv := &archive.Inventory{Format: archive.FormatVersion, ID: id}
	putSmall := func(name string, b []byte) error {
		if err := tr.Put(ctx, id+"/"+name, bytes.NewReader(b), int64(len(b))); err != nil {
			return fmt.Errorf("put %s/%s: %w", id, name, err)
		}
		inv.Objects = append(inv.Objects, archive.InventoryEntry{Name: name, Size: int64(len(b)), SHA256: archive.SHA256(b)})
		cnt.Shipped.Add(int64(len(b)))
		return nil
	}
	if err := putSmall(archive.HeaderObject, hb); err != nil {
		return nil, err
	}
	if err := putSmall(archive.KeyObject(0), wrapped); err != nil {
		return nil, err
	}

	codec, err := archive.NewCodec(key, id, opts.Compress, opts.Jobs)
	if err != nil {
		return nil, err
	}
	defer codec.Close()

	segs, err := runSendPipeline(ctx, tr, id, files, codec, opts)
	if err != nil {
		return nil, err
	}

	// A source that changed while it was read would restore as a mix of old
	// and new blocks: refuse to complete such a shipment.
	for _, st := range files {
		if st.f == nil {
			continue
		}
		now, err := statStamp(st.f)
		if err != nil {
			return nil, err
		}
		if now != st.stamp {
			return nil, fmt.Errorf("%s: %w", st.src.Path, ErrSourceChanged)
		}
	}

	m := &archive.Manifest{
		Format: archive.FormatVersion, ID: id, Created: hdr.Created, Label: hdr.Label,
		HeaderSHA256: archive.SHA256(hb), BlockSize: opts.BlockSize, Compression: compression,
		Segments: segs,
	}
	for _, st := range files {
		m.Files = append(m.Files, st.manifestFile(opts.BlockSize))
	}
	for _, s := range segs {
		inv.Objects = append(inv.Objects, archive.InventoryEntry{Name: s.Name, Size: s.Size, SHA256: s.SHA256})
	}
	mb, err := m.Seal(key, 0)
	if err != nil {
		return nil, err
	}
	inv.Objects = append(inv.Objects, archive.InventoryEntry{Name: archive.ManifestObject, Size: int64(len(mb)), SHA256: archive.SHA256(mb)})
	ib, err := inv.Marshal()
	if err != nil {
		return nil, err
	}
	if err := tr.Put(ctx, id+"/"+archive.InventoryObject, bytes.NewReader(ib), int64(len(ib))); err != nil {
		return nil, fmt.Errorf("put %s/%s: %w", id, archive.InventoryObject, err)
	}
	cnt.Shipped.Add(int64(len(ib)))
	if err := tr.Put(ctx, id+"/"+archive.ManifestObject, bytes.NewReader(mb), int64(len(mb))); err != nil {
		return nil, fmt.Errorf("put %s/%s: %w", id, archive.ManifestObject, err)
	}
	cnt.Shipped.Add(int64(len(mb)))
	return &SendResult{ID: id, Files: len(files), Duration: time.Since(start)}, nil
}

func (st *fileState) manifestFile(blockSize int64) archive.File {
	fi := st.src.Info
	f := archive.File{Path: st.src.Name, Mode: fi.Mode().Perm(), MTime: fi.ModTime().UTC()}
	if fi.IsDir() {
		f.Type = archive.TypeDir
		return f
	}
	f.Type = archive.TypeFile
	f.Size = st.size
	f.MTime = time.Unix(st.stamp.mtime.Unix()).UTC()
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
			f.Blocks = append(f.Blocks, st.blocks[i])
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
// writers, and returns the segments written. Memory is bounded by the two
// buffer pools: (2*jobs + 2*streams) blocks of plaintext and as many sealed.
func runSendPipeline(ctx context.Context, tr Transport, id string, files []*fileState, codec *archive.Codec, opts SendOptions) ([]archive.Segment, error) {
	cnt := opts.Counters
	bs := opts.BlockSize
	nbuf := 2*opts.Jobs + 2*opts.Streams
	plainPool := newBufferPool(opts.Jobs+1, int(bs))
	sealedPool := newBufferPool(nbuf, int(cipher.SealedSize(bs)))
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
				if !archive.Overlaps(st.ranges, &cursor, off, n) {
					st.kinds[i] = kindHole
					st.digests[i] = archive.ZeroDigest(n)
					cnt.Hole.Add(n)
					cnt.Done.Add(n)
					continue
				}
				select {
				case jobs <- blockJob{file: fi, index: i, off: off, n: n}:
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
				if err := sealOne(gctx, j, files[j.file], codec, plainPool, sealedPool, zero, scratch, sealed, cnt); err != nil {
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

	var mu sync.Mutex
	var segs []archive.Segment
	var segCounter atomic.Int64
	for range opts.Streams {
		g.Go(func() error {
			var cur *segmentWriter
			finish := func() error {
				s, err := cur.close()
				cur = nil
				if err != nil {
					return err
				}
				mu.Lock()
				segs = append(segs, s)
				mu.Unlock()
				cnt.Segments.Add(1)
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
					sealedPool.put(sb.buf)
					return err
				}
				st := files[sb.file]
				st.blocks[sb.index] = archive.Block{
					Index: sb.index, Segment: cur.n - 1, Offset: off, Length: int64(len(sb.record)),
					Compressed: sb.compressed, BLAKE3: sb.digest,
				}
				cnt.Shipped.Add(int64(len(sb.record)))
				sealedPool.put(sb.buf)
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
	if err := g.Wait(); err != nil {
		return nil, err
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].Name < segs[j].Name })
	// Segment numbers are handed out in order and every opened segment gets
	// at least one block, so they are dense from 1.
	for i, s := range segs {
		if s.Name != archive.SegmentObject(i+1) {
			panic("shipper: internal error: segment numbers are not dense")
		}
	}
	return segs, nil
}

func sealOne(ctx context.Context, j blockJob, st *fileState, codec *archive.Codec, plainPool, sealedPool *bufferPool,
	zero, scratch []byte, out chan<- sealedBlock, cnt *Counters) error {
	done := ctx.Done()
	buf, ok := plainPool.get(done)
	if !ok {
		return ctx.Err()
	}
	defer plainPool.put(buf)
	p := buf[:j.n]
	if _, err := st.f.ReadAt(p, j.off); err != nil {
		if err == io.EOF {
			return fmt.Errorf("read %s at %d: %w", st.src.Path, j.off, ErrSourceChanged)
		}
		return fmt.Errorf("read %s at %d: %w", st.src.Path, j.off, err)
	}
	cnt.Read.Add(j.n)
	if bytes.Equal(p, zero[:j.n]) {
		st.kinds[j.index] = kindZero
		st.digests[j.index] = archive.ZeroDigest(j.n)
		cnt.Zero.Add(j.n)
		cnt.Done.Add(j.n)
		return nil
	}
	d := archive.BlockDigest(p)
	sbuf, ok := sealedPool.get(done)
	if !ok {
		return ctx.Err()
	}
	rec, compressed, err := codec.Seal(sbuf[:0], scratch, p, uint32(j.file), uint64(j.index))
	if err != nil {
		sealedPool.put(sbuf)
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
		sealedPool.put(sbuf)
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
	w := &segmentWriter{n: n, name: archive.SegmentObject(n), pw: pw, h: sha256.New(), res: make(chan error, 1)}
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
	return archive.Segment{Name: w.name, Size: w.size, SHA256: d, Key: 0}, nil
}

func (w *segmentWriter) abort() {
	w.pw.CloseWithError(errors.New("send aborted"))
	<-w.res
}
