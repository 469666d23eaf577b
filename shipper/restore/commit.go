package restore

import (
	"context"
	"fmt"
	"os"
	"path"
	"sort"
	"strings"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/archive"
)

// Commit ends the walk, then checks every file and puts them all in
// place: devices get zeros where the shipment has zeros; files are synced;
// each whole-file digest (and data bytes) is checked from the digests of
// the blocks the file holds; with ReadBack every block written is read
// again and checked; overlays are pointed at their restored backing files
// (see backing.go); Finalize runs; owners, modes and mtimes are set; then
// every file is renamed to its final name, the folders are synced and the
// marker says what the folder holds. An error before the renames leaves
// every final name as it was.
func (w *Writer) Commit(ctx context.Context) (*Result, error) {
	if err := w.EndWalk(); err != nil {
		return nil, err
	}
	if err := w.checkAll(ctx); err != nil {
		return nil, err
	}
	for _, f := range w.files {
		if f == nil {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, context.Cause(ctx)
		}
		if err := w.finalize(ctx, f); err != nil {
			return nil, err
		}
	}
	for _, f := range w.files {
		if f != nil && f.temp != "" && !f.device {
			if err := w.land(f); err != nil {
				return nil, err
			}
		}
	}
	w.dirAttrs()
	for _, d := range w.t.dirs {
		d.Sync()
	}
	if err := w.markDone(); err != nil {
		return nil, err
	}
	w.done = true
	w.cleanup()
	return w.result(), nil
}

// checkAll syncs and checks every file, several at once.
func (w *Writer) checkAll(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(1, min(w.opts.Jobs, 8)))
	for _, f := range w.files {
		if f != nil {
			g.Go(func() error { return w.check(gctx, f) })
		}
	}
	return g.Wait()
}

// check syncs one file and checks it against the manifest.
func (w *Writer) check(ctx context.Context, f *file) error {
	if err := f.slots.flush(); err != nil {
		return err
	}
	if f.device {
		if err := w.zeroGaps(f); err != nil {
			return err
		}
	}
	if f.fh != nil {
		if err := f.fh.Sync(); err != nil {
			return fmt.Errorf("sync %s: %w", f.fh.Name(), err)
		}
		if err := f.slots.f.Sync(); err != nil {
			return fmt.Errorf("sync %s: %w", f.slots.name, err)
		}
		if testAfterSync != nil {
			testAfterSync(f.fh)
		}
	}
	d, data, err := w.fileDigest(f)
	if err != nil {
		return err
	}
	if d != f.meta.BLAKE3 {
		return fmt.Errorf("%s: whole-file digest does not match the manifest: %w", f.meta.Path, archive.ErrIntegrity)
	}
	if w.sh.Format >= archive.FormatV3 && !w.opts.Live && data != f.meta.DataBytes {
		return fmt.Errorf("%s: holds %d bytes of data, the manifest says %d: %w", f.meta.Path, data, f.meta.DataBytes, archive.ErrIntegrity)
	}
	if w.opts.ReadBack && f.fh != nil {
		return w.readBack(ctx, f)
	}
	return nil
}

// testAfterSync, set by tests, damages a file between its sync and its
// checks, as a disk that loses a write would.
var testAfterSync func(*os.File)

// fileDigest computes f's whole-file digest, and its data bytes, from the
// digests its blocks file records, in index order.
func (w *Writer) fileDigest(f *file) (archive.Digest, int64, error) {
	fd := archive.NewFileDigester(w.sh.Format, f.meta.Size, w.sh.BlockSize)
	var data int64
	err := f.slots.each(w.nblocks(f), func(b int64, sl Slot) error {
		data += int64(sl.Data)
		return fd.Add(b, sl.Digest)
	})
	if err != nil {
		return archive.Digest{}, 0, err
	}
	return fd.Sum(), data, nil
}

