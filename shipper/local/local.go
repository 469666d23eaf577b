// Package local is the Transport for a directory on a local or mounted file
// system: the destination of `coldship send --to /path` and the way to read
// a shipment that arrived by any other means (rsync, tape, aws s3 sync).
package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/shipper"
)

// Transport stores objects as files under a root directory.
type Transport struct {
	root string
}

var (
	_ shipper.ExclusiveCreator = (*Transport)(nil)
	_ shipper.TemporaryRemover = (*Transport)(nil)
)

// New returns a Transport rooted at dir. The directory is created (with its
// parents) on the first Put; reading a missing directory finds nothing.
func New(dir string) (*Transport, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("destination %s: %w", dir, err)
	}
	return &Transport{root: abs}, nil
}

func (t *Transport) String() string { return t.root }

// Close implements shipper.Transport; a local directory holds no connection.
func (t *Transport) Close() error { return nil }

func (t *Transport) path(name string) (string, error) {
	if err := shipper.CheckName(name); err != nil {
		return "", err
	}
	return filepath.Join(t.root, filepath.FromSlash(name)), nil
}

// classify wraps err with the sentinel errors callers branch on, and says
// in words what a permanent error means for the destination. Of an error
// of the os package, which names an operation and path too, only the
// cause is kept: the path is said once.
func classify(op, path string, err error) error {
	switch e := err.(type) {
	case *fs.PathError:
		err = e.Err
	case *os.LinkError:
		err = e.Err
	}
	hint := ""
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s %s: %w (%w)", op, path, err, shipper.ErrNotFound)
	case errors.Is(err, syscall.ENOTDIR):
		hint = "a component of the path is a file, not a directory"
	case errors.Is(err, syscall.EISDIR):
		hint = "a directory is in the way"
	case errors.Is(err, fs.ErrPermission):
		hint = "permission denied"
	case errors.Is(err, syscall.EROFS):
		hint = "the file system is read-only"
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		hint = "the destination is full"
	default:
		return fmt.Errorf("%s %s: %w", op, path, err)
	}
	return fmt.Errorf("%s %s: %s: %w (%w)", op, path, hint, err, shipper.ErrPermanent)
}

// Put writes to a temporary file in the object's directory, syncs it, renames
// it to its final name and syncs the directory, so that a crash leaves either
// the complete object or no object.
func (t *Transport) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	final, err := t.path(name)
	if err != nil {
		return err
	}
	tmp, err := t.writeTemp(ctx, final, r, size)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		if errors.Is(err, fs.ErrExist) {
			// Linux says EEXIST or ENOTEMPTY for a directory that is not
			// empty, EISDIR for an empty one.
			err = &os.LinkError{Op: "rename", Old: tmp, New: final, Err: syscall.EISDIR}
		}
		return classify("rename", final, err)
	}
	return syncDir(filepath.Dir(final))
}

// PutNew writes and syncs a temporary file as Put does, then links it to
// its final name, which fails if that name exists, and removes the
// temporary. On a file system without hard links (FAT, exFAT, some FUSE
// file systems) it renames with RENAME_NOREPLACE instead, and where that is
// not supported either it creates the final name with O_EXCL and copies the
// synced temporary into it: exclusive still, but a crash during that copy
// can leave a partial object under the final name.
func (t *Transport) PutNew(ctx context.Context, name string, r io.Reader, size int64) error {
	final, err := t.path(name)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(final); err == nil {
		return fmt.Errorf("put %s: %w", final, shipper.ErrObjectExists)
	}
	tmp, err := t.writeTemp(ctx, final, r, size)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := commitNew(tmp, final); err != nil {
		return err
	}
	return syncDir(filepath.Dir(final))
}

// Link and rename without replacing, variables for tests that stand in for
// file systems without them.
var (
	link            = os.Link
	renameNoReplace = func(oldpath, newpath string) error {
		return unix.Renameat2(unix.AT_FDCWD, oldpath, unix.AT_FDCWD, newpath, unix.RENAME_NOREPLACE)
	}
)

