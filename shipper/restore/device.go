package restore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/hooks"
)

// openDevices opens the block devices that files are restored onto
// (Options.Devices). A device that any other process has open, locks or
// holds (hooks.CheckDeviceFree: a running VM's QEMU opens its disks
// without O_EXCL) is refused as busy; then it is opened with O_EXCL,
// which the kernel refuses while it is mounted or held by another
// exclusive user (a device mapper or an LVM volume in use, a swap area);
// its size must hold the file. It is written in place: there is no temporary file and no rename,
// so a restore that fails leaves the device unusable.
func (w *Writer) openDevices() error {
	for name, dev := range w.opts.Devices {
		f := w.files[indexOf(w.sh.Files, name)]
		if f == nil {
			return fmt.Errorf("--out-device %s: the file is not restored (--include)", name)
		}
		// Nothing but a block device is opened: opening a character
		// device has effects (a watchdog starts, a serial line waits).
		if st, err := os.Stat(dev); err != nil {
			return fmt.Errorf("--out-device %s=%s: %w", name, dev, err)
		} else if st.Mode()&os.ModeDevice == 0 || st.Mode()&os.ModeCharDevice != 0 {
			return fmt.Errorf("--out-device %s=%s: not a block device", name, dev)
		}
		if err := hooks.CheckDeviceFree(dev); errors.Is(err, hooks.ErrBusy) {
			return fmt.Errorf("--out-device %s=%s: %w", name, dev, err)
		}
		fd, err := unix.Open(dev, unix.O_RDWR|unix.O_EXCL|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("--out-device %s=%s: the device is mounted or in use", name, dev)
		}
		if err != nil {
			return fmt.Errorf("--out-device %s=%s: %w", name, dev, err)
		}
		fh := os.NewFile(uintptr(fd), dev)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
			fh.Close()
			return fmt.Errorf("--out-device %s=%s: not a block device", name, dev)
		}
		// A read-only device opens for writing all the same; its
		// writes fail, once blocks are being fetched.
		if ro, err := unix.IoctlGetInt(fd, unix.BLKROGET); err == nil && ro != 0 {
			fh.Close()
			return fmt.Errorf("--out-device %s=%s: the device is read-only", name, dev)
		}
		size, err := unix.Seek(fd, 0, 2) // a block device's end is its size
		if err != nil {
			fh.Close()
			return fmt.Errorf("--out-device %s=%s: size: %w", name, dev, err)
		}
		if size < f.meta.Size {
			fh.Close()
			return fmt.Errorf("--out-device %s=%s: the device holds %d bytes, the file %d", name, dev, size, f.meta.Size)
		}
		f.fh, f.device, f.final, f.mayHold = fh, true, dev, true
		w.opts.Log("%s is written in place onto %s: if the receive fails, the device holds a partial image", name, dev)
	}
	return nil
}

// checkNoDevices refuses to update (receive --into) a restore that wrote
// files onto block devices: the update would restore them into the folder
// as new files and leave the devices as they were.
func (m *marker) checkNoDevices(dir string) error {
	names := make([]string, 0, len(m.Devices))
	for name := range m.Devices {
		names = append(names, name)
	}
	if len(names) == 0 {
		return nil
	}
	sort.Strings(names)
	return fmt.Errorf("%s: %s was restored onto %s (--out-device), which receive --into cannot update: receive the shipment in full again, with --out and --out-device", dir, names[0], m.Devices[names[0]])
}

// rereadPartitions has the kernel read the partition table of a disk
// just restored (BLKRRPART): a whole-disk image brings its own, and the
// disk's old partitions, left in place, would have a mount or an fsck
// read and write the restored disk at the old offsets. A device that
// holds no partitions (a partition, an LVM volume, a loop device without
// partscan) answers EINVAL. Another failure (a partition opened since the
// device was checked, no CAP_SYS_ADMIN) is said where the disk has
// partitions, not fatal: the device holds the image.
func (w *Writer) rereadPartitions(f *file) {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.fh.Fd(), unix.BLKRRPART, 0)
	if errno != 0 && errno != unix.EINVAL && hasPartitions(f.fh) {
		w.opts.Log("warning: %s holds %s, but the kernel could not re-read its partition table (%v): its partitions may still be the old ones; run blockdev --rereadpt %s before using them", f.final, f.meta.Path, errno, f.final)
	}
}

// hasPartitions reports whether the kernel knows partitions of the disk
// dev (sysfs).
func hasPartitions(dev *os.File) bool {
	var st unix.Stat_t
	if unix.Fstat(int(dev.Fd()), &st) != nil {
		return false
	}
	parts, _ := filepath.Glob(fmt.Sprintf("/sys/dev/block/%d:%d/*/partition", unix.Major(st.Rdev), unix.Minor(st.Rdev)))
	return len(parts) > 0
}

// zeroRange makes [off, off+n) of f read as zeros, deallocating where it
// can: a hole punched in a file, a range discarded or zeroed on a device
// (FALLOC_FL_PUNCH_HOLE zeroes block devices too; BLKZEROOUT where it
// does not), and zeros written where nothing else works.
func zeroRange(f *os.File, off, n int64, device bool) error {
	if n <= 0 {
		return nil
	}
	fd := int(f.Fd())
	err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err == nil {
		return nil
	}
	if device {
		r := [2]uint64{uint64(off), uint64(n)}
		if err = ioctlRange(fd, unix.BLKZEROOUT, &r); err == nil {
			return nil
		}
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTTY) {
		return fmt.Errorf("zero %s at %d: %w", f.Name(), off, err)
	}
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zero)))
		if _, err := f.WriteAt(zero[:k], off); err != nil {
			return fmt.Errorf("zero %s at %d: %w", f.Name(), off, err)
		}
		off, n = off+k, n-k
	}
	return nil
}
