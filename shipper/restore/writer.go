package restore

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper/internal/progress"
)

// ErrExists means an output file exists and Options.Force was not given.
var ErrExists = errors.New("already exists (use --force to overwrite)")

// ErrNoRestore means an update was asked of a folder that holds no restore
// of the shipment's files made by coldship.
var ErrNoRestore = errors.New("holds no restore of these files made by coldship receive (receive with --out first)")

// Shipment is what a Writer restores: the files of a manifest (every file
// and folder, in the manifest's order: block writes name files by their
// index here) and how its blocks are cut and hashed.
type Shipment struct {
	ID        string
	Format    int   // archive.FormatV3 (forms, FormDigest) or 1, 2 (dense blocks, BlockDigest)
	BlockSize int64 // bytes
	Files     []archive.File
	// Chain and Statement, for a signed shipment whose signature was
	// checked: its chain id and the SHA-256 of its statement, which the
	// marker records for the rollback check of the next update.
	Chain     string
	Statement archive.Digest
	// Label is the shipment's label, which the marker records for the
	// next update to check that it is of the same series; nil: unknown,
	// not recorded.
	Label *string
}

// Options configure a Writer.
type Options struct {
	Dir    string // the output folder
	Update bool   // update the restore in Dir in place (receive --into)
	Force  bool   // replace files at final names that are not ours to update
	// Resume reuses what an interrupted receive of the same shipment into
	// Dir left (receive --out); without it, that is removed.
	Resume      bool
	ReadBack    bool              // read every written block again after the sync and check it
	NoSameOwner bool              // as root, do not restore numeric owners and groups
	Include     []string          // shell patterns: restore only the files they match (or a folder of theirs)
	Devices     map[string]string // file of the shipment -> block device written in place
	LockWait    time.Duration     // how long to wait for another receive into Dir
	Jobs        int               // parallel readers when hashing files; 0: all CPUs
	Dest        string            // names the destination in the marker
	// CheckHeld, with Update, is given what the folder's marker says it
	// holds, read under the folder's lock before anything changes; an
	// error refuses the update. A check made before the lock was taken
	// (the rollback check of receive --into) can be out of date by then:
	// another receive may have updated the folder while this one waited.
	CheckHeld func(Holding) error
	// Live is set by the live receiver: blocks are written with
	// WriteLive, each round marks its own, and the final manifest carries
	// no data bytes.
	Live bool
	// Run marks the blocks this restore writes (0: a random mark). The
	// attempts of one receive share it, so that what an earlier attempt
	// wrote does not count as reused.
	Run      uint32
	Counters *progress.Counters
	// Finalize, if set, runs for each file written, after its digest
	// checked out and before its owner, mode and mtime are set and it is
	// renamed into place; an error fails the restore.
	Finalize func(ctx context.Context, f *FinalFile) error
	Log      func(format string, a ...any)
}

// FinalFile is a file about to be renamed into place, for Finalize.
type FinalFile struct {
	File  *archive.File // its manifest entry (path, backing, ...)
	Temp  *os.File      // the checked file, open for reading and writing
	Final string        // the absolute path it will have
	// PathOf returns where another file of the shipment lands (absolute),
	// for rewriting a reference to it (a qcow2 overlay's backing file).
	PathOf func(shipmentPath string) string
}

// Result describes a restore once committed.
type Result struct {
	Files   []string // every file and folder restored (absolute paths; devices by their path)
	Entries []int    // the index in the shipment of each of Files
	Written int64    // bytes of blocks written or zeroed
	Reused  int64    // data bytes an interrupted receive had written, reused
}

// Writer restores one shipment into a folder; see the package doc. Its
// block writes are safe for concurrent use; Need, Resize, Commit and Close
// are called by one goroutine.
type Writer struct {
	sh    Shipment
	opts  Options
	kind  string
	names names
	t     *tree
	files []*file // by manifest index: nil for folders and files not restored
	dirs  []int   // the folders restored, in manifest order
	old   *marker // the folder's marker as found
	upd   *marker // an update's marker while it runs
	rec   *record // a fresh receive's resume record
	run   uint32  // marks the slots this Writer writes
	bdir  *os.File
	cnt   *progress.Counters

	walk    walkState
	stripes [64]sync.Mutex
	written atomic.Int64
	reused  atomic.Int64
	done    bool
}

// file is one regular file being restored.
type file struct {
	idx     int
	meta    *archive.File
	base    string
	dir     *os.File // its folder
	final   string   // absolute path, or the device
	temp    string   // base name of the file being written ("" while an update has not touched it)
	fh      *os.File
	slots   *slotFile
	blocks  string // name of the blocks file
	device  bool
	mayHold bool   // the file may hold data where the shipment has zeros: punch them
	resumed bool   // slots left by an interrupted receive (checked on disk)
	adopt   string // fresh: the blocks file of what an earlier receive of this shipment landed at the final name
	touched bool   // update: moved aside and rewritten
	loc     int    // update: where its content is (locNone, locFinal, locAside)
	oldSize int64
	cur     *cursor      // update: the walk through its slots
	prev    *slotFile    // resumed update: the slots the interrupted update wrote
	pending atomic.Int64 // bytes written since writeback was last started
}

