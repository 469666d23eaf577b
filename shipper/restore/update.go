package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/archive"
)

// Where the content of a file of an update is when the update begins.
const (
	locNone  = iota // nowhere: a file the folder does not hold yet
	locFinal        // at its final name
	locAside        // aside, where an interrupted update left it
)

// openUpdate prepares an update of the restore in the folder (receive
// --into): for every file, where its content is and the digests of its
// blocks (from its blocks file while the file's stamp vouches for it, else
// by reading it); the marker then says "updating" before anything changes.
func (w *Writer) openUpdate(ctx context.Context) error {
	m := w.old
	from := m.Shipment
	if m.State == stateUpdating {
		from = m.From
		w.opts.Log("%s holds an interrupted update from %s to %s: completing it as an update to %s", w.t.path, m.From, m.Shipment, w.sh.ID)
	}
	if err := w.checkAsideNames(); err != nil {
		return err
	}
	if err := w.checkSpace(true); err != nil {
		return err
	}
	for _, i := range w.dirs {
		if err := w.clearOldFile(w.sh.Files[i].Path); err != nil {
			return err
		}
	}
	for _, f := range w.files {
		if f != nil && !f.device {
			if err := w.clearOldFolder(f.meta.Path); err != nil {
				return err
			}
		}
	}
	if err := w.sweep(nil); err != nil {
		return err
	}
	var err error
	if w.bdir, err = w.t.dir(w.names.blocks, true); err != nil {
		return err
	}
	for _, i := range w.dirs {
		if _, err := w.t.dir(w.sh.Files[i].Path, true); err != nil {
			return err
		}
	}
	w.upd = &marker{Format: markerFormat, State: stateUpdating, Shipment: w.sh.ID, From: from, Dest: w.opts.Dest,
		BlockSize: w.sh.BlockSize, Digests: w.kind, Partial: m.Partial, Run: w.run, Files: append([]markerFile(nil), m.Files...),
		Chain: w.sh.Chain, Statement: w.sh.Statement, Label: w.sh.Label}
	var replaced []string
	for _, f := range w.files {
		if f == nil || f.device {
			continue
		}
		old, err := w.planFile(ctx, f, m.file(f.meta.Path))
		if err != nil {
			return err
		}
		if old != "" {
			replaced = append(replaced, old)
		}
	}
	if err := w.upd.save(w.t, w.names.marker); err != nil {
		return err
	}
	for _, b := range replaced {
		remove(w.bdir, b)
	}
	for _, f := range w.files {
		if f != nil && !f.device && (f.loc != locFinal || f.oldSize != f.meta.Size) {
			if err := w.touch(f); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkAsideNames refuses, before anything changes, a shipment that holds
// a file at the name an update moves another of its files aside to
// (.NAME.coldship-update, as a folder where an update was interrupted
// holds, shipped again): the move would replace that file, and the update
// then fail with neither at its name.
func (w *Writer) checkAsideNames() error {
	paths := make(map[string]bool, len(w.sh.Files))
	for i := range w.sh.Files {
		paths[w.sh.Files[i].Path] = true
	}
	for _, f := range w.files {
		if f == nil || f.device {
			continue
		}
		if aside := path.Join(parentOf(f.meta.Path), asideName(path.Base(f.meta.Path))); paths[aside] {
			return fmt.Errorf("the shipment holds %s, the name an update moves %s aside to: restore it with --out (--force over this folder), not --into",
				aside, f.meta.Path)
		}
	}
	return nil
}

// clearOldFile removes, where a folder of the shipment goes, the file of
// the restore that has its name (a file that became a folder at the
// source): the end of the update would remove it, but the folder, and the
// files in it, come first.
func (w *Writer) clearOldFile(rel string) error {
	if mf := w.old.file(rel); mf == nil || mf.Type != archive.TypeFile {
		return nil
	}
	st, ok, err := w.t.lstat(rel)
	if err != nil || !ok || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return err
	}
	d, err := w.t.dir(parentOf(rel), true)
	if err != nil {
		return err
	}
	if err := unix.Unlinkat(int(d.Fd()), path.Base(rel), 0); err != nil {
		return fmt.Errorf("remove %s, a file of the restore that %s has as a folder: %w", w.t.abs(rel), w.sh.ID, err)
	}
	return nil
}

// clearOldFolder removes, where a file of the shipment goes, the folder of
// the restore that has its name (a folder that became a file at the
// source), with the files and folders of the restore in it, deepest first.
// A folder that holds anything else stays, and the file cannot land.
func (w *Writer) clearOldFolder(rel string) error {
	if mf := w.old.file(rel); mf == nil || mf.Type != archive.TypeDir {
		return nil
	}
	st, ok, err := w.t.lstat(rel)
	if err != nil || !ok || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return err
	}
	var inside []markerFile
	for _, of := range w.old.Files {
		if strings.HasPrefix(of.Path, rel+"/") {
			inside = append(inside, of)
		}
	}
	sort.Slice(inside, func(a, b int) bool { return inside[a].Path > inside[b].Path }) // a folder after what it holds
	for _, of := range append(inside, markerFile{Path: rel, Type: archive.TypeDir}) {
		d, err := w.t.dir(parentOf(of.Path), false)
		if err != nil {
			continue
		}
		if of.Temp != "" { // aside, by an update that did not complete
			w.t.removeEntry(parentOf(of.Temp), path.Base(of.Temp))
		}
		flags := 0
		if of.Type == archive.TypeDir {
			flags = unix.AT_REMOVEDIR
			w.t.forget(of.Path)
		}
		if err := unix.Unlinkat(int(d.Fd()), path.Base(of.Path), flags); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove %s, a folder of the restore that %s has as a file: %w", w.t.abs(of.Path), w.sh.ID, err)
		}
	}
	return nil
}

