package archive

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// Stamp is what must not change while a file is read for a shipment: its
// size, modification and change times, and inode. A change of any of them
// means a writer (a VM still running) touched it.
//
// For a block device the size is the device's (BLKGETSIZE64) and the
// identity is its device number, both as the open file sees them and as its
// path resolves now: a device that is resized (lvextend, losetup -c), or a
// path that comes to name another device (an LV removed and made anew),
// changes the stamp. Writes to a block device do not: the times of a
// device node do not move when the device is written. Writers are kept
// out beforehand instead (hooks.CheckNotInUse: exclusive-open probe,
// locks, the open-for-write scan), and a block that changes between its
// read for the digest and its read for sealing is still caught.
type Stamp struct {
	Size         int64
	MTime, CTime syscall.Timespec
	Ino          uint64
	Rdev         uint64 // block devices: the open device
	PathRdev     uint64 // block devices: the device its path names now (0 if none)
}

// StampOf returns the Stamp of an open file.
func StampOf(f *os.File) (Stamp, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return Stamp{}, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	s := Stamp{Size: st.Size, MTime: st.Mtim, CTime: st.Ctim, Ino: st.Ino}
	if st.Mode&syscall.S_IFMT == syscall.S_IFBLK {
		size, err := blockDeviceSize(f)
		if err != nil {
			return Stamp{}, fmt.Errorf("stat %s: %w", f.Name(), err)
		}
		s.Size, s.Rdev = size, st.Rdev
		var now syscall.Stat_t
		if err := syscall.Stat(f.Name(), &now); err == nil && now.Mode&syscall.S_IFMT == syscall.S_IFBLK {
			s.PathRdev = now.Rdev
		}
	}
	return s, nil
}

// Listed reports whether s, the stamp of a file as it was opened, is of
// the file that fi described when the sources were listed (and image
// headers read): the same inode, size, modification and change times. A
// file changed in between (an overlay rebased onto another backing file
// after its header was read, say) would ship with a description that no
// longer holds. Block devices are not compared (a device node's times are
// not its contents').
func (s Stamp) Listed(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || s.Rdev != 0 || st.Mode&syscall.S_IFMT == syscall.S_IFBLK {
		return true
	}
	return st.Ino == s.Ino && st.Size == s.Size && st.Mtim == s.MTime && st.Ctim == s.CTime
}
