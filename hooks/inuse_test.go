package hooks

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/internal/vmtest"
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
	advice := "is the VM running?"
	if iu.Advice != "" {
		advice = iu.Advice
	}
	for _, s := range []string{"refusing to read " + path, fmt.Sprintf("(pid %d, %s)", pid, iu.Command), advice, "--force"} {
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

// TestCheckNotInUseFlocked: an image under flock(2) (flock(1) in a
// script, a tool that marks what it writes that way) is locked too.
// CheckNotWritten refuses only an exclusive one: a shared flock is a
// reader's.
func TestCheckNotInUseFlocked(t *testing.T) {
	if _, err := exec.LookPath("flock"); err != nil {
		t.Skip("no flock(1):", err)
	}
	for _, tt := range []struct {
		opt, reason   string
		refusedAsBase bool
	}{
		{"-x", "flock(2) write lock", true},
		{"-s", "flock(2) read lock", false},
	} {
		t.Run(tt.opt, func(t *testing.T) {
			path := newImage(t)
			pid := startShell(t, `exec 3<"$1"; flock `+tt.opt+` 3; echo ready; exec sleep 1000`, path)
			wantInUse(t, path, pid, tt.reason)
			err := CheckNotWritten(path)
			if refused := errors.Is(err, ErrBusy); refused != tt.refusedAsBase {
				t.Errorf("CheckNotWritten: %v, want refused %v", err, tt.refusedAsBase)
			}
		})
	}
	// One of our own is no reason to refuse.
	path := newImage(t)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if err := CheckNotInUse(path); err != nil {
		t.Errorf("image flocked by this process: %v", err)
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
		flock           string
	}{
		{"read-only", "pos:\t0\nflags:\t0100000\nmnt_id:\t29\nino:\t1234\n", false, false, ""},
		{"write-only", "pos:\t0\nflags:\t02100001\nmnt_id:\t29\n", true, false, ""},
		{"read-write with OFD locks", "pos:\t0\nflags:\t0100002\nmnt_id:\t29\nlock:\t1: OFDLCK ADVISORY  READ -1 08:01:1234 100 101\nlock:\t2: OFDLCK ADVISORY  WRITE -1 08:01:1234 201 201\n", true, true, ""},
		{"POSIX lock", "flags:\t0100000\nlock:\t1: POSIX  ADVISORY  READ 4321 00:2f:99 100 100\n", false, true, ""},
		{"flock only", "flags:\t0100000\nlock:\t1: FLOCK  ADVISORY  WRITE 4321 00:2f:99 0 EOF\n", false, false, "write"},
		{"shared flock", "flags:\t0100000\nlock:\t1: FLOCK  ADVISORY  READ 4321 00:2f:99 0 EOF\n", false, false, "read"},
		{"garbage", "flags:\tzz\nnonsense\nlock:\tFLOCK\n", false, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, l, fl := parseFdinfo([]byte(tt.info))
			if w != tt.writable || l != tt.locks || fl != tt.flock {
				t.Errorf("writable %v, locks %v, flock %q; want %v, %v, %q", w, l, fl, tt.writable, tt.locks, tt.flock)
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

func TestCheckNotWritten(t *testing.T) {
	path := newImage(t)
	if err := CheckNotWritten(path); err != nil {
		t.Fatalf("unused image: %v", err)
	}
	// Another VM reads it as its backing file: fine to ship, though
	// CheckNotInUse refuses it.
	pid := holdImageInChild(t, "backing", path)
	if err := CheckNotWritten(path); err != nil {
		t.Errorf("backing file shared with a running VM: %v", err)
	}
	wantInUse(t, path, pid, "read lock on byte 100")

	// A VM that holds the write permission (byte 101), or a writer.
	for _, mode := range []string{"qemu", "write"} {
		p := newImage(t)
		holdImageInChild(t, mode, p)
		err := CheckNotWritten(p)
		var iu *InUseError
		if !errors.As(err, &iu) || !errors.Is(err, ErrBusy) || !strings.Contains(iu.Reason, "lock on byte") {
			t.Errorf("%s: %v, want a refusal for the lock", mode, err)
		}
	}
	p := newImage(t)
	pid = startShell(t, `exec 3<>"$1"; echo ready; exec sleep 1000`, p)
	if err := CheckNotWritten(p); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("open for writing (pid %d", pid)) {
		t.Errorf("writer: %v", err)
	}
}

func TestCheckNotInUseBlockDevice(t *testing.T) {
	dev, _ := vmtest.Loop(t, 16<<20)
	if err := CheckNotInUse(dev); err != nil {
		t.Fatalf("unused device: %v", err)
	}
	if err := CheckDeviceFree(dev); err != nil {
		t.Fatalf("CheckDeviceFree of an unused device: %v", err)
	}

	// QEMU opens a block device read-write, without O_EXCL.
	pid := startShell(t, `exec 3<>"$1"; echo ready; exec sleep 1000`, dev)
	wantInUse(t, dev, pid, "open for writing")
	wantDeviceBusy(t, dev, pid, "open for writing")
}

func TestCheckDeviceBusy(t *testing.T) {
	dev, _ := vmtest.Loop(t, 16<<20)
	// A reader is enough to keep a restore off the device.
	pid := holdImageInChild(t, "rdonly", dev)
	if err := CheckNotInUse(dev); err != nil {
		t.Errorf("CheckNotInUse with a reader: %v", err)
	}
	wantDeviceBusy(t, dev, pid, "open")

	// Claimed exclusively.
	dev2, _ := vmtest.Loop(t, 16<<20)
	pid = holdImageInChild(t, "excl", dev2)
	wantInUse(t, dev2, pid, "held exclusively by another coldship, which is shipping it")
	if err := CheckNotInUse(dev2); err == nil || !strings.Contains(err.Error(), ": wait for that send to end") || strings.Contains(err.Error(), "VM running") {
		t.Errorf("CheckNotInUse of a device another coldship ships: %v, want advice to wait for it", err)
	}
	// A base shared by linked clones may be shipped by two sends at once.
	if err := CheckNotWritten(dev2); err != nil {
		t.Errorf("CheckNotWritten of a device another coldship ships: %v", err)
	}
	wantDeviceBusy(t, dev2, 0, "held exclusively")

	if err := CheckDeviceFree(newImage(t)); err == nil || !strings.Contains(err.Error(), "not a block device") || errors.Is(err, ErrBusy) {
		t.Errorf("CheckDeviceFree of a file: %v", err)
	}
}

func TestCheckDeviceMounted(t *testing.T) {
	dev, _ := vmtest.Loop(t, 16<<20)
	vmtest.Run(t, "mkfs.ext4", "-q", dev)
	mnt := t.TempDir()
	vmtest.Run(t, "mount", dev, mnt)
	t.Cleanup(func() { vmtest.Run(t, "umount", mnt) })
	err := CheckNotInUse(dev)
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "mounted on "+mnt) {
		t.Errorf("CheckNotInUse of a mounted device: %v", err)
	}
	wantDeviceBusy(t, dev, 0, "mounted on "+mnt)
}

func wantDeviceBusy(t *testing.T, dev string, pid int, reason string) {
	t.Helper()
	err := CheckDeviceFree(dev)
	var iu *InUseError
	if !errors.As(err, &iu) || !errors.Is(err, ErrBusy) {
		t.Fatalf("CheckDeviceFree: %v, want *InUseError", err)
	}
	if iu.PID != pid || !strings.Contains(iu.Reason, reason) || !iu.Write || !strings.Contains(err.Error(), "refusing to write "+dev) {
		t.Errorf("CheckDeviceFree: %v (%+v), want pid %d, reason %q", err, iu, pid, reason)
	}
}
