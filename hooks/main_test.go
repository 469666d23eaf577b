package hooks

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// lockHelperEnv makes the test binary, run again as a child, lock an image
// and hold it: "MODE:PATH". Modes:
//
//	qemu   open read-only, OFD read locks on bytes 100-101 and 200-201, as
//	       QEMU does (it takes shared locks only)
//	write  open read-write, OFD read lock on 100-101, write lock on 200-201
//	posix  open read-only, classic POSIX read lock on byte 100
//	rdonly open read-only, no lock
//	backing open read-only, OFD read locks on 100, 201 and 203, as QEMU
//	       does on a backing file (read, and let no one write or resize)
//	excl   open read-only with O_EXCL (a block device: claim it)
const lockHelperEnv = "COLDSHIP_HOOKS_TEST_LOCK"

func TestMain(m *testing.M) {
	if v := os.Getenv(lockHelperEnv); v != "" {
		mode, path, _ := strings.Cut(v, ":")
		if err := holdImage(mode, path); err != nil {
			fmt.Fprintln(os.Stderr, "lock helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// holdImage locks path per mode, says "ready" and holds it until its
// standard input closes.
func holdImage(mode, path string) error {
	flag := os.O_RDONLY
	switch mode {
	case "write":
		flag = os.O_RDWR
	case "excl":
		flag |= os.O_EXCL
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return err
	}
	lock := func(cmd int, typ int16, start, n int64) error {
		lk := unix.Flock_t{Type: typ, Whence: 0, Start: start, Len: n}
		return unix.FcntlFlock(f.Fd(), cmd, &lk)
	}
	switch mode {
	case "qemu":
		err = lock(unix.F_OFD_SETLK, unix.F_RDLCK, 100, 2)
		if err == nil {
			err = lock(unix.F_OFD_SETLK, unix.F_RDLCK, 200, 2)
		}
	case "write":
		err = lock(unix.F_OFD_SETLK, unix.F_RDLCK, 100, 2)
		if err == nil {
			err = lock(unix.F_OFD_SETLK, unix.F_WRLCK, 200, 2)
		}
	case "posix":
		err = lock(unix.F_SETLK, unix.F_RDLCK, 100, 1)
	case "backing":
		for _, b := range []int64{100, 201, 203} {
			if err == nil {
				err = lock(unix.F_OFD_SETLK, unix.F_RDLCK, b, 1)
			}
		}
	case "rdonly", "excl":
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		return err
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	return f.Close()
}

// holdImageInChild starts the lock helper and returns its pid once the
// image is held; the helper ends with the test.
func holdImageInChild(t *testing.T, mode, path string) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), lockHelperEnv+"="+mode+":"+path)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("lock helper: %q, %v", line, err)
	}
	return cmd.Process.Pid
}

// startShell runs script with sh -c, waits for it to print "ready" and
// returns its pid; it is killed at the end of the test.
func startShell(t *testing.T, script string, args ...string) int {
	t.Helper()
	cmd := exec.Command("/bin/sh", append([]string{"-c", script, "sh"}, args...)...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("shell: %q, %v", line, err)
	}
	return cmd.Process.Pid
}

// alive reports whether pid is a live (not zombie) process.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) S ...": the state follows the last ')'.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
