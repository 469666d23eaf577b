package hooks

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// newImage makes a small image file the way a VM would have one.
func newImage(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func wantInUse(t *testing.T, path string, pid int, reason string) {
	t.Helper()
	err := CheckNotInUse(path)
	var iu *InUseError
	if !errors.As(err, &iu) {
		t.Fatalf("CheckNotInUse: %v, want *InUseError", err)
	}
	if iu.Path != path || iu.PID != pid || !strings.Contains(iu.Reason, reason) || iu.Command == "" {
		t.Errorf("InUseError %+v, want pid %d, reason with %q", iu, pid, reason)
	}
	msg := err.Error()
	t.Log(msg)
	for _, s := range []string{"refusing to read " + path, fmt.Sprintf("(pid %d, %s)", pid, iu.Command), "is the VM running?", "--force"} {
		if !strings.Contains(msg, s) {
			t.Errorf("message %q lacks %q", msg, s)
		}
	}
}

func TestCheckNotInUseLocked(t *testing.T) {
	tests := []struct {
		mode, reason string
	}{
		// QEMU's own pattern: read-only fd, shared locks only, so only the
		// lock gives it away.
		{"qemu", "read lock on bytes 100-101"},
		// Whichever conflicting lock the kernel reports first.
		{"write", "lock on bytes"},
		{"posix", "read lock on byte 100"},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			path := newImage(t)
			pid := holdImageInChild(t, tt.mode, path)
			wantInUse(t, path, pid, tt.reason)
		})
	}
}

func TestCheckNotInUseWriter(t *testing.T) {
	path := newImage(t)
	pid := startShell(t, `exec 3<>"$1"; echo ready; exec sleep 1000`, path)
	wantInUse(t, path, pid, "open for writing")

	// Through another name of the same file, too.
	link := filepath.Join(t.TempDir(), "link.img")
	if err := os.Link(path, link); err != nil {
		t.Fatal(err)
	}
	wantInUse(t, link, pid, "open for writing")
}

func TestCheckNotInUseFree(t *testing.T) {
	path := newImage(t)
	if err := CheckNotInUse(path); err != nil {
		t.Fatalf("unused image: %v", err)
	}

	// Readers without locks are harmless.
	holdImageInChild(t, "rdonly", path)
	startShell(t, `exec 3<"$1"; echo ready; exec sleep 1000`, path)
	if err := CheckNotInUse(path); err != nil {
		t.Fatalf("image open read-only elsewhere: %v", err)
	}

	// So is this process: it may hold the image open for writing, or
	// locked through another file description.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Start: 100, Len: 2}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		t.Fatal(err)
	}
	if err := CheckNotInUse(path); err != nil {
		t.Fatalf("image locked by this process: %v", err)
	}

	if err := CheckNotInUse(filepath.Join(t.TempDir(), "missing.img")); err == nil || errors.As(err, new(*InUseError)) {
		t.Errorf("missing image: %v, want an open error", err)
	}
}

func TestParseFdinfo(t *testing.T) {
	tests := []struct {
		name            string
		info            string
		writable, locks bool
	}{
		{"read-only", "pos:\t0\nflags:\t0100000\nmnt_id:\t29\nino:\t1234\n", false, false},
		{"write-only", "pos:\t0\nflags:\t02100001\nmnt_id:\t29\n", true, false},
		{"read-write with OFD locks", "pos:\t0\nflags:\t0100002\nmnt_id:\t29\nlock:\t1: OFDLCK ADVISORY  READ -1 08:01:1234 100 101\nlock:\t2: OFDLCK ADVISORY  WRITE -1 08:01:1234 201 201\n", true, true},
		{"POSIX lock", "flags:\t0100000\nlock:\t1: POSIX  ADVISORY  READ 4321 00:2f:99 100 100\n", false, true},
		{"flock only", "flags:\t0100000\nlock:\t1: FLOCK  ADVISORY  WRITE 4321 00:2f:99 0 EOF\n", false, false},
		{"garbage", "flags:\tzz\nnonsense\n", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, l := parseFdinfo([]byte(tt.info))
			if w != tt.writable || l != tt.locks {
				t.Errorf("writable %v, locks %v; want %v, %v", w, l, tt.writable, tt.locks)
			}
		})
	}
}

func TestInUseErrorUnknownHolder(t *testing.T) {
	err := &InUseError{Path: "/img/a.img", Reason: "read lock on byte 100"}
	want := "refusing to read /img/a.img: read lock on byte 100: is the VM running? use --force to override"
	if err.Error() != want {
		t.Errorf("got %q\nwant %q", err, want)
	}
}
