package hooks

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrBusy is matched (errors.Is) by every refusal of a source, or of a
// restore target, that another process uses: locked, open for writing, a
// busy block device, a libvirt domain still running. coldship exits 6 on
// it.
var ErrBusy = errors.New("source busy")

// InUseError says that another process holds an image or a device, and
// which one when /proc shows it. It matches ErrBusy.
type InUseError struct {
	Path    string
	PID     int    // 0 if unknown
	Command string // "" if unknown
	Reason  string // "write lock on bytes 200-201", "open for writing", "mounted on /mnt", ...
	// Write: the refusal is of a restore target (CheckDeviceFree), not of
	// a source.
	Write bool
	// Advice replaces the source's "is the VM running?" when the holder
	// is known to be something else.
	Advice string
}

func (e *InUseError) Error() string {
	who := ""
	switch {
	case e.PID > 0 && e.Command != "":
		who = fmt.Sprintf(" (pid %d, %s)", e.PID, e.Command)
	case e.PID > 0:
		who = fmt.Sprintf(" (pid %d)", e.PID)
	}
	if e.Write {
		return fmt.Sprintf("refusing to write %s: %s%s: it must be unmounted and unused", e.Path, e.Reason, who)
	}
	advice := e.Advice
	if advice == "" {
		advice = "is the VM running? use --force to override"
	}
	return fmt.Sprintf("refusing to read %s: %s%s: %s", e.Path, e.Reason, who, advice)
}

func (e *InUseError) Unwrap() error { return ErrBusy }

// CheckNotInUse refuses an image that another process has locked or holds
// open for writing, with an *InUseError. Other errors mean path could not
// be checked at all.
//
// A running QEMU holds fcntl byte-range locks (OFD locks) on its images,
// so any lock conflicting with a whole-file write lock means the image is
// in use, even one taken only for reading: an image in use read-only
// (an ISO, a shared backing file) is refused too, and --force reads it.
// Holders are found through /proc/PID/fd and /proc/PID/fdinfo; entries we
// may not read (other users, other PID namespaces) are skipped, so a
// writer without locks can go unseen there.
//
// A block device is also refused when it cannot be opened exclusively
// (O_EXCL fails with EBUSY when it is mounted, held by device-mapper, md
// or LVM, or opened exclusively by another process), and when a process
// has it, its whole disk or one of its partitions open for writing
// (QEMU opens block devices without O_EXCL).
func CheckNotInUse(path string) error {
	return checkInUse(path, false)
}

// CheckNotWritten is CheckNotInUse for a backing file that coldship adds
// to a shipment: other VMs may read it (a base shared by linked clones),
// so only signs of a writer refuse it: a process with it open for writing,
// a lock on the bytes QEMU locks while it holds the write or resize
// permission (101 and 103), any other lock outside QEMU's byte ranges, or
// a block device that cannot be opened exclusively.
func CheckNotWritten(path string) error {
	return checkInUse(path, true)
}

func checkInUse(path string, readersOK bool) error {
	// O_NONBLOCK: a FIFO given by mistake must not hang the check.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	users := procUsers(sameDevice(fi))
	other := func(u procUser) bool { return !u.self }

	if isBlockDevice(fi) {
		if err := checkExclusive(path, fi, users, readersOK); err != nil {
			return err
		}
	}
	if readersOK {
		if err := checkWriteLocks(f, path); err != nil {
			return err
		}
	} else if err := checkLocks(f, path, users); err != nil {
		return err
	}
	if err := checkFlocks(path, users, readersOK); err != nil {
		return err
	}
	if u, ok := find(users, func(u procUser) bool { return u.writable && other(u) }); ok {
		reason := "open for writing"
		if isBlockDevice(fi) {
			reason += u.through(path)
		}
		return &InUseError{Path: path, Reason: reason, PID: u.pid, Command: u.command()}
	}
	return nil
}

// checkLocks refuses a file on which another owner holds any fcntl lock.
func checkLocks(f *os.File, path string, users []procUser) error {
	other := func(u procUser) bool { return !u.self }
	if lk, ok := probeLock(f, unix.F_OFD_GETLK, 0, 0); ok {
		holder, found := find(users, func(u procUser) bool { return u.locks && other(u) })
		if !found {
			// A classic POSIX lock names its holder, even one in a
			// process whose fds we may not see.
			if plk, ok := probeLock(f, unix.F_GETLK, 0, 0); ok && plk.Pid > 0 {
				lk, holder, found = plk, procUser{pid: int(plk.Pid)}, true
			}
		}
		// OFD locks conflict across file descriptions of one process, so
		// the lock may be ours, taken through another descriptor: that is
		// no reason to refuse. An unseen holder is, and a writer is the
		// best guess at who it is.
		if !found && !ourOwn(users) {
			holder, _ = find(users, func(u procUser) bool { return u.writable && other(u) })
			found = true
		}
		if found {
			return &InUseError{Path: path, Reason: describeLock(lk), PID: holder.pid, Command: holder.command()}
		}
	}
	// Without OFD locks (before Linux 3.15), or behind a lock of our own.
	if lk, ok := probeLock(f, unix.F_GETLK, 0, 0); ok && lk.Pid > 0 {
		return &InUseError{Path: path, Reason: describeLock(lk), PID: int(lk.Pid), Command: procUser{pid: int(lk.Pid)}.command()}
	}
	return nil
}

