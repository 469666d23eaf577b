package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/archive"
)

// hasher reads blocks of a file back from disk and digests them as the
// restore records them (format 3: the form's FormDigest and data bytes;
// formats 1 and 2: BlockDigest). A zero block gives the zero slot.
type hasher struct {
	f    *os.File
	size int64
	bs   int64
	kind string
	buf  []byte
	fb   archive.FormBuilder
}

func newHasher(f *os.File, size, bs int64, kind string) *hasher {
	return &hasher{f: f, size: size, bs: bs, kind: kind, buf: make([]byte, archive.MaxFormLen(bs))}
}

func (h *hasher) block(block int64) (Slot, error) {
	off := block * h.bs
	n := archive.BlockLen(h.size, h.bs, block)
	if n <= 0 {
		return Slot{}, nil
	}
	var dst []byte
	if h.kind == digestsForm {
		h.fb.Reset(h.buf, n)
		dst = h.fb.Next(0, archive.Pages(n))
	} else {
		dst = h.buf[:n]
	}
	if _, err := h.f.ReadAt(dst, off); err != nil {
		return Slot{}, fmt.Errorf("read %s: %w", h.f.Name(), err)
	}
	if h.kind != digestsForm {
		if archive.IsZero(dst) {
			return Slot{}, nil
		}
		return Slot{Digest: archive.BlockDigest(dst), Data: uint32(n)}, nil
	}
	data := h.fb.Commit(0, archive.Pages(n))
	form := h.fb.Form()
	if form == nil {
		return Slot{}, nil
	}
	return Slot{Digest: archive.FormDigest(form, n), Data: uint32(data)}, nil
}

// scan hashes, with jobs workers, the blocks of f that blocks yields (in
// any order) and calls visit with each result, from several goroutines.
func scan(ctx context.Context, f *os.File, size, bs int64, kind string, jobs int,
	blocks func(yield func(int64) error) error, visit func(block int64, sl Slot) error) error {
	g, gctx := errgroup.WithContext(ctx)
	ch := make(chan int64, 2*jobs)
	g.Go(func() error {
		defer close(ch)
		return blocks(func(b int64) error {
			select {
			case ch <- b:
				return nil
			case <-gctx.Done():
				return context.Cause(gctx)
			}
		})
	})
	for range jobs {
		g.Go(func() error {
			h := newHasher(f, size, bs, kind)
			for b := range ch {
				sl, err := h.block(b)
				if err == nil {
					err = visit(b, sl)
				}
				if err != nil {
					return err
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// dataBlocks yields the blocks of a file of size bytes that hold any
// allocated data, found with SEEK_DATA and SEEK_HOLE as it goes (holes are
// never read, and nothing per extent is kept).
func dataBlocks(f *os.File, size, bs int64) func(yield func(int64) error) error {
	return func(yield func(int64) error) error {
		fd := int(f.Fd())
		for off := int64(0); off < size; {
			data, err := unix.Seek(fd, off, unix.SEEK_DATA)
			if errors.Is(err, syscall.ENXIO) {
				return nil
			}
			hole := size
			if err != nil {
				data = off // no SEEK_DATA: every block is data
			} else if h, err := unix.Seek(fd, data, unix.SEEK_HOLE); err == nil {
				hole = min(h, size)
			}
			if data >= size {
				return nil
			}
			for b := data / bs; b*bs < hole; b++ {
				if err := yield(b); err != nil {
					return err
				}
			}
			off = ((hole + bs - 1) / bs) * bs
		}
		return nil
	}
}