// readBack drops f's pages from the page cache and reads every block
// written again, checking each against the digest it was written with.
func (w *Writer) readBack(ctx context.Context, f *file) error {
	unix.Fadvise(int(f.fh.Fd()), 0, 0, unix.FADV_DONTNEED)
	written := func(yield func(int64) error) error {
		return f.slots.each(w.nblocks(f), func(b int64, sl Slot) error {
			if w.opts.Live || sl.Mark == w.run {
				return yield(b)
			}
			return nil
		})
	}
	return scan(ctx, f.fh, f.meta.Size, w.sh.BlockSize, w.kind, w.opts.Jobs, written, func(b int64, got Slot) error {
		want, err := f.slots.get(b)
		if err != nil {
			return err
		}
		if got.Digest != want.Digest {
			return fmt.Errorf("%s: block %d read back from %s differs from what was written: %w", f.meta.Path, b, f.fh.Name(), archive.ErrIntegrity)
		}
		return nil
	})
}

// zeroGaps writes zeros on a device wherever the shipment has zero blocks
// (a device has no holes, and holds what it held before).
func (w *Writer) zeroGaps(f *file) error {
	bs := w.sh.BlockSize
	next := int64(0)
	err := f.slots.each(w.nblocks(f), func(b int64, _ Slot) error {
		err := zeroRange(f.fh, next*bs, b*bs-next*bs, true)
		next = b + 1
		return err
	})
	if err != nil {
		return err
	}
	return zeroRange(f.fh, next*bs, f.meta.Size-min(next*bs, f.meta.Size), true)
}

// finalize points an overlay at its restored backing file (relink), runs
// the Finalize hook on a file written by this restore, then sets its
// owner, mode and mtime.
func (w *Writer) finalize(ctx context.Context, f *file) error {
	if err := w.relink(f); err != nil {
		return fmt.Errorf("%s: point at its backing file: %w", f.meta.Path, err)
	}
	if f.device {
		w.rereadPartitions(f)
		return nil
	}
	if w.opts.Finalize != nil && f.fh != nil {
		ff := &FinalFile{File: f.meta, Temp: f.fh, Final: f.final, PathOf: w.pathOf}
		if err := w.opts.Finalize(ctx, ff); err != nil {
			return fmt.Errorf("%s: %w", f.meta.Path, err)
		}
	}
	fh, name := f.fh, f.temp
	if fh == nil { // an update that left the file as it was
		var err error
		if fh, err = openFile(f.dir, f.base, false, false); err != nil {
			return err
		}
		defer fh.Close()
		name = f.base
	}
	return w.attrs(fh, f.dir, name, f.meta)
}

func (w *Writer) pathOf(p string) string {
	if dev, ok := w.opts.Devices[p]; ok {
		return dev
	}
	return w.t.abs(p)
}

// attrs sets the owner (as root, unless NoSameOwner), the permission bits
// and the mtime of fh, which is name in folder dir.
func (w *Writer) attrs(fh *os.File, dir *os.File, name string, meta *archive.File) error {
	if meta.UID != nil && meta.GID != nil && !w.opts.NoSameOwner && os.Geteuid() == 0 {
		if err := fh.Chown(int(*meta.UID), int(*meta.GID)); err != nil {
			return fmt.Errorf("chown %s: %w", fh.Name(), err)
		}
	}
	if err := fh.Chmod(meta.Mode.Perm()); err != nil {
		return fmt.Errorf("chmod %s: %w", fh.Name(), err)
	}
	ts := []unix.Timespec{{Nsec: unix.UTIME_NOW}, unix.NsecToTimespec(meta.MTime.UnixNano())}
	if err := unix.UtimesNanoAt(int(dir.Fd()), name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set mtime of %s: %w", fh.Name(), err)
	}
	return nil
}

// land renames a checked file to its final name.
func (w *Writer) land(f *file) error {
	if err := rename(f.dir, f.temp, f.base, w.opts.Force); err != nil {
		if err == unix.EEXIST {
			return fmt.Errorf("output %s: %w", f.final, ErrExists)
		}
		return fmt.Errorf("rename %s: %w", f.final, err)
	}
	f.temp = ""
	return nil
}

// dirAttrs sets the folders' owners, modes and times, deepest first, so
// that a read-only folder does not stop its own files from landing.
func (w *Writer) dirAttrs() {
	for k := len(w.dirs) - 1; k >= 0; k-- {
		meta := &w.sh.Files[w.dirs[k]]
		d, err := w.t.dir(meta.Path, false)
		if err != nil {
			continue
		}
		parent, err := w.t.dir(parentOf(meta.Path), false)
		if err != nil {
			continue
		}
		w.attrs(d, parent, path.Base(meta.Path), meta)
	}
}

