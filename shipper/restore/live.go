package restore

import (
	"fmt"

	"github.com/coldship/coldship/archive"
)

// The live receiver writes a block position again in each round that
// changes it; a slot's mark is then the round that last wrote the block.

// WriteLive writes block of file i in round (from 1) from its form, which
// the caller has checked (archive.CheckForm, data bytes data), and records
// its FormDigest: the whole-file digest is made of the digests of the
// blocks written last. A block written in an earlier round has its zero
// runs punched; a block written twice in one round is an integrity error.
func (w *Writer) WriteLive(i int, block int64, form []byte, data int64, round uint32) error {
	f, err := w.target(i, block)
	if err != nil {
		return err
	}
	n := w.blockLen(f, block)
	sl := Slot{Digest: archive.FormDigest(form, n), Data: uint32(data), Mark: round}
	mu := &w.stripes[(uint64(i)*31+uint64(block))%uint64(len(w.stripes))]
	mu.Lock()
	old, err := f.slots.get(block)
	if err == nil && old.Mark == round {
		err = fmt.Errorf("%s block %d arrived twice in round %d: %w", f.meta.Path, block, round, archive.ErrIntegrity)
	}
	if err == nil {
		err = f.slots.put(block, sl)
	}
	mu.Unlock()
	if err != nil {
		return err
	}
	if err := archive.WalkForm(form, n, w.writeRun(f, block), w.zeroRun(f, block, old.Mark != 0)); err != nil {
		return err
	}
	w.account(f, n)
	return nil
}

// Resize follows a file whose size changed between rounds: the block that
// the shorter of the two sizes cuts is zeroed and, with every block after
// it, counts as never written (the sender sends them again if they hold
// data).
func (w *Writer) Resize(i int, size int64) error {
	f := w.files[i]
	if f == nil || f.fh == nil {
		return fmt.Errorf("restore: file %d is not restored", i)
	}
	bs := w.sh.BlockSize
	short := min(f.meta.Size, size)
	keep := short / bs
	if short%bs != 0 {
		if sl, err := f.slots.get(keep); err != nil {
			return err
		} else if sl.Mark != 0 {
			if err := zeroRange(f.fh, keep*bs, short-keep*bs, f.device); err != nil {
				return err
			}
		}
	}
	if err := f.fh.Truncate(size); err != nil {
		return fmt.Errorf("size %s: %w", f.fh.Name(), err)
	}
	if err := f.slots.truncate(keep); err != nil {
		return err
	}
	f.meta.Size = size
	return f.slots.truncate(w.nblocks(f))
}

// Settle takes a live file's final description (size as in the last
// round, mode, mtime, whole-file digest, extents of whole blocks): a block
// written in an earlier round that is now a hole or zero is punched, and a
// data block never received is an integrity error.
func (w *Writer) Settle(i int, final archive.File) error {
	f := w.files[i]
	if f == nil {
		if w.sh.Files[i].Type == archive.TypeDir && final.Type == archive.TypeDir {
			w.sh.Files[i] = final // its mode and mtime
		}
		return nil
	}
	if final.Size != f.meta.Size {
		return fmt.Errorf("%s: %d bytes, the final round had %d: %w", final.Path, final.Size, f.meta.Size, archive.ErrIntegrity)
	}
	*f.meta = final
	bs := w.sh.BlockSize
	data := newExtentBlocks(final.Extents, bs)
	err := f.slots.each(w.nblocks(f), func(b int64, _ Slot) error {
		if missing, ok := data.before(b); ok {
			return fmt.Errorf("%s: block %d was never received: %w", final.Path, missing, archive.ErrIntegrity)
		}
		if data.take(b) {
			return nil
		}
		// Data in an earlier round, a hole or zeros now.
		if err := zeroRange(f.fh, b*bs, w.blockLen(f, b), f.device); err != nil {
			return err
		}
		return f.slots.put(b, Slot{})
	})
	if err != nil {
		return err
	}
	if missing, ok := data.before(w.nblocks(f)); ok {
		return fmt.Errorf("%s: block %d was never received: %w", final.Path, missing, archive.ErrIntegrity)
	}
	return nil
}

// extentBlocks walks the blocks of the data extents of a file in order.
type extentBlocks struct {
	ext  []archive.Extent
	bs   int64
	next int64 // the next data block not yet taken
}

func newExtentBlocks(ext []archive.Extent, bs int64) *extentBlocks {
	e := &extentBlocks{ext: ext, bs: bs}
	e.advance(0)
	return e
}

// advance moves next to the first data block at or after b (-1: none).
func (e *extentBlocks) advance(b int64) {
	for len(e.ext) > 0 {
		x := e.ext[0]
		first, end := x.Offset/e.bs, (x.Offset+x.Length+e.bs-1)/e.bs
		if x.Kind != archive.KindData || end <= b {
			e.ext = e.ext[1:]
			continue
		}
		e.next = max(first, b)
		return
	}
	e.next = -1
}

// before reports the next data block if it lies before b (never taken).
func (e *extentBlocks) before(b int64) (int64, bool) {
	return e.next, e.next >= 0 && e.next < b
}

// take reports whether b is the next data block, and moves past it.
func (e *extentBlocks) take(b int64) bool {
	if e.next != b {
		return false
	}
	e.advance(b + 1)
	return true
}
