package restore

import (
	"fmt"
	"os"

	"github.com/coldship/coldship/archive"
)

// Backing chains. A qcow2 overlay names its backing file in its header;
// the manifest says which file of the shipment that is (archive.File's
// Backing). Once an overlay's digest has checked out, and before Finalize,
// its owner, mode and rename, the writer points its header at where that
// file was restored: a name relative to the overlay's folder when both are
// files of the output folder (they stay together wherever the folder
// goes), the absolute path of the device when either is written onto one
// (--out-device). A header that already holds that name and format is not
// written, so an overlay whose relative chain landed as it was stays
// byte for byte the source's.
//
// The blocks file keeps describing the file as shipped, header included.
// An update therefore compares the new shipment's blocks with what was
// shipped: a header block that changed at the source is written again and
// pointed again; one that did not keeps the rewritten header on disk, and
// the overlay, even when the update leaves it untouched otherwise, is
// checked and pointed again (moved aside first) if the name it holds is
// no longer the right one. Where the file has to be read again (it changed
// since it was restored, or an update or receive was interrupted), its
// rewritten header block differs from the shipped one and is simply
// written and pointed again: never an integrity error.

// backingRef returns the backing file name and format that the restored
// overlay f must hold.
func (w *Writer) backingRef(f *file) (name, format string, err error) {
	b := f.meta.Backing
	i := indexOf(w.sh.Files, b.Path)
	if !w.Restored(i) {
		return "", "", fmt.Errorf("its backing file %s is not restored", b.Path)
	}
	layer := w.files[i]
	if f.device || layer.device {
		return layer.final, b.Format, nil
	}
	// The name send checked the overlay's header has room for.
	rel, err := archive.RestoredBackingName(f.meta.Path, b.Path)
	if err != nil {
		return layer.final, b.Format, nil
	}
	return rel, b.Format, nil
}

// relink points the restored overlay f at its restored backing file. In
// an update that did not touch f, it reads f's header where it is and
// moves f aside to rewrite it only if it must change.
func (w *Writer) relink(f *file) error {
	if f.meta.Backing == nil {
		return nil
	}
	name, format, err := w.backingRef(f)
	if err != nil {
		return err
	}
	if f.fh == nil {
		cur, err := openRead(f.dir, f.base)
		if err != nil {
			return err
		}
		ok, err := holdsBacking(cur, name, format)
		cur.Close()
		if err != nil || ok {
			return err
		}
		if err := w.touch(f); err != nil {
			return err
		}
	}
	ok, err := holdsBacking(f.fh, name, format)
	if err != nil || ok {
		return err
	}
	return archive.PointBacking(f.fh, name, format)
}

// holdsBacking reports whether the qcow2 image fh names backing file name
// in format format.
func holdsBacking(fh *os.File, name, format string) (bool, error) {
	img, err := archive.ImageInfo(fh)
	if err != nil {
		return false, err
	}
	if img.Format != archive.ImageQCOW2 {
		return false, fmt.Errorf("the shipment records a backing file for it, but it is not a qcow2 image (%s): %w", img.Format, archive.ErrIntegrity)
	}
	return img.Backing == name && img.BackingFormat == format, nil
}
