package restore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/shipper/internal/outdir"
)

// tree is the output folder, held open: every file and folder in it is
// reached from its descriptor component by component, never following a
// symbolic link (the folder itself may be one: the user named it).
type tree struct {
	root    *os.File
	path    string              // absolute
	dirs    map[string]*os.File // by relative path, "" the root
	created []string            // relative folders this restore created, parents first
	above   []string            // absolute folders created to reach the root
}

// openTree opens (with create, creating) the output folder and locks it.
func openTree(ctx context.Context, dir string, create bool, lockWait time.Duration) (*tree, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	t := &tree{path: abs, dirs: map[string]*os.File{}}
	if create {
		if err := outdir.Mkdirs(abs, &t.above); err != nil {
			return nil, err
		}
	}
	fd, err := unix.Open(abs, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.removeCreated()
		return nil, fmt.Errorf("output %s: %w", abs, &os.PathError{Op: "open", Path: abs, Err: err})
	}
	t.root = os.NewFile(uintptr(fd), abs)
	t.dirs[""] = t.root
	if err := lockDir(ctx, t.root, abs, lockWait); err != nil {
		t.close()
		t.removeCreated()
		return nil, err
	}
	return t, nil
}

// ErrLocked means another receive holds the output folder.
var ErrLocked = errors.New("locked by another coldship receive")

// lockDir takes an exclusive flock on the folder, waiting up to wait.
func lockDir(ctx context.Context, d *os.File, name string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := unix.Flock(int(d.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("lock %s: %w", name, err)
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("%s: another coldship receive is writing there (wait for it with --lock-wait DURATION): %w", name, ErrLocked)
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(min(100*time.Millisecond, time.Until(deadline))):
		}
	}
}

func (t *tree) abs(rel string) string { return filepath.Join(t.path, filepath.FromSlash(rel)) }

// dir returns the open folder rel (slash-separated, relative), walking to
// it without following links; with create, missing folders are made (mode
// 0755, recorded so that a failed restore removes them).
func (t *tree) dir(rel string, create bool) (*os.File, error) {
	if d := t.dirs[rel]; d != nil {
		return d, nil
	}
	parent, err := t.dir(parentOf(rel), create)
	if err != nil {
		return nil, err
	}
	name := path.Base(rel)
	fd, err := unix.Openat(int(parent.Fd()), name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) && create {
		if err = unix.Mkdirat(int(parent.Fd()), name, 0o755); err == nil || errors.Is(err, unix.EEXIST) {
			if err == nil {
				t.created = append(t.created, rel)
			}
			fd, err = unix.Openat(int(parent.Fd()), name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
	}
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		var st unix.Stat_t
		unix.Fstatat(int(parent.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW)
		return nil, fmt.Errorf("output %s: exists and is not a directory%s", t.abs(rel), linkNote(&st))
	}
	if err != nil {
		return nil, fmt.Errorf("output %s: %w", t.abs(rel), err)
	}
	d := os.NewFile(uintptr(fd), t.abs(rel))
	t.dirs[rel] = d
	return d, nil
}

// forget drops the folder rel, removed, from those the tree holds open.
func (t *tree) forget(rel string) {
	if d := t.dirs[rel]; d != nil {
		d.Close()
		delete(t.dirs, rel)
	}
}

func parentOf(rel string) string {
	if p := path.Dir(rel); p != "." {
		return p
	}
	return ""
}

// lstat returns what is at rel without following a link; ok is false when
// nothing is there (or a parent is missing).
func (t *tree) lstat(rel string) (st unix.Stat_t, ok bool, err error) {
	d, err := t.dir(parentOf(rel), false)
	if errors.Is(err, unix.ENOENT) {
		return st, false, nil
	}
	if err != nil {
		return st, false, err
	}
	err = unix.Fstatat(int(d.Fd()), path.Base(rel), &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("output %s: %w", t.abs(rel), err)
	}
	return st, true, nil
}

// openFile opens name in folder d without following a link: a new file
// (O_EXCL, mode 0600) with create, else an existing regular file (with
// ours, one this user made and nothing else links to).
func openFile(d *os.File, name string, create, ours bool) (*os.File, error) {
	flags := unix.O_RDWR | unix.O_NOFOLLOW | unix.O_CLOEXEC
	if create {
		flags |= unix.O_CREAT | unix.O_EXCL
	}
	fd, err := unix.Openat(int(d.Fd()), name, flags, 0o600)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: filepath.Join(d.Name(), name), Err: err}
	}
	f := os.NewFile(uintptr(fd), filepath.Join(d.Name(), name))
	if !create {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || ours && (st.Nlink != 1 || int(st.Uid) != os.Geteuid()) {
			f.Close()
			return nil, fmt.Errorf("%s: not a file this receive made", f.Name())
		}
	}
	return f, nil
}

// createFile makes a new file in d, first removing whatever a link or a
// stale file left at that name (never following it).
func createFile(d *os.File, name string) (*os.File, error) {
	f, err := openFile(d, name, true, true)
	if errors.Is(err, unix.EEXIST) {
		if err := unix.Unlinkat(int(d.Fd()), name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("remove %s: %w", filepath.Join(d.Name(), name), err)
		}
		f, err = openFile(d, name, true, true)
	}
	if err != nil {
		return nil, fmt.Errorf("create %w", err)
	}
	return f, nil
}

