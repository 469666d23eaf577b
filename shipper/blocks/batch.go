package blocks

import (
	"errors"
	"fmt"
	"io"

	"github.com/coldship/coldship/archive"
)

// Block is one item of a batch: a run of hole blocks, or one block that
// was read.
type Block[P any] struct {
	File  int   // index into the files given to Read
	Index int64 // the block's index in the file (the first of a run)
	Count int64 // blocks of a Hole run; 1 otherwise
	Kind  Kind
	Len   int64 // bytes covered: the block's length, or the run's

	// Zero and Data blocks.
	Prior P     // what Options.Prior returned for the block
	Read  int64 // bytes read from the source (the rest of Len is hole)

	// Data blocks.
	Data       int64          // bytes in the non-zero pages
	Digest     archive.Digest // archive.FormDigest of the form
	Form       []byte         // valid until the batch is released
	Record     []byte         // set when sealed; valid until the batch is released
	Compressed bool

	r0, r1     int32 // page runs: Batch.runs[r0:r1]
	off, cap   int   // form buffer reserved in Batch.data
	soff, scap int   // record buffer reserved in Batch.sealed
}

// run is a run of pages of a block that data extents touch.
type run struct{ first, count int64 }

// Batch is a group of consecutive items, delivered together.
type Batch[P any] struct {
	Blocks []Block[P]
	// Ends lists the files whose last block is in this batch (or that
	// have no block at all), in order: their stamps were checked.
	Ends []int

	r            *reader[P]
	runs         []run
	data, sealed []byte
	used, sused  int
	ready        chan error
}

func (b *Batch[P]) reset() {
	clear(b.Blocks) // drop references held by Prior values
	b.Blocks, b.Ends, b.runs = b.Blocks[:0], b.Ends[:0], b.runs[:0]
	b.used, b.sused = 0, 0
}

// Release gives the batch's buffers back to the reader; no Form or
// Record of it may be used afterwards. It must be called once per batch.
func (b *Batch[P]) Release() {
	select {
	case b.r.free <- b:
	default:
		panic("blocks: internal error: batch released twice")
	}
}

// worker reads, hashes and seals batches with its own scratch buffer.
type worker[P any] struct {
	r       *reader[P]
	fb      archive.FormBuilder
	scratch []byte
}

// batch processes every item of b and counts what it read.
func (w *worker[P]) batch(b *Batch[P]) error {
	var read, hole, zero, done int64
	for k := range b.Blocks {
		blk := &b.Blocks[k]
		done += blk.Len
		if blk.Kind == Hole {
			hole += blk.Len
			continue
		}
		if err := w.block(b, blk); err != nil {
			return err
		}
		read += blk.Read
		hole += blk.Len - blk.Read
		zero += blk.Read - blk.Data
	}
	c := w.r.opts.Counters
	c.Read.Add(read)
	c.Hole.Add(hole)
	c.Zero.Add(zero)
	c.Done.Add(done)
	return nil
}

// block reads the page runs of one block into its form, hashes it, and
// seals it if asked.
func (w *worker[P]) block(b *Batch[P], blk *Block[P]) error {
	r := w.r
	f := &r.files[blk.File]
	off := blk.Index * r.opts.BlockSize
	w.fb.ResetFor(b.data[blk.off:blk.off+blk.cap], blk.Len, blk.cap-archive.MapLen(blk.Len))
	for _, rn := range b.runs[blk.r0:blk.r1] {
		p := w.fb.Next(rn.first, rn.count)
		if _, err := f.F.ReadAt(p, off+rn.first*archive.PageSize); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("read %s at %d: ended early: %w", f.Path, off+rn.first*archive.PageSize, ErrSourceChanged)
			}
			return fmt.Errorf("read %s at %d: %w", f.Path, off+rn.first*archive.PageSize, err)
		}
		blk.Read += int64(len(p))
		blk.Data += w.fb.Commit(rn.first, rn.count)
	}
	blk.Form = w.fb.Form()
	if blk.Form == nil {
		blk.Kind = Zero
		return nil
	}
	blk.Digest = archive.FormDigest(blk.Form, blk.Len)
	if r.opts.Seal != nil && !r.opts.Seal(blk) || r.opts.Sealer == nil {
		return nil
	}
	rec, z, err := r.opts.Sealer(blk, b.sealed[blk.soff:blk.soff:blk.soff+blk.scap], w.scratch)
	if err != nil {
		return fmt.Errorf("seal %s block %d: %w", f.Path, blk.Index, err)
	}
	blk.Record, blk.Compressed = rec, z
	return nil
}