// planFile finds where f's content is and opens the blocks file that
// describes it; it returns the name of a blocks file the update replaces.
func (w *Writer) planFile(ctx context.Context, f *file, mf *markerFile) (replaced string, err error) {
	if mf != nil && mf.Type != archive.TypeFile {
		mf = nil
	}
	if f.dir, err = w.t.dir(parentOf(f.meta.Path), true); err != nil {
		return "", err
	}
	f.final = w.t.abs(f.meta.Path)
	st, atFinal, err := w.t.lstat(f.meta.Path)
	if err != nil {
		return "", err
	}
	if atFinal && st.Mode&unix.S_IFMT != unix.S_IFREG {
		return "", fmt.Errorf("output %s: exists and is not a file", f.final)
	}
	aside := path.Join(parentOf(f.meta.Path), asideName(f.base))
	if mf != nil && mf.Temp == aside {
		if ast, ok, err := w.t.lstat(aside); err == nil && ok && ast.Mode&unix.S_IFMT == unix.S_IFREG {
			f.loc, st = locAside, ast
		}
	}
	if f.loc == locNone && atFinal {
		if mf == nil && !w.opts.Force {
			return "", fmt.Errorf("output %s: %w (it is not part of the restore in %s)", f.final, ErrExists, w.t.path)
		}
		f.loc = locFinal
	}
	if f.loc != locNone {
		f.oldSize = st.Size
	}
	m := w.old
	if f.loc == locFinal && mf != nil && mf.Stamp != nil && mf.Blocks != "" && m.Digests == w.kind &&
		m.BlockSize == w.sh.BlockSize && *mf.Stamp == *stampOf(&st) {
		if ok, err := w.trustBlocks(f, mf.Blocks); ok || err != nil {
			return "", err
		}
	} else if f.loc == locFinal && mf != nil && mf.Stamp != nil && m.State == stateDone {
		w.opts.Log("%s changed since it was restored: reading it to find the blocks that differ", f.final)
	}
	if mf != nil && m.State == stateUpdating && m.Run != 0 && f.loc == locAside && mf.Blocks != "" {
		if pf, err := openFile(w.bdir, mf.Blocks, false, true); err == nil {
			f.prev = w.slotFile(pf, mf.Blocks) // what the interrupted update wrote
		}
	}
	if err := w.rehash(ctx, f); err != nil {
		return "", err
	}
	if e := w.upd.file(f.meta.Path); e != nil {
		e.Blocks, e.Stamp = f.blocks, nil
	}
	if mf != nil {
		replaced = mf.Blocks
	}
	return replaced, nil
}

// trustBlocks opens the blocks file that the marker vouches for f with,
// if it still has a slot for every block of f and nothing more: past its
// end every block reads as zero, so a blocks file cut short (a crash, a
// full disk, a hand) would leave data where the new shipment has zeros,
// under a whole-file digest that checks. Otherwise f is read again.
func (w *Writer) trustBlocks(f *file, name string) (bool, error) {
	sf, err := openFile(w.bdir, name, false, true)
	if err != nil {
		w.opts.Log("%s: its blocks file cannot be read (%v): reading it to find the blocks that differ", f.final, err)
		return false, nil
	}
	slots := w.slotFile(sf, name)
	cur, err := newCursor(slots)
	if err != nil {
		slots.close()
		return false, err
	}
	if nb := (f.oldSize + w.sh.BlockSize - 1) / w.sh.BlockSize; cur.size != nb*SlotSize {
		slots.close()
		w.opts.Log("%s: its blocks file %s holds %d bytes, not the %d of its %d blocks: reading it to find the blocks that differ",
			f.final, slots.name, cur.size, nb*SlotSize, nb)
		return false, nil
	}
	f.blocks, f.slots, f.cur = name, slots, cur
	return true, nil
}

