package shipper

import (
	"context"
	"errors"
	"fmt"
	"github.com/zeebo/blake3"
	"io"
	"runtime"
	"sort"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
)

// placed is a data block and the file it belongs to.
type placed struct {
	file  int
	block *archive.Block
}

type openedBlock struct {
	placed
	record []byte
	buf    []byte
}

// fetchBlocks streams every segment of the shipment (streams at once),
// checks each segment's size (and, with hashSegments, its BLAKE3 digest) against
// the manifest, opens every
// block in parallel (jobs workers) and hands each authenticated plaintext
// to handle, from several goroutines at once.
func (sh *Shipment) fetchBlocks(ctx context.Context, streams, jobs int, hashSegments bool, cnt *Counters, handle func(p placed, plain []byte) error) error {
	m := sh.Manifest
	if jobs <= 0 {
		jobs = runtime.NumCPU()
	}
	if streams <= 0 {
		streams = DefaultStreams
	}
	bySeg := make([][]placed, len(m.Segments))
	for fi := range m.Files {
		f := &m.Files[fi]
		for bi := range f.Blocks {
			b := &f.Blocks[bi]
			bySeg[b.Segment] = append(bySeg[b.Segment], placed{fi, b})
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
	codecs := map[int]*archive.Codec{}
	for slot, key := range sh.keys {
		codec, err := archive.NewCodec(key, sh.Header.ID, m.Compression == "zstd", jobs)
		if err != nil {
			return err
		}
		defer codec.Close()
		codecs[slot] = codec
	}

	sealedSize := int(cipher.SealedSize(m.BlockSize))
	recPool := newBufferPool(2*jobs+2*streams, sealedSize)
	g, gctx := errgroup.WithContext(ctx)
	done := gctx.Done()
	segCh := make(chan int)
	recs := make(chan openedBlock, 2*jobs)

	g.Go(func() error {
		defer close(segCh)
		for i := range m.Segments {
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
				if err := sh.fetchSegment(gctx, si, bySeg[si], hashSegments, recPool, recs, cnt); err != nil {
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
				codec := codecs[m.Segments[r.block.Segment].Key]
				plain, err := codec.Open(out, scratch, r.record, uint32(r.file), uint64(r.block.Index), r.block.Compressed, n, r.block.BLAKE3)
				recPool.put(r.buf)
				if err != nil {
					return fmt.Errorf("%s/%s at offset %d (%s block %d): %w", sh.Header.ID, m.Segments[r.block.Segment].Name,
						r.block.Offset, f.Path, r.block.Index, asIntegrity(err))
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

func (sh *Shipment) fetchSegment(ctx context.Context, si int, blocks []placed, hashSegments bool, pool *bufferPool, out chan<- openedBlock, cnt *Counters) error {
	seg := sh.Manifest.Segments[si]
	name := sh.Header.ID + "/" + seg.Name
	rc, err := sh.tr.Open(ctx, name, 0, -1)
	if err != nil {
		return missingIsIntegrity(err)
	}
	defer rc.Close()
	// Every byte of a segment belongs to a record that AES-GCM
	// authenticates, and the size is checked below, so receive skips the
	// (redundant, and costly) digest; verify keeps it.
	var r io.Reader = rc
	h := blake3.New()
	if hashSegments {
		r = io.TeeReader(rc, h)
	}
	var pos int64
	done := ctx.Done()
	for _, p := range blocks {
		if gap := p.block.Offset - pos; gap > 0 {
			if _, err := io.CopyN(io.Discard, r, gap); err != nil {
				return segmentReadError(name, err)
			}
			pos += gap
		}
		buf, ok := pool.get(done)
		if !ok {
			return ctx.Err()
		}
		rec := buf[:p.block.Length]
		if _, err := io.ReadFull(r, rec); err != nil {
			pool.put(buf)
			return segmentReadError(name, err)
		}
		pos += p.block.Length
		cnt.Shipped.Add(p.block.Length)
		select {
		case out <- openedBlock{placed: p, record: rec, buf: buf}:
		case <-done:
			pool.put(buf)
			return ctx.Err()
		}
	}
	rest, err := io.Copy(io.Discard, r)
	if err != nil {
		return segmentReadError(name, err)
	}
	if pos+rest != seg.Size {
		return fmt.Errorf("%s: %d bytes, the manifest says %d: %w", name, pos+rest, seg.Size, archive.ErrIntegrity)
	}
	var d archive.Digest
	h.Sum(d[:0])
	if hashSegments && d != seg.BLAKE3 {
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
