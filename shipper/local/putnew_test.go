package local

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"

	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/shipper"
)

// TestPutNewFallbacks runs PutNew as it runs on file systems without hard
// links (FAT, exFAT): link refused, and then also rename without replace.
// Each way, a second PutNew of one name fails with ErrObjectExists, keeps
// the first content and leaves no temporary.
func TestPutNewFallbacks(t *testing.T) {
	refuse := func(err error) func(string, string) error {
		return func(string, string) error { return &os.LinkError{Op: "link", Err: err} }
	}
	tests := []struct {
		name     string
		link     func(string, string) error
		noRename func(string, string) error
	}{
		{"link", os.Link, nil},
		{"rename without replace", refuse(syscall.EPERM), nil},
		{"O_EXCL copy", refuse(syscall.EOPNOTSUPP), refuse(syscall.EINVAL)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			defer func(l, r func(string, string) error) { link, renameNoReplace = l, r }(link, renameNoReplace)
			link = tc.link
			if tc.noRename != nil {
				renameNoReplace = tc.noRename
			}
			root := t.TempDir()
			tr, _ := New(root)
			ctx := context.Background()
			if err := tr.PutNew(ctx, "s/keys/0000", strings.NewReader("first key"), 9); err != nil {
				t.Fatalf("first PutNew: %v", err)
			}
			err := tr.PutNew(ctx, "s/keys/0000", strings.NewReader("second key!"), 11)
			if !errors.Is(err, shipper.ErrObjectExists) || !strings.Contains(err.Error(), "keys/0000") {
				t.Errorf("second PutNew: %v, want ErrObjectExists naming the object", err)
			}
			// The race the pre-check cannot see: the name appears while the
			// temporary is written.
			tmp, err := tr.writeTemp(ctx, filepath.Join(root, "s/keys/0000"), strings.NewReader("racer"), 5)
			if err != nil {
				t.Fatal(err)
			}
			if err := commitNew(tmp, filepath.Join(root, "s/keys/0000")); !errors.Is(err, shipper.ErrObjectExists) {
				t.Errorf("commit over an existing object: %v, want ErrObjectExists", err)
			}
			os.Remove(tmp)
			got, err := os.ReadFile(filepath.Join(root, "s/keys/0000"))
			if err != nil || string(got) != "first key" {
				t.Errorf("object holds %q, %v; want the first content", got, err)
			}
			entries, _ := os.ReadDir(filepath.Join(root, "s/keys"))
			if len(entries) != 1 {
				t.Errorf("keys/ holds %d entries, want only the object (no temporary)", len(entries))
			}
		})
	}
}

// TestPermanentErrors makes the destination unusable in the ways a user
// can (a file where a folder should be, a folder where the object goes, no
// write permission) and checks that every operation fails with
// ErrPermanent, naming the path and what is wrong.
func TestPermanentErrors(t *testing.T) {
	ctx := context.Background()
	put := func(tr *Transport) error { return tr.Put(ctx, "ship/keys/0000", strings.NewReader("k"), 1) }
	putNew := func(tr *Transport) error { return tr.PutNew(ctx, "ship/keys/0000", strings.NewReader("k"), 1) }
	stat := func(tr *Transport) error { _, err := tr.Stat(ctx, "ship/keys/0000"); return err }
	list := func(tr *Transport) error {
		return tr.List(ctx, "", func(shipper.ObjectInfo) error { return nil })
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, root string) string // returns DEST
		ops   map[string]func(*Transport) error
		hint  string
	}{
		{"DEST is a file", func(t *testing.T, root string) string {
			writeFile(t, filepath.Join(root, "dest"))
			return filepath.Join(root, "dest")
		}, map[string]func(*Transport) error{"Put": put, "PutNew": putNew, "Stat": stat, "List": list}, "not a directory"},
		{"a path component is a file", func(t *testing.T, root string) string {
			writeFile(t, filepath.Join(root, "dest", "ship"))
			return filepath.Join(root, "dest")
		}, map[string]func(*Transport) error{"Put": put, "PutNew": putNew, "Stat": stat}, "not a directory"},
		{"an empty directory at the object's name", func(t *testing.T, root string) string {
			if err := os.MkdirAll(filepath.Join(root, "dest", "ship", "keys", "0000"), 0o755); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(root, "dest")
		}, map[string]func(*Transport) error{"Put": put}, "a directory is in the way"},
		{"a directory at the object's name", func(t *testing.T, root string) string {
			writeFile(t, filepath.Join(root, "dest", "ship", "keys", "0000", "x"))
			return filepath.Join(root, "dest")
		}, map[string]func(*Transport) error{"Put": put}, "a directory is in the way"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr, _ := New(tc.setup(t, t.TempDir()))
			for op, fn := range tc.ops {
				err := fn(tr)
				if !errors.Is(err, shipper.ErrPermanent) || !strings.Contains(err.Error(), tc.hint) ||
					!strings.Contains(err.Error(), tr.root) {
					t.Errorf("%s: %v; want ErrPermanent naming the path and saying %q", op, err, tc.hint)
				}
			}
		})
	}
	t.Run("no write permission", func(t *testing.T) {
		dest := filepath.Join(t.TempDir(), "dest")
		if err := os.Mkdir(dest, 0o555); err != nil {
			t.Fatal(err)
		}
		tr, _ := New(dest)
		asUnprivileged(t, func() {
			for op, fn := range map[string]func(*Transport) error{"Put": put, "PutNew": putNew} {
				if err := fn(tr); !errors.Is(err, shipper.ErrPermanent) || !strings.Contains(err.Error(), "permission denied") {
					t.Errorf("%s: %v; want ErrPermanent saying permission denied", op, err)
				}
			}
		})
	})
}

