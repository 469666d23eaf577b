package restore

import (
	"fmt"
	"path"

	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/internal/units"
)

// dataBytes returns the bytes of data the shipment says file f holds
// (format 3): what a restore allocates for it.
func dataBytes(f *archive.File) int64 { return f.DataBytes }

// checkSpace fails before anything is written when the file system of the
// output folder has less room than the data still to write: a restore
// that cannot fit stops with a clear message, not half-way with ENOSPC.
// What the folder already holds of a file counts as written: the
// temporary file an interrupted receive left, or the file an update
// (--into) writes into, at its name or moved aside. (An update rewrites
// blocks in place; on a copy-on-write file system, btrfs or ZFS, that
// takes room too, which only the writes find.) Formats 1 and 2 do not say
// how much of a data block is zero pages (which are not written), so only
// format 3 is checked; the others meet ENOSPC.
func (w *Writer) checkSpace(update bool) error {
	if w.sh.Format < archive.FormatV3 {
		return nil
	}
	var need int64
	for _, f := range w.files {
		if f == nil || f.device {
			continue
		}
		var held []string
		switch {
		case update:
			held = []string{f.meta.Path, path.Join(parentOf(f.meta.Path), asideName(f.base))}
		case f.resumed:
			held = []string{path.Join(parentOf(f.meta.Path), f.temp)}
		}
		need += dataBytes(f.meta) - min(w.allocated(held), dataBytes(f.meta))
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(w.t.root.Fd()), &fs); err != nil {
		return nil // cannot tell: the writes will
	}
	free := int64(fs.Bavail) * fs.Bsize
	if need > free {
		return fmt.Errorf("%s: the restore needs %s more for the shipment's data (%d bytes), its file system has %s free (%d bytes)",
			w.t.path, units.IEC(need), need, units.IEC(free), free)
	}
	return nil
}

// allocated returns the most that one of the regular files at the
// folder's paths rel allocates.
func (w *Writer) allocated(rel []string) int64 {
	var most int64
	for _, r := range rel {
		if st, ok, err := w.t.lstat(r); err == nil && ok && st.Mode&unix.S_IFMT == unix.S_IFREG {
			most = max(most, st.Blocks*512)
		}
	}
	return most
}
