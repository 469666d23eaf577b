package shipper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sort"
	"sync"

	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/shipper/internal/bufpool"
)

// placed is a data block, the file it belongs to, and the segment that
// holds its record (an index into Shipment.segmentSources).
type placed struct {
	file  int
	block *archive.Block
	src   int
}

type openedBlock struct {
	placed
	record []byte
	buf    []byte
}

// segmentSource is a segment that holds records of the shipment: one of
// its own, or one of a base shipment's, with the codec of the key and
// shipment id that sealed its records.
type segmentSource struct {
	obj   string // object name at the destination
	seg   archive.Segment
	codec *archive.Codec
}

// segmentSources lists the shipment's own segments, then those of each
// base in order, with a codec for each (shipment, key slot); first[k] is
// the index of base k's first segment. close releases the codecs.
func (sh *Shipment) segmentSources(jobs int) (srcs []segmentSource, first []int, close func(), err error) {
	m := sh.Manifest
	var codecs []*archive.Codec
	close = func() {
		for _, c := range codecs {
			c.Close()
		}
	}
	type codecKey struct {
		key *cipher.Key
		id  string
	}
	codecOf := map[codecKey]*archive.Codec{}
	codec := func(key *cipher.Key, id string) (*archive.Codec, error) {
		if c := codecOf[codecKey{key, id}]; c != nil {
			return c, nil
		}
		c, err := archive.NewCodec(key, id, sh.Header.Format, false, jobs)
		if err != nil {
			return nil, err
		}
		codecs = append(codecs, c)
		codecOf[codecKey{key, id}] = c
		return c, nil
	}
	for _, s := range m.Segments {
		c, err := codec(sh.keys[s.Key], sh.Header.ID)
		if err != nil {
			close()
			return nil, nil, nil, err
		}
		srcs = append(srcs, segmentSource{obj: sh.Header.ID + "/" + s.Name, seg: s, codec: c})
	}
	for bi, b := range m.Bases {
		first = append(first, len(srcs))
		for _, s := range b.Segments {
			c, err := codec(sh.baseKeys[bi][s.Key], b.ID)
			if err != nil {
				close()
				return nil, nil, nil, err
			}
			srcs = append(srcs, segmentSource{obj: b.ID + "/" + s.Name, seg: s, codec: c})
		}
	}
	return srcs, first, close, nil
}

// fetch says what fetchBlocks fetches and how.
type fetch struct {
	streams, jobs int
	// hashSegments checks the BLAKE3 digest of every segment, read whole
	// (verify); otherwise only its size is checked.
	hashSegments bool
	cnt          *Counters
	want         func(file int, b *archive.Block) bool // nil: every data block
}

// fetchBlocks fetches the records of the shipment's data blocks (those
// fe.want accepts) from its segments and its bases' (fe.streams at once),
// checks each segment's size (and, with fe.hashSegments, its BLAKE3
// digest) against the manifest when it reads it whole, opens every block
// in parallel (fe.jobs workers), checks its length and plaintext digest,
// and hands each plaintext to handle, from several goroutines at once.
func (sh *Shipment) fetchBlocks(ctx context.Context, fe fetch, handle func(p placed, plain []byte) error) error {
	m := sh.Manifest
	streams, jobs, hashSegments, cnt, want := fe.streams, fe.jobs, fe.hashSegments, fe.cnt, fe.want
	if jobs <= 0 {
		jobs = runtime.NumCPU()
	}
	if streams <= 0 {
		streams = DefaultStreams
	}
	srcs, first, closeCodecs, err := sh.segmentSources(jobs)
	if err != nil {
		return err
	}
	defer closeCodecs()
	bySeg := make([][]placed, len(srcs))
	for fi := range m.Files {
		f := &m.Files[fi]
		for bi := range f.Blocks {
			b := &f.Blocks[bi]
			src := b.Segment
			if b.Base > 0 {
				src += first[b.Base-1]
			}
			if want == nil || want(fi, b) {
				bySeg[src] = append(bySeg[src], placed{fi, b, src})
			}
		}
	}
	for _, ps := range bySeg {
		sort.Slice(ps, func(i, j int) bool { return ps[i].block.Offset < ps[j].block.Offset })
		for i := 1; i < len(ps); i++ {
			if ps[i].block.Offset < ps[i-1].block.Offset+ps[i-1].block.Length {
				return fmt.Errorf("manifest: blocks overlap in a segment: %w", archive.ErrIntegrity)
			}
		}
	}

	sealedSize := int(cipher.SealedSize(m.BlockSize))
	recPool := bufpool.New(2*jobs+2*streams, sealedSize)
	g, gctx := errgroup.WithContext(ctx)
	done := gctx.Done()
	segCh := make(chan int)
	recs := make(chan openedBlock, 2*jobs)

	g.Go(func() error {
		defer close(segCh)
		for i := range srcs {
			if len(bySeg[i]) == 0 && !hashSegments {
				continue
			}
			select {
			case segCh <- i:
			case <-done:
				return gctx.Err()
			}
		}
		return nil
	})
	var fetchers sync.WaitGroup
	for range streams {
		fetchers.Add(1)
		g.Go(func() error {
			defer fetchers.Done()
			for si := range segCh {
				if err := sh.fetchSegment(gctx, srcs[si], bySeg[si], hashSegments, recPool, recs, cnt); err != nil {
					return err
				}
			}
			return nil
		})
	}
	go func() {
		fetchers.Wait()
		close(recs)
	}()
	for range jobs {
		g.Go(func() error {
			out := make([]byte, m.BlockSize)
			scratch := make([]byte, 0, m.BlockSize)
			for r := range recs {
				f := &m.Files[r.file]
				n := archive.BlockLen(f.Size, m.BlockSize, r.block.Index)
				src := srcs[r.src]
				// A base's record is bound to its place in the base.
				ctxFile := r.file
				if r.block.Base > 0 {
					ctxFile = r.block.File
				}
				plain, err := src.codec.Open(out, scratch, r.record, uint32(ctxFile), uint64(r.block.Index), r.block.Compressed, n, r.block.BLAKE3)
				recPool.Put(r.buf)
				if err != nil {
					return fmt.Errorf("%s at offset %d (%s block %d): %w", src.obj, r.block.Offset, f.Path, r.block.Index, asIntegrity(err))
				}
				if err := handle(r.placed, plain); err != nil {
					return err
				}
				cnt.Data.Add(n)
				cnt.Done.Add(n)
			}
			return nil
		})
	}
	return g.Wait()
}

