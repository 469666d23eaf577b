package sftp_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/sftp"
	"github.com/coldship/coldship/shipper/sftp/sftptest"
)

// TestPermanentErrors puts objects where the server cannot store them,
// against a real sshd: each failure must be permanent (so the retries
// stop at once), name the object and say why, and leave nothing behind.
func TestPermanentErrors(t *testing.T) {
	isolate(t)
	ctx := context.Background()
	data := randomBytes(1 << 20)
	for _, tc := range []struct {
		name  string
		opts  []sftptest.Option
		setup func(t *testing.T, srv *sftptest.Server) string // returns the root
		why   string
	}{
		{"read-only file system", []sftptest.Option{sftptest.Mount("ro", "ro")},
			func(t *testing.T, srv *sftptest.Server) string { return filepath.Join(srv.Root, "ro", "dest") },
			"read-only"},
		{"full disk", []sftptest.Option{sftptest.Mount("small", "size=256k")},
			func(t *testing.T, srv *sftptest.Server) string { return filepath.Join(srv.Root, "small") },
			"full"},
		{"a file where a folder must be", nil,
			func(t *testing.T, srv *sftptest.Server) string {
				writeFile(t, filepath.Join(srv.Root, "file"), "x")
				return filepath.Join(srv.Root, "file", "dest")
			},
			"not a directory"},
		{"a folder where the object must be", nil,
			func(t *testing.T, srv *sftptest.Server) string {
				os.MkdirAll(filepath.Join(srv.Root, "d", "s", "obj"), 0o755)
				return filepath.Join(srv.Root, "d")
			},
			"is a directory"},
		{"directory mode 0555", []sftptest.Option{sftptest.NoOverride()},
			func(t *testing.T, srv *sftptest.Server) string {
				dir := filepath.Join(srv.Root, "locked")
				os.Mkdir(dir, 0o555)
				os.Chmod(dir, 0o555)
				t.Cleanup(func() { os.Chmod(dir, 0o755) })
				return dir
			},
			"permission denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := sftptest.StartSSHD(t, tc.opts...)
			cfg := config(srv, "", 1)
			cfg.Path = tc.setup(t, srv)
			tr := dial(t, cfg)
			for _, put := range []struct {
				name string
				fn   func() error
			}{
				{"Put", func() error { return tr.Put(ctx, "s/obj", bytes.NewReader(data), -1) }},
				{"PutNew", func() error { return tr.PutNew(ctx, "s/obj", bytes.NewReader(data), int64(len(data))) }},
			} {
				err := put.fn()
				if !errors.Is(err, shipper.ErrPermanent) {
					t.Fatalf("%s: err = %v, want a permanent error", put.name, err)
				}
				if errors.Is(err, shipper.ErrObjectExists) {
					t.Errorf("%s: err = %v also says the object exists", put.name, err)
				}
				for _, want := range []string{"s/obj", tc.why} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("%s: error %q does not say %q", put.name, err, want)
					}
				}
				t.Logf("%s: %v", put.name, err)
			}
			if tc.name == "a file where a folder must be" {
				err := tr.List(ctx, "", func(shipper.ObjectInfo) error { return nil })
				if !errors.Is(err, shipper.ErrPermanent) || !strings.Contains(err.Error(), "not a directory") {
					t.Errorf("List of a root under a file: err = %v, want a permanent error saying so", err)
				}
			}
			if tc.name == "full disk" {
				// The temporaries went: the file system has room again.
				if err := tr.Put(ctx, "s/small", bytes.NewReader(data[:1000]), 1000); err != nil {
					t.Errorf("Put of 1000 bytes after the failures: %v (temporaries left behind?)", err)
				}
				if got := listNames(t, tr); len(got) != 1 || got[0] != "s/small" {
					t.Errorf("List = %v, want only s/small", got)
				}
			}
		})
	}
}

// TestPutNew checks, against a real sshd, that PutNew never replaces an
// object: the first one stays, byte for byte, and no temporary is left.
func TestPutNew(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t)
	ctx := context.Background()
	tr := dial(t, config(srv, "exclusive", 2))
	first := randomBytes(300_000)
	if err := tr.PutNew(ctx, "id/keys/0000", bytes.NewReader(first), -1); err != nil {
		t.Fatal(err)
	}
	err := tr.PutNew(ctx, "id/keys/0000", strings.NewReader("second"), 6)
	if !errors.Is(err, shipper.ErrObjectExists) || !strings.Contains(err.Error(), "id/keys/0000") {
		t.Fatalf("second PutNew: err = %v, want ErrObjectExists naming the object", err)
	}
	dir := filepath.Join(srv.Root, "exclusive", "id", "keys")
	if got, err := os.ReadFile(filepath.Join(dir, "0000")); err != nil || !bytes.Equal(got, first) {
		t.Errorf("the server holds %d bytes (%v), want the first PutNew's %d", len(got), err, len(first))
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("the server's folder holds %v, want only 0000", names)
	}
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func listNames(t *testing.T, tr *sftp.Transport) []string {
	t.Helper()
	var names []string
	if err := tr.List(context.Background(), "", func(oi shipper.ObjectInfo) error {
		names = append(names, oi.Name)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return names
}