// commitNew gives the complete temporary tmp the name final unless final
// exists.
func commitNew(tmp, final string) error {
	exists := fmt.Errorf("put %s: %w", final, shipper.ErrObjectExists)
	err := link(tmp, final)
	if err == nil {
		return nil
	}
	if errors.Is(err, fs.ErrExist) {
		return exists
	}
	if !unsupported(err) {
		return classify("link", final, err)
	}
	err = renameNoReplace(tmp, final)
	if err == nil {
		return nil
	}
	if errors.Is(err, fs.ErrExist) {
		return exists
	}
	if !unsupported(err) && !errors.Is(err, syscall.EINVAL) {
		return classify("rename", final, err)
	}
	return copyExclusive(tmp, final)
}

// unsupported reports whether err says the file system lacks an operation.
func unsupported(err error) bool {
	return errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EOPNOTSUPP) ||
		errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.EMLINK)
}

// copyExclusive creates final with O_EXCL and copies tmp into it; on
// failure it removes what it created.
func copyExclusive(tmp, final string) (err error) {
	src, err := os.Open(tmp)
	if err != nil {
		return classify("open", tmp, err)
	}
	defer src.Close()
	dst, err := os.OpenFile(final, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("put %s: %w", final, shipper.ErrObjectExists)
	}
	if err != nil {
		return classify("create", final, err)
	}
	defer func() {
		if err != nil {
			dst.Close()
			os.Remove(final)
		}
	}()
	if _, err := io.Copy(dst, src); err != nil {
		return classify("write", final, err)
	}
	if err := dst.Sync(); err != nil {
		return classify("sync", final, err)
	}
	if err := dst.Close(); err != nil {
		return classify("close", final, err)
	}
	return nil
}

// writeTemp writes r to a new synced temporary file beside final and
// returns its path; on failure it leaves none.
func (t *Transport) writeTemp(ctx context.Context, final string, r io.Reader, size int64) (_ string, err error) {
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", classify("create directory", dir, err)
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", err
	}
	tmp := filepath.Join(dir, "."+filepath.Base(final)+".tmp-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", classify("create", tmp, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// Large writes: segments arrive through a pipe, and 32 KiB copies would
	// cost a system call each.
	var src io.Reader = ctxReader{ctx, r}
	if wt, ok := r.(io.WriterTo); ok {
		// The writer's own buffers, without a copy (a segment's pipe).
		src = ctxWriterTo{ctxReader{ctx, r}, wt}
	}
	buf := copyBuffers.Get().(*[]byte)
	n, err := io.CopyBuffer(&writeback{f: f}, src, *buf)
	copyBuffers.Put(buf)
	if err != nil {
		return "", classify("write", tmp, err)
	}
	if size >= 0 && n != size {
		return "", fmt.Errorf("write %s: got %d bytes, want %d", final, n, size)
	}
	if err := f.Sync(); err != nil {
		return "", classify("sync", tmp, err)
	}
	if err := f.Close(); err != nil {
		return "", classify("close", tmp, err)
	}
	return tmp, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return classify("open", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return classify("sync", dir, err)
	}
	return nil
}

// ctxReader stops a copy when its context is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// ctxWriterTo is ctxReader for a reader that can write itself out.
type ctxWriterTo struct {
	ctxReader
	wt io.WriterTo
}

func (c ctxWriterTo) WriteTo(w io.Writer) (int64, error) {
	return c.wt.WriteTo(ctxWriter{c.ctx, w})
}

// ctxWriter stops a copy when its context is cancelled.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

// writeback writes to f and starts the kernel's writeback of every 8 MiB
// written, so that the sync before the rename finds little left to write
// and the disk works while the pipeline seals the next blocks.
type writeback struct {
	f       *os.File
	off     int64
	started int64
}

func (w *writeback) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.off += int64(n)
	if w.off-w.started >= 8<<20 {
		// Best effort: not every file system has it.
		unix.SyncFileRange(int(w.f.Fd()), w.started, w.off-w.started, unix.SYNC_FILE_RANGE_WRITE)
		w.started = w.off
	}
	return n, err
}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// Open returns a section of the object's file.
func (t *Transport) Open(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	p, err := t.path(name)
	if err != nil {
		return nil, err
	}
	f, fi, err := openObject(p)
	if err != nil {
		return nil, err
	}
	if offset < 0 || offset > fi.Size() {
		f.Close()
		return nil, fmt.Errorf("open %s: offset %d beyond size %d", p, offset, fi.Size())
	}
	if length < 0 {
		length = fi.Size() - offset
	}
	return &sectionCloser{io.NewSectionReader(f, offset, length), f}, nil
}