// checkFlocks refuses a file that another process holds under flock(2)
// (flock(1) in a script, a tool that marks an image it writes that way),
// which the fcntl probes cannot see: such locks never conflict with fcntl
// ones. They show in /proc/PID/fdinfo, so only a holder whose fds we may
// read is found. A base other VMs may read (readersOK) is refused only
// for an exclusive one.
func checkFlocks(path string, users []procUser, readersOK bool) error {
	u, ok := find(users, func(u procUser) bool {
		return !u.self && (u.flock == "write" || (u.flock == "read" && !readersOK))
	})
	if !ok {
		return nil
	}
	return &InUseError{Path: path, Reason: "flock(2) " + u.flock + " lock on the whole file", PID: u.pid, Command: u.command()}
}

// QEMU's image locking (block/file-posix.c): byte 100+N is locked (shared)
// while a user holds permission N, byte 200+N while it refuses to share
// it. Permission 1 is WRITE, 3 is RESIZE.
var qemuWriterBytes = [][2]int64{{0, 100}, {101, 1}, {103, 1}, {104, 96}, {300, 0}}

// checkWriteLocks refuses a file with a lock that means a writer: one
// on QEMU's write or resize permission bytes, or outside QEMU's ranges.
func checkWriteLocks(f *os.File, path string) error {
	for _, r := range qemuWriterBytes {
		for _, cmd := range []int{unix.F_OFD_GETLK, unix.F_GETLK} {
			if lk, ok := probeLock(f, cmd, r[0], r[1]); ok {
				pid := max(int(lk.Pid), 0)
				return &InUseError{Path: path, Reason: describeLock(lk), PID: pid, Command: procUser{pid: pid}.command()}
			}
		}
	}
	return nil
}

// probeExclusive opens a block device with O_EXCL, which fails with EBUSY
// while it is mounted or claimed (device-mapper, md, another O_EXCL
// opener), and says why it is busy.
func probeExclusive(path string, fi os.FileInfo) (string, bool) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err == nil {
		unix.Close(fd)
		return "", false
	}
	if !errors.Is(err, unix.EBUSY) {
		return "", false // cannot tell: the other checks decide
	}
	return deviceBusyReason(rdevOf(fi)), true
}

// probeLock asks whether a write lock over n bytes from start (0: to the
// end of the file) would conflict with a lock another owner holds, and
// returns that lock.
func probeLock(f *os.File, cmd int, start, n int64) (unix.Flock_t, bool) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: start, Len: n}
	if err := unix.FcntlFlock(f.Fd(), cmd, &lk); err != nil {
		// EINVAL: a kernel without OFD locks. Other errors (ENOLCK on
		// some network filesystems) leave the fd scan to decide.
		return lk, false
	}
	return lk, lk.Type != unix.F_UNLCK
}

func describeLock(lk unix.Flock_t) string {
	kind := "read"
	if lk.Type == unix.F_WRLCK {
		kind = "write"
	}
	switch {
	case lk.Len == 0 && lk.Start == 0:
		return kind + " lock on the whole file"
	case lk.Len == 0:
		return fmt.Sprintf("%s lock from byte %d to the end", kind, lk.Start)
	case lk.Len == 1:
		return fmt.Sprintf("%s lock on byte %d", kind, lk.Start)
	}
	return fmt.Sprintf("%s lock on bytes %d-%d", kind, lk.Start, lk.Start+lk.Len-1)
}

// procUser is a process with the image open through one of its fds.
type procUser struct {
	pid      int
	self     bool
	writable bool   // some fd open O_WRONLY or O_RDWR
	locks    bool   // some fdinfo shows an fcntl lock held through that fd
	flock    string // "write" or "read": a flock(2) lock held through one of its fds
	via      string // the path of the first such fd (for a block device, maybe a partition's)
}

// through says by which other device node a block device is used, if not
// by path itself.
func (u procUser) through(path string) string {
	if u.via == "" || u.via == path {
		return ""
	}
	if real, err := filepath.EvalSymlinks(path); err == nil && real == u.via {
		return ""
	}
	return " (as " + u.via + ")"
}

