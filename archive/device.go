package archive

import (
	"errors"
	"io/fs"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A block device (an LVM logical volume, a partition, a loop device) ships
// as a raw image of its size: stat reports it as size 0, the kernel's
// BLKGETSIZE64 gives the real one. It has no holes to seek: every block is
// read, and zero blocks are still not shipped.

// isBlockDevice reports whether mode is a block device's (not a
// character device's).
func isBlockDevice(m fs.FileMode) bool {
	return m&fs.ModeDevice != 0 && m&fs.ModeCharDevice == 0
}

// blockDeviceSize returns the size in bytes of the block device f.
func blockDeviceSize(f *os.File) (int64, error) {
	var size uint64
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size)))
	if errno != 0 {
		return 0, &fs.PathError{Op: "BLKGETSIZE64", Path: f.Name(), Err: errno}
	}
	return int64(min(size, 1<<63-1)), nil
}

// OpenSource opens a source file for reading. A block device is opened
// exclusively (O_EXCL) for as long as it is read: the kernel then refuses
// to mount it and any other exclusive user (mkfs, LVM, a device mapper)
// its claim, writers whose writes nothing else would see, since a
// device's times do not move when it is written. A device that another
// holder claimed already (send --force over a mounted device) is opened
// without the claim.
func OpenSource(src Source) (*os.File, error) {
	if !src.Device {
		return os.Open(src.Path)
	}
	f, err := os.OpenFile(src.Path, os.O_RDONLY|unix.O_EXCL, 0)
	if errors.Is(err, unix.EBUSY) {
		return os.Open(src.Path)
	}
	return f, err
}
