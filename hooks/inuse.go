package hooks

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// InUseError says that another process holds an image, and which one
// when /proc shows it.
type InUseError struct {
	Path    string
	PID     int    // 0 if unknown
	Command string // "" if unknown
	Reason  string // "write lock on bytes 200-201", "open for writing", ...
}

func (e *InUseError) Error() string {
	who := ""
	switch {
	case e.PID > 0 && e.Command != "":
		who = fmt.Sprintf(" (pid %d, %s)", e.PID, e.Command)
	case e.PID > 0:
		who = fmt.Sprintf(" (pid %d)", e.PID)
	}
	return fmt.Sprintf("refusing to read %s: %s%s: is the VM running? use --force to override", e.Path, e.Reason, who)
}

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
func CheckNotInUse(path string) error {
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
	users := procUsers(fi)
	other := func(u procUser) bool { return !u.self }

	if lk, ok := probeLock(f, unix.F_OFD_GETLK); ok {
		holder, found := find(users, func(u procUser) bool { return u.locks && other(u) })
		if !found {
			// A classic POSIX lock names its holder, even one in a
			// process whose fds we may not see.
			if plk, ok := probeLock(f, unix.F_GETLK); ok && plk.Pid > 0 {
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
	if lk, ok := probeLock(f, unix.F_GETLK); ok && lk.Pid > 0 {
		return &InUseError{Path: path, Reason: describeLock(lk), PID: int(lk.Pid), Command: procUser{pid: int(lk.Pid)}.command()}
	}
	if u, ok := find(users, func(u procUser) bool { return u.writable && other(u) }); ok {
		return &InUseError{Path: path, Reason: "open for writing", PID: u.pid, Command: u.command()}
	}
	return nil
}

// probeLock asks whether a write lock over the whole file would conflict
// with a lock another owner holds, and returns that lock.
func probeLock(f *os.File, cmd int) (unix.Flock_t, bool) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
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
	writable bool // some fd open O_WRONLY or O_RDWR
	locks    bool // some fdinfo shows a lock held through that fd
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

// procUsers scans /proc for processes that have the file fi open, in pid
// order. Whatever cannot be read is skipped.
func procUsers(fi os.FileInfo) []procUser {
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
		if u, ok := procUserOf(pid, fi); ok {
			u.self = pid == self
			users = append(users, u)
		}
	}
	sort.Slice(users, func(i, j int) bool { return users[i].pid < users[j].pid })
	return users
}

func procUserOf(pid int, fi os.FileInfo) (procUser, bool) {
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
		if target, err := os.Readlink(link); err != nil || !strings.HasPrefix(target, "/") {
			continue
		}
		st, err := os.Stat(link)
		if err != nil || !os.SameFile(st, fi) {
			continue
		}
		found = true
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		if err != nil {
			continue
		}
		writable, locks := parseFdinfo(info)
		u.writable = u.writable || writable
		u.locks = u.locks || locks
	}
	return u, found
}

// parseFdinfo reads the access mode from the octal "flags:" line and
// whether any "lock:" line shows a lock held through the fd.
func parseFdinfo(info []byte) (writable, locks bool) {
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
		}
	}
	return writable, locks
}
