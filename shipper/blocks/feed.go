package blocks

import (
	"context"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
)

// feeder walks the files in order and packs their items into batches.
type feeder[P any] struct {
	r     *reader[P]
	ctx   context.Context
	jobs  chan<- *Batch[P]
	order chan<- *Batch[P]
	cur   *Batch[P]
	runs  []run // page runs of the block being planned
}

func (r *reader[P]) feed(ctx context.Context, jobs, order chan<- *Batch[P]) error {
	fd := &feeder[P]{r: r, ctx: ctx, jobs: jobs, order: order}
	for fi := range r.files {
		if r.files[fi].F == nil {
			continue
		}
		if err := fd.file(fi); err != nil {
			return err
		}
	}
	if fd.cur != nil {
		return fd.dispatch()
	}
	return nil
}

// file plans the items of file fi: runs of hole blocks, and the blocks
// that hold data with the page runs to read in each.
func (fd *feeder[P]) file(fi int) error {
	f := &fd.r.files[fi]
	bs := fd.r.opts.BlockSize
	size := f.Stamp.Size
	nb := (size + bs - 1) / bs
	ext := newExtents(f.F, size)
	for i := int64(0); i < nb; {
		start, _, ok, err := ext.at(i * bs)
		if err != nil {
			return err
		}
		j := nb // the first block from i on that holds data
		if ok {
			j = max(i, start/bs)
		}
		if j > i {
			if err := fd.add(Block[P]{File: fi, Index: i, Count: j - i, Kind: Hole, Len: min(j*bs, size) - i*bs}, 0); err != nil {
				return err
			}
			i = j
			continue
		}
		dataLen, err := fd.pageRuns(ext, i*bs, archive.BlockLen(size, bs, i))
		if err != nil {
			return err
		}
		b := Block[P]{File: fi, Index: i, Count: 1, Kind: Data, Len: archive.BlockLen(size, bs, i)}
		if fd.r.opts.Prior != nil {
			if b.Prior, err = fd.r.opts.Prior(fi, i); err != nil {
				return err
			}
		}
		if err := fd.add(b, dataLen); err != nil {
			return err
		}
		i++
	}
	if err := fd.batch(); err != nil {
		return err
	}
	fd.cur.Ends = append(fd.cur.Ends, fi)
	return nil
}

// pageRuns collects into fd.runs the runs of pages of the block at off
// (n bytes) that data extents touch, and returns their length in bytes.
func (fd *feeder[P]) pageRuns(ext *extents, off, n int64) (int, error) {
	fd.runs = fd.runs[:0]
	dataLen := 0
	for pos := off; pos < off+n; {
		start, end, ok, err := ext.at(pos)
		if err != nil {
			return 0, err
		}
		if !ok || start >= off+n {
			break
		}
		first := (max(start, off) - off) / archive.PageSize
		last := (min(end, off+n) - off + archive.PageSize - 1) / archive.PageSize
		if k := len(fd.runs); k > 0 && fd.runs[k-1].first+fd.runs[k-1].count >= first {
			prev := &fd.runs[k-1]
			first = prev.first + prev.count // pages already taken
			if last > first {
				prev.count += last - first
			}
		} else {
			fd.runs = append(fd.runs, run{first, last - first})
		}
		if last > first {
			dataLen += int(min(last*archive.PageSize, n) - first*archive.PageSize)
		}
		pos = end
	}
	return dataLen, nil
}

// batch makes sure there is a current batch.
func (fd *feeder[P]) batch() error {
	if fd.cur != nil {
		return nil
	}
	select {
	case b := <-fd.r.free:
		b.reset()
		fd.cur = b
		return nil
	case <-fd.ctx.Done():
		return fd.ctx.Err()
	}
}

// add appends an item to the current batch, starting a new batch when it
// does not fit; a block that is read reserves the buffer space of its
// form (dataLen bytes of pages) and of its record.
func (fd *feeder[P]) add(b Block[P], dataLen int) error {
	l := &fd.r.l
	need, sneed := 0, 0
	if b.Kind != Hole {
		need = archive.FormLen(b.Len, dataLen)
		if l.sealed > 0 {
			sneed = fd.r.opts.Headroom + int(cipher.SealedSize(int64(need)))
		}
	}
	if err := fd.batch(); err != nil {
		return err
	}
	c := fd.cur
	if len(c.Blocks) == maxItems || c.used+need > l.arena || c.sused+sneed > l.sealed {
		if err := fd.dispatch(); err != nil {
			return err
		}
		if err := fd.batch(); err != nil {
			return err
		}
		c = fd.cur
	}
	b.off, b.cap, b.soff, b.scap = c.used, need, c.sused, sneed
	b.r0 = int32(len(c.runs))
	c.runs = append(c.runs, fd.runs...)
	b.r1 = int32(len(c.runs))
	c.used += need
	c.sused += sneed
	c.Blocks = append(c.Blocks, b)
	return nil
}

// dispatch hands the current batch to the workers and to the deliverer.
func (fd *feeder[P]) dispatch() error {
	b := fd.cur
	fd.cur = nil
	if b.data == nil && b.used > 0 {
		b.data = make([]byte, fd.r.l.arena)
	}
	if b.sealed == nil && b.sused > 0 {
		b.sealed = make([]byte, fd.r.l.sealed)
	}
	select {
	case fd.order <- b:
	case <-fd.ctx.Done():
		return fd.ctx.Err()
	}
	select {
	case fd.jobs <- b:
		return nil
	case <-fd.ctx.Done():
		return fd.ctx.Err()
	}
}