// markDone writes the marker of the restore just completed.
func (w *Writer) markDone() error {
	mk := &marker{Format: markerFormat, State: stateDone, Shipment: w.sh.ID, Dest: w.opts.Dest,
		BlockSize: w.sh.BlockSize, Digests: w.kind, Partial: w.Partial() || len(w.opts.Devices) > 0,
		Chain: w.sh.Chain, Statement: w.sh.Statement, Label: w.sh.Label}
	for _, f := range w.files {
		if f != nil && f.device {
			if mk.Devices == nil {
				mk.Devices = map[string]string{}
			}
			mk.Devices[f.meta.Path] = f.final
		}
	}
	for _, i := range w.dirs {
		mk.Files = append(mk.Files, markerFile{Path: w.sh.Files[i].Path, Type: archive.TypeDir})
	}
	for _, f := range w.files {
		if f == nil || f.device {
			continue
		}
		st, ok, err := w.t.lstat(f.meta.Path)
		if err != nil || !ok {
			return fmt.Errorf("restore marker: %s: %v", f.final, err)
		}
		mk.Files = append(mk.Files, markerFile{Path: f.meta.Path, Type: archive.TypeFile, Size: f.meta.Size,
			Stamp: stampOf(&st), Blocks: f.blocks})
	}
	sort.SliceStable(mk.Files, func(a, b int) bool { return mk.Files[a].Path < mk.Files[b].Path })
	return mk.save(w.t, w.names.marker)
}

// cleanup removes, once the marker says what the folder holds, what the
// restore replaced: the resume record, blocks files no longer named, files
// an interrupted update left aside, and (an update) the files and empty
// folders of the earlier shipment that this one does not have.
func (w *Writer) cleanup() {
	remove(w.t.root, w.names.record)
	kept := map[string]bool{}
	for _, f := range w.files {
		switch {
		case f == nil:
		case f.device: // not in the marker: the folder does not hold it
			remove(w.bdir, f.blocks)
		default:
			kept[f.blocks] = true
		}
	}
	if w.old == nil {
		return
	}
	inNew := map[string]bool{}
	for i := range w.sh.Files {
		inNew[w.sh.Files[i].Path] = true
	}
	for _, of := range w.old.Files {
		if of.Blocks != "" && !kept[of.Blocks] {
			remove(w.bdir, of.Blocks)
		}
		if of.Type != archive.TypeFile {
			continue
		}
		if of.Temp != "" && (!inNew[of.Path] || w.Restored(indexOf(w.sh.Files, of.Path))) {
			w.t.removeEntry(parentOf(of.Temp), path.Base(of.Temp))
		}
		if w.opts.Update && !inNew[of.Path] {
			w.t.removeEntry(parentOf(of.Path), path.Base(of.Path))
		}
	}
	if !w.opts.Update {
		return
	}
	var gone []string
	for _, of := range w.old.Files {
		if of.Type == archive.TypeDir && !inNew[of.Path] {
			gone = append(gone, of.Path)
		}
	}
	sort.Slice(gone, func(a, b int) bool { return strings.Count(gone[a], "/") > strings.Count(gone[b], "/") })
	for _, p := range gone {
		if d, err := w.t.dir(parentOf(p), false); err == nil {
			unix.Unlinkat(int(d.Fd()), path.Base(p), unix.AT_REMOVEDIR) // only if empty
		}
	}
}

func (w *Writer) result() *Result {
	res := &Result{Written: w.written.Load(), Reused: w.reused.Load()}
	for i := range w.sh.Files {
		switch {
		case w.Restored(i):
			res.Files = append(res.Files, w.files[i].final)
			res.Entries = append(res.Entries, i)
		case w.sh.Files[i].Type == archive.TypeDir && w.dirRestored(i):
			res.Files = append(res.Files, w.t.abs(w.sh.Files[i].Path))
			res.Entries = append(res.Entries, i)
		}
	}
	return res
}

func (w *Writer) dirRestored(i int) bool {
	for _, j := range w.dirs {
		if j == i {
			return true
		}
	}
	return false
}
