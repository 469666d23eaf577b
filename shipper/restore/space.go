package restore

import (
	"fmt"
	"path"

	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/archive"
)

// dataBytes returns the bytes of data the shipment says file f holds
// (format 3): what a restore allocates for it.
func dataBytes(f *archive.File) int64 { return f.DataBytes }

// checkSpace fails before anything is written when the file system of the
// output folder has less room than the data still to write: a restore
// that cannot fit stops with a clear message, not half-way with ENOSPC.
// Formats 1 and 2 do not say how much of a data block is zero pages (which
// are not written), so only format 3 is checked; the others meet ENOSPC.
func (w *Writer) checkSpace() error {
	if w.sh.Format < archive.FormatV3 {
		return nil
	}
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
