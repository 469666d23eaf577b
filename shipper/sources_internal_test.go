package shipper

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/internal/vmtest"
)

// TestSourceDeviceHeldWhileShipped: a block device being shipped is held
// exclusively, so that a mount (or mkfs, or LVM) cannot claim and write it
// in the middle of the send: the stamp cannot see such writes (a device's
// times do not move). A device that another holder already claimed (send
// --force over a mounted one) is still read.
func TestSourceDeviceHeldWhileShipped(t *testing.T) {
	dev, _ := vmtest.Loop(t, 4<<20)
	srcs, err := archive.CollectSources([]string{dev})
	if err != nil {
		t.Fatal(err)
	}
	files, err := openSources(srcs)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
	}
	closeSources(files)
	if !errors.Is(err, unix.EBUSY) {
		t.Fatalf("an exclusive open (a mount) of %s while it is shipped: %v, want EBUSY", dev, err)
	}

	// Claimed by someone else first: shipped all the same (--force).
	held, err := os.OpenFile(dev, os.O_RDONLY|unix.O_EXCL, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	files, err = openSources(srcs)
	if err != nil {
		t.Fatalf("a device claimed by another holder: %v", err)
	}
	closeSources(files)
}
