package restore

import (
	"context"
	"errors"
	"fmt"
	"path"

	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/archive"
)

// openFresh prepares a fresh restore (receive --out, live): every file is
// written to a temporary file beside its final name, recorded first.
func (w *Writer) openFresh(ctx context.Context) error {
	rec := loadRecord(w.t, w.names.record)
	if rec != nil && !(w.opts.Resume && rec.Shipment == w.sh.ID && rec.BlockSize == w.sh.BlockSize && rec.Digests == w.kind) {
		if w.opts.Resume {
			w.opts.Log("%s holds an interrupted receive of %s: removing what it wrote", w.t.path, rec.Shipment)
		}
		rec = nil
	}
	if err := w.checkFinals(rec); err != nil {
		return err
	}
	var err error
	if w.bdir, err = w.t.dir(w.names.blocks, true); err != nil {
		return err
	}
	if err := w.sweep(rec); err != nil {
		return err
	}
	for _, i := range w.dirs {
		if _, err := w.t.dir(w.sh.Files[i].Path, true); err != nil {
			return err
		}
	}
	w.rec = &record{Format: recordFormat, Shipment: w.sh.ID, Dest: w.opts.Dest, BlockSize: w.sh.BlockSize, Digests: w.kind, Run: w.run}
	for _, f := range w.files {
		if f == nil || f.device {
			continue
		}
		if f.dir, err = w.t.dir(parentOf(f.meta.Path), true); err != nil {
			return err
		}
		f.final = w.t.abs(f.meta.Path)
		if rf := rec.file(f.meta.Path); rf != nil {
			f.temp, f.blocks, f.resumed = rf.Temp, rf.Blocks, true
		} else if f.adopt != "" {
			f.temp, f.blocks, f.resumed = tempName(f.base, tempSuffix()), f.adopt, true
		} else {
			s := tempSuffix()
			f.temp, f.blocks = tempName(f.base, s), s
		}
		w.rec.Files = append(w.rec.Files, recordFile{Path: f.meta.Path, Temp: f.temp, Blocks: f.blocks})
	}
	if err := w.checkSpace(false); err != nil {
		return err
	}
	// Recorded before anything is created: a receive killed from here on
	// leaves nothing that the next one does not find.
	if err := w.rec.save(w.t, w.names.record); err != nil {
		return err
	}
	for _, f := range w.files {
		if f == nil {
			continue
		}
		switch {
		case f.device:
			err = w.openDeviceSlots(f)
		case f.adopt != "":
			err = w.unland(f)
		default:
			err = w.openTemp(f)
		}
		if err != nil {
			return err
		}
	}
	return w.checkResumed(ctx)
}

// checkFinals checks every final name before anything is created. A
// file that the receive being resumed (rec) had renamed to its final name
// before it was stopped is taken back (adopt) and checked again like a
// resumed temporary file: running the same command again after a receive
// stopped during its renames completes it. A receive that finished
// (its record removed) is not run again over its files without Force.
func (w *Writer) checkFinals(rec *record) error {
	for _, i := range w.dirs {
		p := w.sh.Files[i].Path
		st, ok, err := w.t.lstat(p)
		if err != nil {
			return err
		}
		if ok && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return fmt.Errorf("output %s: exists and is not a directory%s", w.t.abs(p), linkNote(&st))
		}
	}
	for _, f := range w.files {
		if f == nil || f.device {
			continue
		}
		st, ok, err := w.t.lstat(f.meta.Path)
		switch {
		case err != nil:
			return err
		case !ok:
		case st.Mode&unix.S_IFMT != unix.S_IFREG:
			return fmt.Errorf("output %s: exists and is not a file%s", w.t.abs(f.meta.Path), linkNote(&st))
		case w.landed(f, rec):
		case !w.opts.Force:
			return fmt.Errorf("output %s: %w", w.t.abs(f.meta.Path), ErrExists)
		}
	}
	return nil
}

// landed reports whether the file at f's final name is one that the
// receive being resumed (rec: stopped before it finished) renamed there,
// and if so sets f.adopt to the blocks file that records what it holds.
func (w *Writer) landed(f *file, rec *record) bool {
	var blocks string
	if rf := rec.file(f.meta.Path); rf != nil {
		if _, ok, _ := w.t.lstat(path.Join(parentOf(f.meta.Path), rf.Temp)); !ok {
			blocks = rf.Blocks // renamed before the receive was stopped
		}
	}
	if blocks == "" {
		return false
	}
	if _, ok, _ := w.t.lstat(path.Join(w.names.blocks, blocks)); !ok {
		return false
	}
	f.adopt = blocks
	return true
}

// unland moves a file that an earlier receive of this shipment landed
// back to its temporary name (recorded already), to be checked again.
func (w *Writer) unland(f *file) error {
	if err := rename(f.dir, f.base, f.temp, false); err != nil {
		return fmt.Errorf("output %s: %w", f.final, err)
	}
	return w.openTemp(f)
}

// openTemp creates a file's temporary file and blocks file, or reopens
// those of the interrupted receive it resumes (starting afresh if they are
// gone or not what that receive made).
func (w *Writer) openTemp(f *file) error {
	if f.resumed {
		fh, err := openFile(f.dir, f.temp, false, true)
		sf, serr := openFile(w.bdir, f.blocks, false, true)
		if err == nil && serr == nil {
			f.fh, f.slots = fh, w.slotFile(sf, f.blocks)
			f.mayHold = true
			return w.size(f)
		}
		if fh != nil {
			fh.Close()
		}
		if sf != nil {
			sf.Close()
		}
		f.resumed = false
	}
	fh, err := createFile(f.dir, f.temp)
	if err != nil {
		return err
	}
	f.fh = fh
	sf, err := createFile(w.bdir, f.blocks)
	if err != nil {
		return err
	}
	f.slots = w.slotFile(sf, f.blocks)
	return w.size(f)
}