// Open prepares the restore of sh into opts.Dir: it locks the folder,
// checks every final name, removes what earlier receives left that
// nothing can resume, and creates (or, resuming, reopens and checks) the
// temporary files. Close must follow.
func Open(ctx context.Context, sh Shipment, opts Options) (_ *Writer, err error) {
	if opts.Counters == nil {
		opts.Counters = new(progress.Counters)
	}
	if opts.Log == nil {
		opts.Log = func(string, ...any) {}
	}
	if opts.Jobs <= 0 {
		opts.Jobs = runtime.NumCPU()
	}
	if sh.BlockSize < archive.MinBlockSize || sh.BlockSize > archive.MaxBlockSize {
		return nil, fmt.Errorf("block size %d out of range", sh.BlockSize)
	}
	w := &Writer{sh: sh, opts: opts, cnt: opts.Counters, names: namesFor(sh.Files), kind: digestsPlain, walk: walkState{file: -1}}
	if sh.Format >= archive.FormatV3 {
		w.kind = digestsForm
	}
	if w.run = opts.Run; w.run == 0 {
		w.run = NewRun()
	}
	if err := w.selectFiles(); err != nil {
		return nil, err
	}
	if opts.Update {
		if fi, err := os.Stat(opts.Dir); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("%s %w", opts.Dir, ErrNoRestore)
		}
	}
	if w.t, err = openTree(ctx, opts.Dir, !opts.Update, opts.LockWait); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			w.Close(false)
		}
	}()
	if w.old, err = loadMarker(w.t, w.names.marker); err != nil {
		return nil, err
	}
	if opts.Update && w.old == nil {
		return nil, fmt.Errorf("%s %w", w.t.path, ErrNoRestore)
	}
	if opts.Update {
		if err := w.old.checkNoDevices(w.t.path); err != nil {
			return nil, err
		}
	}
	if opts.Update && opts.CheckHeld != nil {
		if err := opts.CheckHeld(w.old.holding()); err != nil {
			return nil, err
		}
	}
	if err := w.openDevices(); err != nil {
		return nil, err
	}
	if opts.Update {
		err = w.openUpdate(ctx)
	} else {
		err = w.openFresh(ctx)
	}
	if err != nil {
		return nil, err
	}
	return w, nil
}

// NewRun returns a random mark for Options.Run.
func NewRun() uint32 {
	var b [4]byte
	rand.Read(b[:])
	return binary.BigEndian.Uint32(b[:]) | 1
}

// selectFiles decides which files and folders are restored (Include,
// Devices) and makes their entries.
func (w *Writer) selectFiles() error {
	w.files = make([]*file, len(w.sh.Files))
	inc := newIncluder(w.sh.Files, w.opts.Include)
	if err := inc.check(); err != nil {
		return err
	}
	for _, l := range inc.layers {
		w.opts.Log("--include: restoring %s too: an included image reads through it (backing chain)", l)
	}
	for _, d := range inc.dataFiles {
		w.opts.Log("--include: restoring %s too: it holds the data of %s (a vmdk extent file)", d.Path, d.Of)
	}
	for dev := range w.opts.Devices {
		if i := indexOf(w.sh.Files, dev); i < 0 || w.sh.Files[i].Type != archive.TypeFile {
			return fmt.Errorf("--out-device %s: the shipment has no file %q", dev, dev)
		}
	}
	for i := range w.sh.Files {
		f := &w.sh.Files[i]
		if !inc.wanted(i) {
			continue
		}
		if f.Type == archive.TypeDir {
			w.dirs = append(w.dirs, i)
			continue
		}
		w.files[i] = &file{idx: i, meta: f, base: path.Base(f.Path)}
	}
	return nil
}

func indexOf(files []archive.File, p string) int {
	for i := range files {
		if files[i].Path == p {
			return i
		}
	}
	return -1
}

// Restored reports whether file i of the shipment is restored (not a
// folder, not left out by Include).
func (w *Writer) Restored(i int) bool { return i >= 0 && i < len(w.files) && w.files[i] != nil }

// Partial reports whether Include left files of the shipment out.
func (w *Writer) Partial() bool {
	for i := range w.sh.Files {
		if w.sh.Files[i].Type == archive.TypeFile && w.files[i] == nil {
			return true
		}
	}
	return false
}

func (w *Writer) nblocks(f *file) int64 {
	return (f.meta.Size + w.sh.BlockSize - 1) / w.sh.BlockSize
}

func (w *Writer) blockLen(f *file, block int64) int64 {
	return archive.BlockLen(f.meta.Size, w.sh.BlockSize, block)
}

// Close ends the Writer. After a successful Commit it only releases what
// it holds. Otherwise, with keep, a fresh receive's temporary files stay,
// recorded, for the next receive of the same shipment to resume, and an
// update's files stay aside for the next update to complete; without
// keep, a fresh receive's temporary files, blocks files, record and the
// folders it created are removed (an update's files stay aside: they hold
// the only copy of the folder's content).
func (w *Writer) Close(keep bool) {
	if w == nil || w.t == nil {
		return
	}
	for _, f := range w.files {
		if f == nil {
			continue
		}
		if f.fh != nil {
			f.fh.Close()
			f.fh = nil
		}
		if keep {
			f.slots.flush() // what a resumed receive may reuse
		}
		f.slots.close()
		f.prev.close()
	}
	if !w.done && !keep && !w.opts.Update {
		w.removeTemps()
	}
	w.bdir = nil // one of the tree's folders
	w.t.close()
	w.t = nil
}

// removeTemps removes what a failed fresh receive made.
func (w *Writer) removeTemps() {
	for _, f := range w.files {
		if f == nil {
			continue
		}
		if f.temp != "" && f.dir != nil && !f.device {
			remove(f.dir, f.temp)
		}
		if f.blocks != "" && w.bdir != nil {
			remove(w.bdir, f.blocks)
		}
	}
	if w.rec != nil {
		remove(w.t.root, w.names.record)
	}
	w.t.removeCreated()
}
