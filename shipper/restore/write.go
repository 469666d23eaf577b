package restore

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/archive"
)

// DefaultOpeners is how many goroutines should open records and write
// them through a Writer when the user did not say: one more than the
// CPUs, so that a CPU has work while an opener waits in a write. A sparse
// image's receive, 262,144 blocks of one page each on tmpfs, took a median
// 2.98 s with 3 openers on 2 CPUs against 3.23 s with 2 (6 pairs, 5
// faster), and a 1 GiB random image the same time with either; with the
// openers writing a file at once (below), 2.03–2.47 s against 2.23–2.60 s
// (4 pairs, 2026-12-01).
func DefaultOpeners() int { return runtime.NumCPU() + 1 }

// writebackEvery is how many bytes of a file are written before the
// kernel is asked to start writing them out, so that the sync before the
// rename finds little left to do.
const writebackEvery = 32 << 20

// WriteForm writes block of file i from its format 3 form, which the
// caller has checked (archive.Codec.OpenForm: canonical, digest d, data
// data bytes): only the runs of pages that hold data are written; where
// the file may already hold data, the zero runs are punched. It records d
// as the block's digest. Safe for concurrent use on different blocks.
func (w *Writer) WriteForm(i int, block int64, form []byte, d archive.Digest, data int64) error {
	f, err := w.target(i, block)
	if err != nil {
		return err
	}
	n := w.blockLen(f, block)
	if err := archive.WalkForm(form, n, w.writeRun(f, block), w.zeroRun(f, block, f.mayHold)); err != nil {
		return err
	}
	return w.wrote(f, block, Slot{Digest: d, Data: uint32(data), Mark: w.run}, n)
}

// WriteDense writes block of file i from its plaintext (formats 1 and 2),
// which the caller has checked against d; its zero pages are skipped (or
// punched where the file may hold data).
func (w *Writer) WriteDense(i int, block int64, plain []byte, d archive.Digest) error {
	f, err := w.target(i, block)
	if err != nil {
		return err
	}
	n := w.blockLen(f, block)
	if int64(len(plain)) != n {
		panic("restore: internal error: block of the wrong length")
	}
	if err := archive.WalkDense(plain, w.writeRun(f, block), w.zeroRun(f, block, f.mayHold)); err != nil {
		return err
	}
	return w.wrote(f, block, Slot{Digest: d, Data: uint32(n), Mark: w.run}, n)
}

func (w *Writer) target(i int, block int64) (*file, error) {
	if !w.Restored(i) {
		return nil, fmt.Errorf("restore: file %d is not restored", i)
	}
	f := w.files[i]
	if f.fh == nil || block < 0 || block >= w.nblocks(f) {
		return nil, fmt.Errorf("restore: block %d of %s is not open for writing", block, f.meta.Path)
	}
	return f, nil
}

func (w *Writer) writeRun(f *file, block int64) func(off int64, b []byte) error {
	base := block * w.sh.BlockSize
	return func(off int64, b []byte) error {
		// Openers write a file at once: the kernel serializes the
		// writes on the file's lock. A lock here too (one writer per
		// file) parked an opener and woke it for every block: the
		// sparse image above took 3.35–3.64 s with it on a quiet
		// machine, 2.15–2.71 s without, and the same with or without
		// on two busy CPUs or on ext4 (2026-12-01, pairs).
		_, err := f.fh.WriteAt(b, base+off)
		if err != nil {
			// WriteAt's error names the file being written (a temporary):
			// say which file of the shipment it will be.
			return fmt.Errorf("restore %s: %w", f.final, err)
		}
		w.wroteData(f, int64(len(b)))
		return nil
	}
}

// wroteData counts n bytes written into f and, every writebackEvery
// bytes, starts its writeback. It counts what was written, not the
// length of the blocks: a sparse image's block writes a page or two, and
// a writeback started every 32 MiB of blocks (every 512 blocks of 64 KiB)
// cost more than the writes.
func (w *Writer) wroteData(f *file, n int64) {
	if p := f.pending.Add(n); p >= writebackEvery && f.pending.CompareAndSwap(p, 0) {
		syncRange(f)
	}
}

// zeroRun returns what makes a zero run of a block zero on disk: nothing
// where the file cannot hold data there (a new file: holes already).
func (w *Writer) zeroRun(f *file, block int64, mayHold bool) func(off, n int64) error {
	if !mayHold {
		return nil
	}
	base := block * w.sh.BlockSize
	return func(off, n int64) error { return zeroRange(f.fh, base+off, n, f.device) }
}

// wrote records a block written: its slot, then what account counts.
func (w *Writer) wrote(f *file, block int64, sl Slot, n int64) error {
	if err := f.slots.putLater(block, sl); err != nil {
		return err
	}
	w.account(f, n)
	return nil
}

