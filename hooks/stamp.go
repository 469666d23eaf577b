package hooks

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// ErrChanged is wrapped by the error Stamp.Verify returns for a source that
// changed while it was read.
var ErrChanged = errors.New("source changed while shipping: is the VM still running?")

// Stamp is what must not change while an image ships. Stamps compare
// with ==.
type Stamp struct {
	Size         int64
	MTime, CTime syscall.Timespec
	Ino, Dev     uint64
}

// StampOf returns the stamp of an open file.
func StampOf(f *os.File) (Stamp, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return Stamp{}, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return Stamp{Size: st.Size, MTime: st.Mtim, CTime: st.Ctim, Ino: st.Ino, Dev: uint64(st.Dev)}, nil
}

// Verify returns an error wrapping ErrChanged, saying what changed, if f
// no longer has stamp s. A write of the same size still moves mtime and
// ctime, and so does a writer that restores mtime (ctime then moves).
func (s Stamp) Verify(f *os.File) error {
	now, err := StampOf(f)
	if err != nil {
		return err
	}
	if now == s {
		return nil
	}
	var what string
	switch {
	case now.Ino != s.Ino || now.Dev != s.Dev:
		what = "replaced by another file"
	case now.Size != s.Size:
		what = fmt.Sprintf("size %d, now %d", s.Size, now.Size)
	case now.MTime != s.MTime:
		what = fmt.Sprintf("modified at %s", timeOf(now.MTime))
	default:
		what = fmt.Sprintf("status changed at %s", timeOf(now.CTime))
	}
	return fmt.Errorf("%s: %w (%s)", f.Name(), ErrChanged, what)
}

func timeOf(ts syscall.Timespec) string {
	return time.Unix(ts.Unix()).Format(time.RFC3339Nano)
}
