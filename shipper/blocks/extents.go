package blocks

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// extents walks the data extents of a file lazily (SEEK_DATA and
// SEEK_HOLE from where the reader is), so that a file with millions of
// extents costs two system calls per extent and no memory per extent. A
// file system without SEEK_DATA reports the whole file as data.
type extents struct {
	f          *os.File
	size       int64
	start, end int64 // the current extent [start, end); end == 0: none yet
	done       bool  // no data at or after end
	dense      bool  // SEEK_DATA unsupported: everything is data
}

func newExtents(f *os.File, size int64) *extents {
	return &extents{f: f, size: size}
}

// at returns the first data extent that ends after off, clipped to the
// file's size; ok is false when only hole remains.
func (e *extents) at(off int64) (start, end int64, ok bool, err error) {
	for !e.done && e.end <= off {
		if err := e.next(max(off, e.end)); err != nil {
			return 0, 0, false, err
		}
	}
	if e.done && e.end <= off {
		return 0, 0, false, nil
	}
	return e.start, e.end, true, nil
}

// next finds the first extent at or after pos.
func (e *extents) next(pos int64) error {
	if pos >= e.size {
		e.done = true
		return nil
	}
	if e.dense {
		e.start, e.end = pos, e.size
		return nil
	}
	fd := int(e.f.Fd())
	data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
	switch {
	case errors.Is(err, syscall.ENXIO):
		e.done = true
		return nil
	case errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP):
		e.dense = true
		e.start, e.end = pos, e.size
		return nil
	case err != nil:
		return fmt.Errorf("seek data in %s: %w", e.f.Name(), err)
	}
	if data >= e.size {
		e.done = true
		return nil
	}
	hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
	if err != nil {
		return fmt.Errorf("seek hole in %s: %w", e.f.Name(), err)
	}
	e.start, e.end = data, min(hole, e.size)
	return nil
}
