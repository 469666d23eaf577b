package archive

import (
	"fmt"
	"os"
	"syscall"
)

// Stamp is what must not change while a file is read for a shipment: its
// size, modification and change times, and inode. A change of any of them
// means a writer (a VM still running) touched it.
type Stamp struct {
	Size         int64
	MTime, CTime syscall.Timespec
	Ino          uint64
}

// StampOf returns the Stamp of an open file.
func StampOf(f *os.File) (Stamp, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return Stamp{}, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return Stamp{Size: st.Size, MTime: st.Mtim, CTime: st.Ctim, Ino: st.Ino}, nil
}