// command names the process: its comm, or the base of argv[0] when that
// extends the comm the kernel cut at 15 bytes.
func (u procUser) command() string {
	if u.pid <= 0 {
		return ""
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", u.pid))
	if err != nil {
		return ""
	}
	name := strings.TrimSpace(string(comm))
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", u.pid)); err == nil {
		argv0, _, _ := bytes.Cut(cmdline, []byte{0})
		if base := filepath.Base(string(argv0)); strings.HasPrefix(base, name) {
			name = base
		}
	}
	return name
}

// checkExclusive refuses a block device that cannot be opened
// exclusively. A send holds the device it reads (archive.OpenSource): a
// device that another coldship holds so, and only reads, is refused as
// such, unless readersOK (a base shared by linked clones, which two sends
// may read at once).
func checkExclusive(path string, fi os.FileInfo, users []procUser, readersOK bool) error {
	reason, busy := probeExclusive(path, fi)
	if !busy {
		return nil
	}
	other := func(u procUser) bool { return !u.self }
	holder, _ := find(users, other)
	advice := ""
	if sender, ok := find(users, func(u procUser) bool { return other(u) && !u.writable && ourExecutable(u.pid) }); ok && reason == heldExclusively {
		if readersOK {
			return nil
		}
		holder, reason = sender, "held exclusively by another coldship, which is shipping it (one send of a device at a time)"
		advice = "wait for that send to end, or use --force to read it alongside"
	}
	return &InUseError{Path: path, Reason: reason, PID: holder.pid, Command: holder.command(), Advice: advice}
}

// ourExecutable reports whether process pid runs this program's executable.
func ourExecutable(pid int) bool {
	theirs, err1 := os.Stat(fmt.Sprintf("/proc/%d/exe", pid))
	ours, err2 := os.Stat("/proc/self/exe")
	return err1 == nil && err2 == nil && os.SameFile(theirs, ours)
}

// find returns the first user that ok accepts.
func find(users []procUser, ok func(procUser) bool) (procUser, bool) {
	for _, u := range users {
		if ok(u) {
			return u, true
		}
	}
	return procUser{}, false
}

// ourOwn reports whether this process, and no other visible one, holds a
// lock on the image.
func ourOwn(users []procUser) bool {
	for _, u := range users {
		if u.locks && u.self {
			return true
		}
	}
	return false
}

// procUsers scans /proc for processes that have a file that match
// accepts open, in pid order. Whatever cannot be read is skipped.
func procUsers(match func(os.FileInfo) bool) []procUser {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var users []procUser
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		if u, ok := procUserOf(pid, match); ok {
			u.self = pid == self
			users = append(users, u)
		}
	}
	sort.Slice(users, func(i, j int) bool { return users[i].pid < users[j].pid })
	return users
}

func procUserOf(pid int, match func(os.FileInfo) bool) (procUser, bool) {
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return procUser{}, false
	}
	u := procUser{pid: pid}
	found := false
	for _, fd := range fds {
		link := filepath.Join(fdDir, fd.Name())
		// Only paths can be our file: skip sockets, pipes and anon
		// inodes without stat-ing them.
		target, err := os.Readlink(link)
		if err != nil || !strings.HasPrefix(target, "/") {
			continue
		}
		st, err := os.Stat(link)
		if err != nil || !match(st) {
			continue
		}
		if !found {
			u.via = target
		}
		found = true
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		if err != nil {
			continue
		}
		writable, locks, flock := parseFdinfo(info)
		u.writable = u.writable || writable
		u.locks = u.locks || locks
		if u.flock != "write" && flock != "" {
			u.flock = flock
		}
	}
	return u, found
}

// parseFdinfo reads the access mode from the octal "flags:" line, whether
// any "lock:" line shows an fcntl lock held through the fd, and the kind
// ("write" or "read") of a flock(2) lock held through it, if any.
func parseFdinfo(info []byte) (writable, locks bool, flock string) {
	sc := bufio.NewScanner(bytes.NewReader(info))
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch key {
		case "flags":
			flags, err := strconv.ParseUint(strings.TrimSpace(value), 8, 64)
			if err == nil {
				mode := flags & unix.O_ACCMODE
				writable = mode == unix.O_WRONLY || mode == unix.O_RDWR
			}
		case "lock":
			// fcntl locks only: flock(2) locks never conflict with them.
			locks = locks || strings.Contains(value, "POSIX") || strings.Contains(value, "OFDLCK")
			// "1: FLOCK  ADVISORY  WRITE 4321 00:2f:99 0 EOF"
			if f := strings.Fields(value); len(f) >= 4 && f[1] == "FLOCK" && flock != "write" {
				flock = strings.ToLower(f[3])
			}
		}
	}
	return writable, locks, flock
}