// asIntegrity makes sure a failure to open a block reads as an integrity
// error whatever layer reported it.
func asIntegrity(err error) error {
	if errors.Is(err, cipher.ErrIntegrity) || errors.Is(err, archive.ErrIntegrity) {
		return err
	}
	return fmt.Errorf("%w (%w)", err, archive.ErrIntegrity)
}

// fetchSegment reads the records of blocks (sorted by offset) from one
// segment. A segment read whole (to hash it, or because most of it is
// needed) has its size checked; otherwise only the runs of records needed
// are read with ranged reads, as when an update fetches a few blocks from
// a large base segment.
func (sh *Shipment) fetchSegment(ctx context.Context, src segmentSource, blocks []placed, hashSegments bool, pool *bufpool.Pool, out chan<- openedBlock, cnt *Counters) error {
	var need int64
	for _, p := range blocks {
		need += p.block.Length
	}
	if hashSegments || 2*need >= src.seg.Size {
		return sh.readRecords(ctx, src, 0, -1, blocks, hashSegments, pool, out, cnt)
	}
	const maxGap = 1 << 20 // read through gaps smaller than this rather than ask again
	for len(blocks) > 0 {
		n := 1
		end := blocks[0].block.Offset + blocks[0].block.Length
		for n < len(blocks) && blocks[n].block.Offset-end <= maxGap {
			end = blocks[n].block.Offset + blocks[n].block.Length
			n++
		}
		start := blocks[0].block.Offset
		if err := sh.readRecords(ctx, src, start, end-start, blocks[:n], false, pool, out, cnt); err != nil {
			return err
		}
		blocks = blocks[n:]
	}
	return nil
}

// readRecords reads length bytes of a segment from offset start (-1: to
// its end, then checking its size and, with hash, its digest) and hands
// on the records of blocks.
func (sh *Shipment) readRecords(ctx context.Context, src segmentSource, start, length int64, blocks []placed, hash bool,
	pool *bufpool.Pool, out chan<- openedBlock, cnt *Counters) error {
	name := src.obj
	rc, err := sh.tr.Open(ctx, name, start, length)
	if err != nil {
		return missingIsIntegrity(err)
	}
	defer rc.Close()
	// Every byte of a segment belongs to a record that AES-GCM
	// authenticates, and the size is checked below, so receive skips the
	// (redundant, and costly) digest; verify keeps it.
	var r io.Reader = rc
	h := blake3.New()
	if hash {
		r = io.TeeReader(rc, h)
	}
	pos := start
	done := ctx.Done()
	for _, p := range blocks {
		if gap := p.block.Offset - pos; gap > 0 {
			if _, err := io.CopyN(io.Discard, r, gap); err != nil {
				return segmentReadError(name, err)
			}
			pos += gap
		}
		buf, ok := pool.Get(done)
		if !ok {
			return ctx.Err()
		}
		rec := buf[:p.block.Length]
		if _, err := io.ReadFull(r, rec); err != nil {
			pool.Put(buf)
			return segmentReadError(name, err)
		}
		pos += p.block.Length
		cnt.Shipped.Add(p.block.Length)
		select {
		case out <- openedBlock{placed: p, record: rec, buf: buf}:
		case <-done:
			pool.Put(buf)
			return ctx.Err()
		}
	}
	if length >= 0 {
		return nil
	}
	rest, err := io.Copy(io.Discard, r)
	if err != nil {
		return segmentReadError(name, err)
	}
	if pos+rest != src.seg.Size {
		return fmt.Errorf("%s: %d bytes, the manifest says %d: %w", name, pos+rest, src.seg.Size, archive.ErrIntegrity)
	}
	var d archive.Digest
	h.Sum(d[:0])
	if hash && d != src.seg.BLAKE3 {
		return fmt.Errorf("%s: digest does not match the manifest: %w", name, archive.ErrIntegrity)
	}
	return nil
}

func segmentReadError(name string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%s: truncated: %w", name, archive.ErrIntegrity)
	}
	return fmt.Errorf("read %s: %w", name, err)
}
