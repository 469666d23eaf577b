package blocks

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper/internal/progress"
)

// ErrSourceChanged means a source file changed while it was read: its
// stamp differs from the one it was opened with, or it ended early.
var ErrSourceChanged = errors.New("source changed while shipping: is the VM still running?")

// Kind says what a Block item is.
type Kind uint8

// Kinds of items.
const (
	Hole Kind = iota // a run of blocks wholly inside holes: never read
	Zero             // a block that was read and holds only zero pages
	Data             // a block with at least one page that is not zero
)

// File is one source to read. A File without F (a directory) is skipped,
// so that a caller may pass its whole list and keep its indexes.
type File struct {
	F     *os.File
	Path  string        // for messages
	Stamp archive.Stamp // as the caller found the file; Stamp.Size is the size read
}

// Options configure Read. P is what the caller attaches to every block
// that is read (not to hole runs): see Prior.
type Options[P any] struct {
	BlockSize int64
	Jobs      int   // workers reading, hashing and sealing; at least 1
	Memory    int64 // budget for buffers; 0: DefaultMemory
	// Holders is how many batches the receivers of emit may hold at once
	// (a send's segment writers, one each while its write waits on the
	// link): the window of batches grows by that many, within Memory, so
	// that writers waiting on a long link do not starve the others.
	Holders  int
	Counters *progress.Counters

	// Prior, if set, is called in (file, block) order, from one goroutine,
	// for every block that will be read, before it is read: what it
	// returns travels with the block (Block.Prior). Callers look up what
	// they know of the block there (a base's entry, a journal's record),
	// reading their own state sequentially.
	Prior func(file int, block int64) (P, error)
	// Seal, if set, is called on a worker for every Data block once its
	// form and digest are known (it may set b.Prior): true to seal it.
	// Nil seals every Data block.
	Seal func(b *Block[P]) bool
	// Sealer seals b.Form (of block b.Index of file b.File), appending the
	// record, and any header it reserved Headroom bytes for, to dst, which
	// has room for them; scratch is the worker's. It runs on the workers,
	// in parallel, for the blocks Seal chose; nil: none is sealed.
	Sealer func(b *Block[P], dst, scratch []byte) (record []byte, compressed bool, err error)
	// Headroom is reserved before every record for the Sealer's header.
	Headroom int
	// Changing says the sources may change while they are read (the
	// pre-copy rounds of a live send): their stamps are not checked. A
	// source that ends early still fails the read.
	Changing bool
}

// Read reads files in blocks of opts.BlockSize and calls emit with every
// batch of items, in order of (file, block), from one goroutine. emit
// must call Release on each batch once it is done with the batch's
// buffers (at once or later, from any goroutine): the batches in flight
// are what bound Read's memory. The first error (of a worker, of Prior,
// of emit, a changed source, or ctx's) ends Read.
func Read[P any](ctx context.Context, files []File, opts Options[P], emit func(*Batch[P]) error) error {
	if opts.BlockSize < archive.MinBlockSize || opts.BlockSize%archive.PageSize != 0 {
		return fmt.Errorf("block size %d is not a multiple of 4 KiB of at least 64 KiB", opts.BlockSize)
	}
	if opts.Counters == nil {
		opts.Counters = new(progress.Counters)
	}
	l := plan(opts.BlockSize, max(1, opts.Jobs), opts.Holders, opts.Memory, opts.Sealer != nil, opts.Headroom)
	r := &reader[P]{opts: opts, files: files, l: l, free: make(chan *Batch[P], l.window)}
	for range l.window {
		r.free <- &Batch[P]{r: r, ready: make(chan error, 1)}
	}
	g, gctx := errgroup.WithContext(ctx)
	jobs := make(chan *Batch[P], l.window)
	order := make(chan *Batch[P], l.window)
	g.Go(func() error {
		defer close(jobs)
		defer close(order)
		return r.feed(gctx, jobs, order)
	})
	for range l.jobs {
		g.Go(func() error { return r.work(gctx, jobs) })
	}
	g.Go(func() error { return r.deliver(gctx, order, emit) })
	return g.Wait()
}

type reader[P any] struct {
	opts  Options[P]
	files []File
	l     layout
	free  chan *Batch[P]
}

// deliver hands the batches to emit in the order the feeder made them,
// each once its worker is done, after checking the stamp of every file
// that ends in it.
func (r *reader[P]) deliver(ctx context.Context, order <-chan *Batch[P], emit func(*Batch[P]) error) error {
	for b := range order {
		select {
		case err := <-b.ready:
			if err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
		for _, fi := range b.Ends {
			if r.opts.Changing {
				break
			}
			if err := r.checkStamp(fi); err != nil {
				return err
			}
		}
		if err := emit(b); err != nil {
			return err
		}
	}
	return nil
}

// checkStamp fails with ErrSourceChanged if file fi changed since the
// caller stamped it: every block of it has been read by now.
func (r *reader[P]) checkStamp(fi int) error {
	f := &r.files[fi]
	now, err := archive.StampOf(f.F)
	if err != nil {
		return err
	}
	if now != f.Stamp {
		return fmt.Errorf("%s: %w", f.Path, ErrSourceChanged)
	}
	return nil
}

// work reads, hashes and seals the batches it is given.
func (r *reader[P]) work(ctx context.Context, jobs <-chan *Batch[P]) error {
	w := worker[P]{r: r}
	if r.l.scratch > 0 {
		w.scratch = make([]byte, r.l.scratch)
	}
	for b := range jobs {
		err := w.batch(b)
		b.ready <- err
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}