// TestClassify covers the errors a test cannot make happen on demand.
func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want error
		hint string
	}{
		{syscall.EROFS, shipper.ErrPermanent, "read-only"},
		{syscall.ENOSPC, shipper.ErrPermanent, "full"},
		{syscall.EDQUOT, shipper.ErrPermanent, "full"},
		{syscall.EACCES, shipper.ErrPermanent, "permission denied"},
		{syscall.ENOENT, shipper.ErrNotFound, ""},
		{syscall.EIO, nil, ""},
	} {
		err := classify("write", "/d/x", &os.PathError{Op: "write", Path: "/d/x", Err: tc.err})
		for _, s := range []error{shipper.ErrPermanent, shipper.ErrNotFound} {
			if errors.Is(err, s) != (s == tc.want) {
				t.Errorf("%v: %v", tc.err, err)
			}
		}
		if !strings.Contains(err.Error(), tc.hint) || !strings.HasPrefix(err.Error(), "write /d/x: ") {
			t.Errorf("%v: message %q", tc.err, err)
		}
	}
}

func writeFile(t *testing.T, name string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, []byte("in the way"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// asUnprivileged runs fn with the permissions of an ordinary user: as root
// (who may write anywhere) it switches this thread's file system user to
// nobody while fn runs; fn must not start goroutines that touch files.
func asUnprivileged(t *testing.T, fn func()) {
	if os.Geteuid() != 0 {
		fn()
		return
	}
	runtime.LockOSThread()
	// setfsuid returns the previous value, so a second call tells whether
	// the first took.
	unix.SetfsuidRetUid(65534)
	if prev, _ := unix.SetfsuidRetUid(65534); prev != 65534 {
		t.Fatal("setfsuid(nobody) did not take")
	}
	fn()
	unix.SetfsuidRetUid(0)
	if prev, _ := unix.SetfsuidRetUid(0); prev != 0 {
		return // keep the thread locked: it dies with this goroutine
	}
	runtime.UnlockOSThread()
}

// TestFailedPutLeavesNoTemporary fails Put and PutNew in the ways a send
// can (the source fails, ends short, the run is interrupted) and checks
// the object's folder for hidden temporaries, which List never shows.
func TestFailedPutLeavesNoTemporary(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	sources := map[string]func() (context.Context, io.Reader, int64){
		"failing source": func() (context.Context, io.Reader, int64) {
			return context.Background(), io.MultiReader(strings.NewReader("some bytes"), iotest.ErrReader(errors.New("read failed"))), -1
		},
		"short source": func() (context.Context, io.Reader, int64) {
			return context.Background(), strings.NewReader("short"), 100
		},
		"interrupted": func() (context.Context, io.Reader, int64) {
			return cancelled, strings.NewReader("never read"), -1
		},
	}
	tr, _ := New(t.TempDir())
	for name, src := range sources {
		for op, put := range map[string]func(context.Context, string, io.Reader, int64) error{"Put": tr.Put, "PutNew": tr.PutNew} {
			ctx, r, size := src()
			if err := put(ctx, "s/segments/00000001", r, size); err == nil {
				t.Errorf("%s with a %s succeeded", op, name)
			}
			entries, err := os.ReadDir(filepath.Join(tr.root, "s", "segments"))
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				t.Errorf("%s with a %s left %s", op, name, e.Name())
			}
		}
	}
}