// openObject opens the object's file for reading. It does not wait: at
// an object's name, a FIFO (whose open would block until a writer came,
// where no signal stops it), a device or a folder is not an object, and is
// reported as one that is not there, as List does not list it.
func openObject(p string) (*os.File, fs.FileInfo, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, classify("open", p, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, classify("stat", p, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, notAnObject("open", p)
	}
	return f, fi, nil
}

// notAnObject is the error for something other than a regular file at an
// object's name.
func notAnObject(op, p string) error {
	return fmt.Errorf("%s %s: %w (%w)", op, p, shipper.ErrNotRegular, shipper.ErrNotFound)
}

type sectionCloser struct {
	*io.SectionReader
	f *os.File
}

func (s *sectionCloser) Close() error { return s.f.Close() }

// Stat returns the size of the object's file.
func (t *Transport) Stat(ctx context.Context, name string) (shipper.ObjectInfo, error) {
	p, err := t.path(name)
	if err != nil {
		return shipper.ObjectInfo{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return shipper.ObjectInfo{}, classify("stat", p, err)
	}
	if !fi.Mode().IsRegular() {
		return shipper.ObjectInfo{}, notAnObject("stat", p)
	}
	return shipper.ObjectInfo{Name: name, Size: fi.Size()}, nil
}

// List walks the root; files and directories whose names start with '.'
// (temporaries) are skipped.
func (t *Transport) List(ctx context.Context, prefix string, fn func(shipper.ObjectInfo) error) error {
	// The root is walked with a trailing slash so that a destination that
	// is a symlink to a folder (/backup -> /mnt/nas/backup) is followed,
	// as every other operation follows it; links below it are not.
	root := t.root + string(filepath.Separator)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == root && errors.Is(err, fs.ErrNotExist) {
				return fs.SkipAll
			}
			return classify("list", p, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == root {
			if !d.IsDir() {
				return classify("list", t.root, syscall.ENOTDIR)
			}
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(t.root, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if d.IsDir() {
			// Skip directories that cannot hold a match.
			if !strings.HasPrefix(name+"/", prefix) && !strings.HasPrefix(prefix, name+"/") {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || !strings.HasPrefix(name, prefix) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // deleted meanwhile
			}
			return classify("stat", p, err)
		}
		return fn(shipper.ObjectInfo{Name: name, Size: fi.Size()})
	})
	return err
}

// Delete removes the object's file and then any directories it leaves empty.
func (t *Transport) Delete(ctx context.Context, name string) error {
	p, err := t.path(name)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return classify("delete", p, err)
	}
	for dir := filepath.Dir(p); dir != t.root && strings.HasPrefix(dir, t.root); dir = filepath.Dir(dir) {
		if os.Remove(dir) != nil {
			break
		}
	}
	return nil
}

// RemoveTemporaries deletes the temporaries of interrupted Puts under dir.
func (t *Transport) RemoveTemporaries(ctx context.Context, dir string) error {
	p, err := t.path(dir)
	if err != nil {
		return err
	}
	return filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // best effort
		}
		if !d.IsDir() && shipper.IsTemporary(d.Name()) {
			os.Remove(q)
		}
		return nil
	})
}
