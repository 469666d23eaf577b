package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// coldshipBinary builds the command once, for tests that need a real
// process (signals, exit statuses as the shell sees them).
func coldshipBinary(t testing.TB) string {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "coldship-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "coldship")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = errors.New(string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("build coldship: %v", buildErr)
	}
	return binPath
}

func TestInterruptLeavesNothing(t *testing.T) {
	bin := coldshipBinary(t)
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "big.img")
	makeImage(t, src, 192<<20, region{0, 192 << 20, "random"})
	dest := filepath.Join(dir, "dest")

	// Interrupted send: exit 130, no complete shipment.
	cmd := exec.Command(bin, "send", src, "--to", dest, "-r", rcpt, "-q", "-j", "1", "--no-resume")
	cmd.Env = append(os.Environ(), "XDG_STATE_HOME="+t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitForFile(t, filepath.Join(dest, "*", "keys", "0000"))
	cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitInterrupted {
		t.Errorf("interrupted send: %v, want exit 130", err)
	}
	if m, _ := filepath.Glob(filepath.Join(dest, "*", "manifest")); len(m) != 0 {
		t.Errorf("an interrupted send left a complete shipment: %v", m)
	}
	tmps, _ := filepath.Glob(filepath.Join(dest, "*", "segments", ".*"))
	if len(tmps) != 0 {
		t.Errorf("temporary objects left behind: %v", tmps)
	}

	id := strings.TrimSpace(mustRun(t, "send", src, "--to", dest, "-r", rcpt, "-q", "--no-resume").stdout)
	out := filepath.Join(dir, "out")
	cmd = exec.Command(bin, "receive", dest, id, "--out", out, "-i", key, "-q", "-j", "1", "--streams", "1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitForFile(t, filepath.Join(out, ".big.img.coldship-*"))
	time.Sleep(50 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGINT)
	err = cmd.Wait()
	if !errors.As(err, &ee) || ee.ExitCode() != exitInterrupted {
		t.Errorf("interrupted receive: %v, want exit 130", err)
	}
	// Nothing at a final name; what it wrote stays, recorded, for the
	// same command to resume (issue 14: a receive resumes).
	if _, err := os.Stat(filepath.Join(out, "big.img")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an interrupted receive left the image at its final name (%v)", err)
	}
	if m, _ := filepath.Glob(filepath.Join(out, ".coldship-receive-*.json")); len(m) != 1 {
		t.Errorf("an interrupted receive left no resume record: %v", m)
	}
	mustRun(t, "receive", dest, id, "--out", out, "-i", key, "-q")
	sameFile(t, src, filepath.Join(out, "big.img"))
	if m, _ := filepath.Glob(filepath.Join(out, ".*.coldship-*")); len(m) != 0 {
		t.Errorf("temporary files left after the resumed receive: %v", m)
	}
}

func waitForFile(t *testing.T, pattern string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if m, _ := filepath.Glob(pattern); len(m) > 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s did not appear", pattern)
}

// TestSecondInterruptKillsHooks: the on-failure hooks run on after a first
// Ctrl-C; a second one exits at once, and takes the running hook (in its
// own process group, out of the terminal's reach) with it.
func TestSecondInterruptKillsHooks(t *testing.T) {
	bin := coldshipBinary(t)
	_, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "a.img")
	makeImage(t, src, 1<<20, region{0, 1 << 20, "random"})
	pidFile := filepath.Join(dir, "hook.pid")
	cmd := exec.Command(bin, "send", src, "--to", filepath.Join(dir, "dest"), "-r", rcpt, "-q",
		"--hook", "pre-send=exit 1",
		"--hook", "on-failure=echo $$ > "+pidFile+"; exec sleep 1000")
	cmd.Env = append(os.Environ(), "XDG_STATE_HOME="+t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitForFile(t, pidFile)
	var pid int
	for deadline := time.Now().Add(10 * time.Second); pid == 0 && time.Now().Before(deadline); {
		b, _ := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		time.Sleep(5 * time.Millisecond)
	}
	defer syscall.Kill(pid, syscall.SIGKILL)
	cmd.Process.Signal(syscall.SIGINT)
	time.Sleep(100 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != exitInterrupted {
			t.Errorf("send after two interrupts: %v, want exit 130", err)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("send still running 30 s after a second interrupt")
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the on-failure hook (pid %d) outlived coldship", pid)
		}
	}
}
