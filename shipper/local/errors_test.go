package local

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/shipper"
)

// TestErrorsNameThePathOnce checks that an error names the object's path
// once ("open D/x: no such file or directory", not "open D/x: open D/x:
// ..."), and is still classified.
func TestErrorsNameThePathOnce(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	tr, err := New(filepath.Join(root, "dest"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "dest", "ship", "keys"))
	p := filepath.Join(root, "dest", "ship", "segments", "00000004")
	inTheWay := filepath.Join(root, "dest", "ship", "keys") // a file where a folder should be
	for _, tc := range []struct {
		op   string
		err  error
		path string
		want error
	}{
		{"Open", func() error { _, err := tr.Open(ctx, "ship/segments/00000004", 0, -1); return err }(), p, shipper.ErrNotFound},
		{"Stat", func() error { _, err := tr.Stat(ctx, "ship/segments/00000004"); return err }(), p, shipper.ErrNotFound},
		{"Put", tr.Put(ctx, "ship/keys/0000", strings.NewReader("k"), 1), inTheWay, shipper.ErrPermanent},
	} {
		if !errors.Is(tc.err, tc.want) || strings.Count(tc.err.Error(), tc.path) != 1 {
			t.Errorf("%s: %v; want %v naming %s once", tc.op, tc.err, tc.want, tc.path)
		}
	}
}

// TestNotAnObject puts at an object's name what is not an object: a
// folder, a link to a device that never ends, and a FIFO, whose open waits
// for a writer that never comes (and, blocked in open, a receive would not
// stop even on SIGTERM). Open and Stat refuse each at once, as an object
// that is not there: List does not list them either.
func TestNotAnObject(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	tr, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		make func(p string) error
	}{
		{"folder", func(p string) error { return os.Mkdir(p, 0o755) }},
		{"link to /dev/zero", func(p string) error { return os.Symlink("/dev/zero", p) }},
		{"FIFO", func(p string) error { return unix.Mkfifo(p, 0o644) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "ship/" + strings.NewReplacer(" ", "-", "/", "-").Replace(tc.name)
			p := filepath.Join(root, filepath.FromSlash(name))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := tc.make(p); err != nil {
				t.Fatal(err)
			}
			rc, err := tr.Open(ctx, name, 0, -1)
			if err == nil {
				rc.Close()
			}
			_, serr := tr.Stat(ctx, name)
			for op, err := range map[string]error{"Open": err, "Stat": serr} {
				if !errors.Is(err, shipper.ErrNotRegular) || !errors.Is(err, shipper.ErrNotFound) || strings.Count(err.Error(), p) != 1 {
					t.Errorf("%s: %v; want not a regular file, as not found, naming %s once", op, err, p)
				}
			}
		})
	}
}