// account counts a block of n bytes written.
func (w *Writer) account(f *file, n int64) {
	w.written.Add(n)
	w.cnt.Data.Add(n)
	w.cnt.Done.Add(n)
}

// syncRange starts the writeback of what f holds (best effort: not every
// file system has it).
func syncRange(f *file) {
	unix.SyncFileRange(int(f.fh.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
}

// walkState is where the caller's walk through the block table is.
type walkState struct {
	file  int   // the file of the last Need; -1 before the first
	next  int64 // its first block not yet visited
	ended bool
}

// Need reports whether block of file i, which the shipment says has digest
// d, must be fetched and written: not when the file already holds it
// (resuming, the block an interrupted receive wrote, checked on disk;
// updating, an unchanged block). The caller calls it for every data block
// of every restored file, in ascending (file, block) order, as it streams
// the block table, and EndWalk at the end: the blocks it skips are zero,
// and an update punches them where the file held data.
func (w *Writer) Need(i int, block int64, d archive.Digest) (bool, error) {
	if !w.Restored(i) || w.walk.ended || block < 0 {
		return false, fmt.Errorf("restore: block %d of file %d out of order", block, i)
	}
	f := w.files[i]
	if err := w.walkTo(i, block); err != nil {
		return false, err
	}
	if block >= w.nblocks(f) {
		return false, fmt.Errorf("restore: block %d past the end of %s", block, f.meta.Path)
	}
	w.walk.next = block + 1
	if w.opts.Update {
		return w.updateNeed(f, block, d)
	}
	if !f.resumed {
		return true, nil
	}
	sl, err := f.slots.get(block)
	if err != nil || sl.Digest != d {
		return err == nil, err
	}
	if sl.Mark != w.run {
		w.reused.Add(int64(sl.Data))
		w.cnt.Reused.Add(int64(sl.Data))
	}
	w.cnt.Done.Add(w.blockLen(f, block))
	return false, nil
}

// walkTo finishes the files before i and the blocks of i before block.
func (w *Writer) walkTo(i int, block int64) error {
	if w.walk.file > i || w.walk.file == i && block < w.walk.next {
		return fmt.Errorf("restore: block %d of file %d out of order", block, i)
	}
	if w.walk.file != i {
		if err := w.finishFiles(i); err != nil {
			return err
		}
		w.walk.file, w.walk.next = i, 0
	}
	return w.skip(w.files[i], w.walk.next, block)
}

// finishFiles finishes the current file and every restored file before
// end (files without data blocks).
func (w *Writer) finishFiles(end int) error {
	start := w.walk.file
	if start >= 0 && w.files[start] != nil {
		f := w.files[start]
		if err := w.skip(f, w.walk.next, w.nblocks(f)); err != nil {
			return err
		}
		if err := w.endFile(f); err != nil {
			return err
		}
	}
	for j := start + 1; j < end; j++ {
		if f := w.files[j]; f != nil {
			if err := w.skip(f, 0, w.nblocks(f)); err != nil {
				return err
			}
			if err := w.endFile(f); err != nil {
				return err
			}
		}
	}
	return nil
}

// EndWalk ends the walk through the block table: every block of every
// restored file not yet visited is zero.
func (w *Writer) EndWalk() error {
	if w.walk.ended {
		return nil
	}
	err := w.finishFiles(len(w.files))
	w.walk.ended = true
	return err
}

// skip visits the zero blocks [from, to) of f.
func (w *Writer) skip(f *file, from, to int64) error {
	if from >= to {
		return nil
	}
	if w.opts.Update {
		return w.updateSkip(f, from, to)
	}
	bs := w.sh.BlockSize
	n := min(to*bs, f.meta.Size) - min(from*bs, f.meta.Size)
	w.cnt.Hole.Add(n)
	w.cnt.Done.Add(n)
	if f.resumed {
		return w.dropStray(f, from, to)
	}
	return nil
}

// dropStray zeroes the blocks from..to of a resumed file, which the
// shipment says are zero, that its temporary file holds data in
// (checkResumed recorded them): the stopped receive did not write them,
// so what they hold is not this shipment's.
func (w *Writer) dropStray(f *file, from, to int64) error {
	bs := w.sh.BlockSize
	return f.slots.eachIn(from, to, func(b int64, _ Slot) error {
		if err := zeroRange(f.fh, b*bs, w.blockLen(f, b), f.device); err != nil {
			return fmt.Errorf("restore %s: %w", f.final, err)
		}
		return f.slots.put(b, Slot{})
	})
}

// endFile is called once the walk has passed every block of f.
func (w *Writer) endFile(f *file) error {
	if w.opts.Update {
		return w.updateEnd(f)
	}
	return nil
}