// openDeviceSlots gives a file written onto a device a blocks file of its
// own (a device is not resumed: it is written whole again).
func (w *Writer) openDeviceSlots(f *file) error {
	f.blocks = tempSuffix()
	sf, err := createFile(w.bdir, f.blocks)
	if err != nil {
		return err
	}
	f.slots = w.slotFile(sf, f.blocks)
	return f.slots.truncate(w.nblocks(f))
}

// size gives the file being written its size (and its blocks file the
// slots for as many blocks).
func (w *Writer) size(f *file) error {
	if err := f.fh.Truncate(f.meta.Size); err != nil {
		if errors.Is(err, unix.EFBIG) {
			return fmt.Errorf("%s: the file system cannot hold a file of %d bytes: %w", w.t.abs(f.meta.Path), f.meta.Size, err)
		}
		return fmt.Errorf("size %s: %w", f.fh.Name(), err)
	}
	return f.slots.truncate(w.nblocks(f))
}

// checkResumed reads back every block an interrupted receive recorded and
// keeps those whose digest checks; the others are written again. Then it
// reads the blocks that hold data in the temporary file but are recorded
// by no slot (written, but killed before putLater's batch was), and
// records them with the digest found on disk, which Need compares with the
// shipment's: every block written whose digest checks is reused.
func (w *Writer) checkResumed(ctx context.Context) error {
	for _, f := range w.files {
		if f == nil || !f.resumed {
			continue
		}
		recorded := func(yield func(int64) error) error {
			return f.slots.each(w.nblocks(f), func(b int64, _ Slot) error { return yield(b) })
		}
		err := w.scanResumed(ctx, f, recorded, func(b int64, got, want Slot) error {
			if got.Digest == want.Digest && got.Data == want.Data {
				return nil
			}
			return f.slots.put(b, Slot{})
		})
		if err != nil {
			return err
		}
		unrecorded := func(yield func(int64) error) error {
			return dataBlocks(f.fh, f.meta.Size, w.sh.BlockSize)(func(b int64) error {
				if sl, err := f.slots.get(b); err != nil || !sl.Zero() {
					return err
				}
				return yield(b)
			})
		}
		err = w.scanResumed(ctx, f, unrecorded, func(b int64, got, _ Slot) error {
			if got.Zero() {
				return nil
			}
			got.Mark = 0 // not this run's: counted as reused if the shipment has it
			return f.slots.put(b, got)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// scanResumed hashes the blocks of f's temporary file that blocks yields
// and calls visit with what each holds and what its slot records.
func (w *Writer) scanResumed(ctx context.Context, f *file, blocks func(yield func(int64) error) error,
	visit func(b int64, got, want Slot) error) error {
	return scan(ctx, f.fh, f.meta.Size, w.sh.BlockSize, w.kind, w.opts.Jobs, blocks, func(b int64, got Slot) error {
		want, err := f.slots.get(b)
		if err != nil {
			return err
		}
		return visit(b, got, want)
	})
}

// sweep removes what earlier receives left and nothing can use any more:
// temporary files of the restored files that neither rec (the record
// being resumed) nor the folder's marker names, blocks files that neither
// names, a stale record and leftovers of atomic writes.
func (w *Writer) sweep(rec *record) error {
	keepTemp := map[string]bool{}
	keepBlocks := map[string]bool{}
	if rec != nil {
		for _, rf := range rec.Files {
			keepTemp[path.Join(path.Dir(rf.Path), rf.Temp)] = true
			keepBlocks[rf.Blocks] = true
		}
	} else {
		remove(w.t.root, w.names.record)
	}
	if m := w.old; m != nil {
		for _, mf := range m.Files {
			if mf.Blocks != "" {
				keepBlocks[mf.Blocks] = true
			}
			if mf.Temp != "" {
				keepTemp[mf.Temp] = true
			}
		}
	}
	bases := map[string]map[string]bool{} // folder -> base names of restored files
	for i := range w.sh.Files {
		f := &w.sh.Files[i]
		if f.Type == archive.TypeFile {
			d := parentOf(f.Path)
			if bases[d] == nil {
				bases[d] = map[string]bool{}
			}
			bases[d][path.Base(f.Path)] = true
		}
	}
	for d, bs := range bases {
		err := w.t.eachEntry(d, func(name string) {
			for b := range bs {
				if isTempOf(name, b) && !keepTemp[path.Join(d, name)] {
					w.t.removeEntry(d, name)
				}
			}
		})
		if err != nil {
			return err
		}
	}
	for _, n := range []string{w.names.marker, w.names.record} {
		pre := "." + n + ".tmp-"
		w.t.eachEntry("", func(name string) {
			if len(name) > len(pre) && name[:len(pre)] == pre {
				w.t.removeEntry("", name)
			}
		})
	}
	return w.t.eachEntry(w.names.blocks, func(name string) {
		if !keepBlocks[name] {
			w.t.removeEntry(w.names.blocks, name)
		}
	})
}

// linkNote says why a link where a file or folder goes is refused.
func linkNote(st *unix.Stat_t) string {
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return " (a symbolic link is never followed)"
	}
	return ""
}
