package restore

import (
	"fmt"
	"path"

	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/archive"
)

// dataBytes returns the bytes of data the shipment says file f holds:
// what a restore allocates for it.
func dataBytes(f *archive.File) int64 {
	if f.DataBytes > 0 {
		return f.DataBytes
	}
	var n int64
	for _, e := range f.Extents {
		if e.Kind == archive.KindData {
			n += e.Length
		}
	}
	return n
}

// checkSpace fails before anything is written when the file system of the
// output folder has less room than the data still to write: a restore
// that cannot fit stops with a clear message, not half-way with ENOSPC.
func (w *Writer) checkSpace() error {
	var need int64
	for _, f := range w.files {
		if f == nil || f.device {
			continue
		}
		need += dataBytes(f.meta)
		if f.resumed {
			if st, ok, err := w.t.lstat(path.Join(parentOf(f.meta.Path), f.temp)); err == nil && ok {
				need -= min(st.Blocks*512, dataBytes(f.meta))
			}
		}
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(w.t.root.Fd()), &fs); err != nil {
		return nil // cannot tell: the writes will
	}
	free := int64(fs.Bavail) * fs.Bsize
	if need > free {
		return fmt.Errorf("%s: the shipment's data needs %d bytes, its file system has %d free", w.t.path, need, free)
	}
	return nil
}