// rehash reads f's current content (if any) and records the digest of each
// of its blocks in a new blocks file.
func (w *Writer) rehash(ctx context.Context, f *file) error {
	f.blocks = tempSuffix()
	sf, err := createFile(w.bdir, f.blocks)
	if err != nil {
		return err
	}
	f.slots = w.slotFile(sf, f.blocks)
	if f.loc != locNone {
		name := f.base
		if f.loc == locAside {
			name = asideName(f.base)
		}
		src, err := openRead(f.dir, name)
		if err != nil {
			return err
		}
		defer src.Close()
		nb := (f.oldSize + w.sh.BlockSize - 1) / w.sh.BlockSize
		if err := f.slots.truncate(nb); err != nil {
			return err
		}
		err = scan(ctx, src, f.oldSize, w.sh.BlockSize, w.kind, w.opts.Jobs, dataBlocks(src, f.oldSize, w.sh.BlockSize),
			func(b int64, sl Slot) error {
				w.cnt.Read.Add(archive.BlockLen(f.oldSize, w.sh.BlockSize, b))
				if sl.Zero() {
					return nil
				}
				return f.slots.put(b, sl)
			})
		if err != nil {
			return err
		}
	}
	f.cur, err = newCursor(f.slots)
	return err
}

// openRead opens a regular file in d for reading, not following a link.
func openRead(d *os.File, name string) (*os.File, error) {
	fd, err := unix.Openat(int(d.Fd()), name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: d.Name() + "/" + name, Err: err}
	}
	return os.NewFile(uintptr(fd), d.Name()+"/"+name), nil
}

// touch moves f aside to be rewritten (recorded in the marker first), or
// creates it there when it is new, and sizes it.
func (w *Writer) touch(f *file) error {
	if f.touched {
		return nil
	}
	aside := asideName(f.base)
	e := w.upd.file(f.meta.Path)
	if e == nil {
		w.upd.Files = append(w.upd.Files, markerFile{Path: f.meta.Path, Type: archive.TypeFile})
		e = &w.upd.Files[len(w.upd.Files)-1]
	}
	e.Temp, e.Stamp, e.Blocks = path.Join(parentOf(f.meta.Path), aside), nil, f.blocks
	if err := w.upd.save(w.t, w.names.marker); err != nil {
		return err
	}
	switch f.loc {
	case locFinal:
		if err := rename(f.dir, f.base, aside, true); err != nil {
			return fmt.Errorf("move %s aside: %w", f.final, err)
		}
	case locNone:
		fh, err := createFile(f.dir, aside)
		if err != nil {
			return err
		}
		fh.Close()
	}
	f.loc, f.temp = locAside, aside
	fh, err := openFile(f.dir, aside, false, false)
	if errors.Is(err, unix.EACCES) {
		// A read-only image: writable while it is aside.
		if unix.Fchmodat(int(f.dir.Fd()), aside, 0o600, 0) == nil {
			fh, err = openFile(f.dir, aside, false, false)
		}
	}
	if err != nil {
		return err
	}
	f.fh, f.touched, f.mayHold = fh, true, true
	return w.size(f)
}

// updateNeed compares a data block of the new shipment with what f holds.
func (w *Writer) updateNeed(f *file, block int64, d archive.Digest) (bool, error) {
	old, err := f.cur.at(block)
	if err != nil {
		return false, err
	}
	if old.Digest == d {
		if f.prev != nil {
			if pv, err := f.prev.get(block); err == nil && pv.Mark == w.old.Run && pv.Mark != w.run && pv.Digest == d {
				w.reused.Add(int64(old.Data))
				w.cnt.Reused.Add(int64(old.Data))
			}
		}
		w.cnt.Done.Add(w.blockLen(f, block))
		return false, nil
	}
	return true, w.touch(f)
}

// updateSkip makes the blocks [from, to) of f zero where they held data.
func (w *Writer) updateSkip(f *file, from, to int64) error {
	bs := w.sh.BlockSize
	for b := from; b < min(to, f.cur.blocks()); b++ {
		old, err := f.cur.at(b)
		if err != nil {
			return err
		}
		if old.Zero() {
			continue
		}
		if err := w.touch(f); err != nil {
			return err
		}
		if b >= w.nblocks(f) {
			break // cut off by the new size
		}
		n := w.blockLen(f, b)
		if err := zeroRange(f.fh, b*bs, n, false); err != nil {
			return err
		}
		if err := f.slots.put(b, Slot{}); err != nil {
			return err
		}
		w.written.Add(n)
	}
	n := min(to*bs, f.meta.Size) - min(from*bs, f.meta.Size)
	w.cnt.Hole.Add(n)
	w.cnt.Done.Add(n)
	return nil
}

// updateEnd is called once the walk has passed f.
func (w *Writer) updateEnd(f *file) error {
	f.prev.close()
	return nil
}