func remove(d *os.File, name string) {
	unix.Unlinkat(int(d.Fd()), name, 0)
}

// tempSuffix returns the random part of a temporary name (replaced in tests).
var tempSuffix = func() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

const tempInfix = ".coldship-"

// tempName returns the temporary name of a file whose base name is base.
func tempName(base, suffix string) string { return "." + tempStem(base) + tempInfix + suffix }

// asideName is where an update keeps a file while it rewrites it.
func asideName(base string) string { return "." + tempStem(base) + tempInfix + "update" }

// Names longer than maxStem bytes are shortened in temporary names, so
// that "." + stem + tempInfix + 12 hex digits fits in NAME_MAX (255).
const (
	maxStem  = 255 - 1 - len(tempInfix) - 12
	keptStem = 200
)

// tempStem is base as it appears in its temporary names: itself, or, for
// a name too long to take the prefix and suffix, its first bytes and a
// digest of all of it (the same base always gives the same stem).
func tempStem(base string) string {
	if len(base) <= maxStem {
		return base
	}
	sum := sha256.Sum256([]byte(base))
	return base[:keptStem] + "~" + hex.EncodeToString(sum[:8])
}

// isTempOf reports whether name is a temporary name of base (any suffix
// a receive of any version made: 12 hex digits or "update").
func isTempOf(name, base string) bool {
	rest, ok := strings.CutPrefix(name, "."+tempStem(base)+tempInfix)
	if !ok {
		return false
	}
	if rest == "update" {
		return true
	}
	if len(rest) != 12 {
		return false
	}
	_, err := hex.DecodeString(rest)
	return err == nil
}

// writeAtomic replaces name in d with b: a temporary file, synced, renamed,
// and the folder synced.
func writeAtomic(d *os.File, name string, b []byte) error {
	tmp := "." + name + ".tmp-" + tempSuffix()
	f, err := createFile(d, tmp)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(int(d.Fd()), tmp, int(d.Fd()), name)
	}
	if err != nil {
		remove(d, tmp)
		return fmt.Errorf("write %s: %w", filepath.Join(d.Name(), name), err)
	}
	return d.Sync()
}

// readSmall reads a small file of ours in d (at most limit bytes), not
// following a link; ok is false when it does not exist.
func readSmall(d *os.File, name string, limit int64) (b []byte, ok bool, err error) {
	fd, err := unix.Openat(int(d.Fd()), name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", filepath.Join(d.Name(), name), err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	b, err = io.ReadAll(io.LimitReader(f, limit+1))
	if err == nil && int64(len(b)) > limit {
		err = errors.New("too large")
	}
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", filepath.Join(d.Name(), name), err)
	}
	return b, true, nil
}

// rename moves from to to within folder d; without replace it refuses to
// replace anything at to (where the file system can tell).
func rename(d *os.File, from, to string, replace bool) error {
	fd := int(d.Fd())
	if !replace {
		err := unix.Renameat2(fd, from, fd, to, unix.RENAME_NOREPLACE)
		if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
			return err
		}
	}
	return unix.Renameat(fd, from, fd, to)
}

// removeCreated removes the folders this restore created, deepest first,
// where they are empty.
func (t *tree) removeCreated() {
	for i := len(t.created) - 1; i >= 0; i-- {
		rel := t.created[i]
		if d := t.dirs[rel]; d != nil {
			d.Close()
			delete(t.dirs, rel)
		}
		if p := t.dirs[parentOf(rel)]; p != nil {
			unix.Unlinkat(int(p.Fd()), path.Base(rel), unix.AT_REMOVEDIR)
		}
	}
	t.created = nil
	if t.root != nil && len(t.above) > 0 {
		// The root itself first, once nothing is open in it.
		t.close()
	}
	for i := len(t.above) - 1; i >= 0; i-- {
		os.Remove(t.above[i]) // only if empty
	}
	t.above = nil
}

// close releases the lock and every folder.
func (t *tree) close() {
	for rel, d := range t.dirs {
		if rel != "" {
			d.Close()
		}
	}
	t.dirs = map[string]*os.File{}
	if t.root != nil {
		t.root.Close() // releases the flock
		t.root = nil
	}
}

// eachEntry calls fn with the name of every entry of folder rel, if it
// exists (it is not created).
func (t *tree) eachEntry(rel string, fn func(name string)) error {
	d, err := t.dir(rel, false)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	// A descriptor of its own: reading a folder moves its offset.
	fd, err := unix.Openat(int(d.Fd()), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("list %s: %w", t.abs(rel), err)
	}
	l := os.NewFile(uintptr(fd), t.abs(rel))
	defer l.Close()
	names, err := l.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("list %s: %w", t.abs(rel), err)
	}
	for _, n := range names {
		fn(n)
	}
	return nil
}

// removeEntry removes the file name in folder rel (not a folder).
func (t *tree) removeEntry(rel, name string) {
	if d, err := t.dir(rel, false); err == nil {
		remove(d, name)
	}
}
