package hooks

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// CheckDeviceFree refuses a block device that a restore must not write:
// not a block device, mounted or claimed (it cannot be opened with
// O_EXCL: a mounted file system, device-mapper, md, an O_EXCL opener), or
// open by any other process, through it, its whole disk or one of its
// partitions, even read-only. A busy device is an *InUseError (ErrBusy).
// Processes whose /proc entries cannot be read (other users' as non-root,
// other PID namespaces) go unseen; the O_EXCL probe does not depend on
// them.
func CheckDeviceFree(path string) error {
	// Not opened unless it is one: opening a character device can start
	// a watchdog or wait for a serial line's carrier.
	if fi, err := os.Stat(path); err == nil && !isBlockDevice(fi) {
		return fmt.Errorf("check device %s: not a block device", path)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("check device %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("check device %s: %w", path, err)
	}
	if !isBlockDevice(fi) {
		return fmt.Errorf("check device %s: not a block device", path)
	}
	if reason, busy := probeExclusive(path, fi); busy {
		return &InUseError{Path: path, Reason: reason, Write: true}
	}
	users := procUsers(sameDevice(fi))
	if u, ok := find(users, func(u procUser) bool { return !u.self }); ok {
		reason := "open"
		if u.writable {
			reason = "open for writing"
		}
		return &InUseError{Path: path, Reason: reason + u.through(path), PID: u.pid, Command: u.command(), Write: true}
	}
	if lk, ok := probeLock(f, unix.F_OFD_GETLK, 0, 0); ok {
		return &InUseError{Path: path, Reason: describeLock(lk), Write: true}
	}
	return nil
}

func isBlockDevice(fi os.FileInfo) bool {
	m := fi.Mode()
	return m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0
}

func rdevOf(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Rdev
	}
	return 0
}

// sameDevice returns what procUsers matches for the file fi: fi itself,
// and for a block device any node of the device, of its whole disk or of
// one of its partitions (a writer of sdb1 writes sdb).
func sameDevice(fi os.FileInfo) func(os.FileInfo) bool {
	if !isBlockDevice(fi) {
		return func(st os.FileInfo) bool { return os.SameFile(st, fi) }
	}
	devs := relatedDevices(rdevOf(fi))
	return func(st os.FileInfo) bool { return isBlockDevice(st) && devs[rdevOf(st)] }
}

// relatedDevices returns dev, its partitions and, for a partition, its
// whole disk, from /sys/dev/block.
func relatedDevices(dev uint64) map[uint64]bool {
	devs := map[uint64]bool{dev: true}
	dir, err := filepath.EvalSymlinks(sysBlock(dev))
	if err != nil {
		return devs
	}
	if _, err := os.Stat(filepath.Join(dir, "partition")); err == nil {
		if d, ok := readDevNumber(filepath.Join(filepath.Dir(dir), "dev")); ok {
			devs[d] = true
		}
		return devs
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		sub := filepath.Join(dir, e.Name())
		if _, err := os.Stat(filepath.Join(sub, "partition")); err != nil {
			continue
		}
		if d, ok := readDevNumber(filepath.Join(sub, "dev")); ok {
			devs[d] = true
		}
	}
	return devs
}

func sysBlock(dev uint64) string {
	return fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(dev), unix.Minor(dev))
}

// readDevNumber reads a sysfs "dev" file: "MAJOR:MINOR".
func readDevNumber(p string) (uint64, bool) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, false
	}
	maj, min, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(min, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, false
	}
	return unix.Mkdev(uint32(ma), uint32(mi)), true
}

// deviceBusyReason says why a block device cannot be opened exclusively:
// a mount (in this mount namespace) of it or of a partition, or a holder
// (device-mapper, md) on top of it.
func deviceBusyReason(dev uint64) string {
	devs := []uint64{dev}
	for d := range relatedDevices(dev) {
		if d != dev {
			devs = append(devs, d)
		}
	}
	slices.Sort(devs[1:])
	for _, d := range devs {
		what := ""
		if d != dev {
			what = deviceName(d) + " "
		}
		if mnt := mountPoint(d); mnt != "" {
			return what + "mounted on " + mnt
		}
		if holders, _ := os.ReadDir(filepath.Join(sysBlock(d), "holders")); len(holders) > 0 {
			name := holders[0].Name()
			if dm, err := os.ReadFile(filepath.Join("/sys/class/block", name, "dm", "name")); err == nil {
				name += " (" + strings.TrimSpace(string(dm)) + ")"
			}
			return what + "held by " + name
		}
	}
	return heldExclusively
}

const heldExclusively = "held exclusively by another user of the device (an O_EXCL opener, a mount in another namespace)"

// deviceName is the kernel's name of a block device (sdb1, dm-0).
func deviceName(dev uint64) string {
	if p, err := filepath.EvalSymlinks(sysBlock(dev)); err == nil {
		return filepath.Base(p)
	}
	return fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev))
}

// mountPoint returns where dev is mounted in this mount namespace, or "".
func mountPoint(dev uint64) string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	want := fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev))
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent MAJ:MIN root mountpoint options ...
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && fields[2] == want {
			return unescapeMount(fields[4])
		}
	}
	return ""
}

// unescapeMount undoes the octal escapes (\040 for a space) of mountinfo.
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
