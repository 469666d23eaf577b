package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLiveTCPStall stops the receiver (SIGSTOP) while the sender streams
// to it over TCP lanes: sshd still answers the SSH connection's
// keepalives. The send must fail once a lane has taken nothing, or the
// receiver sent no heartbeat, for ServerAliveInterval ×
// ServerAliveCountMax (here 1 s × 2: both rules have the same timeout,
// and either may tell first), rather than block forever; and the
// receiver, continued, cleans up.
func TestLiveTCPStall(t *testing.T) {
	_, dir, to, flags := liveEnv(t)
	aliveConfig(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	// More than the lanes' socket buffers hold, so that writes block.
	makeImage(t, img, 96<<20, region{0, 96 << 20, "random"})
	r := stoppedReceiver(t, dir, img, append([]string{"--to", to, "-q", "--data", "tcp", "--streams", "2"}, flags...)...)
	stalled := strings.Contains(r.stderr, "data connection") && strings.Contains(r.stderr, "took nothing for 2s")
	silent := strings.Contains(r.stderr, "stopped answering: heard nothing from it for 2s")
	if r.code != exitError || !stalled && !silent {
		t.Errorf("exit %d, want 1 naming the stalled data connection or the silent receiver:\n%s", r.code, r.stderr)
	}
	waitEmpty(t, dir)
}

// liveReceiverPID finds the `coldship receive --live` writing into dir.
func liveReceiverPID(t *testing.T, dir string) int {
	t.Helper()
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range cmdlines {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		args := strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
		if len(args) < 3 || args[1] != "receive" || !contains(args, "--live") || !contains(args, dir) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(f))); err == nil {
			return pid
		}
	}
	t.Fatalf("no receiver into %s", dir)
	return 0
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// waitEmpty waits for the receiver to remove what it wrote into dir.
func waitEmpty(t *testing.T, dir string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		left, _ := filepath.Glob(filepath.Join(dir, "*"))
		hidden, _ := filepath.Glob(filepath.Join(dir, ".*"))
		if len(left)+len(hidden) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("left at the destination: %v %v", left, hidden)
		}
	}
}

// TestLiveSenderKilled: a sender killed with SIGKILL leaves no receiver
// behind holding the destination: its SSH connection closes with it, sshd
// ends the session, and the receiver, finding its input closed, removes
// what it wrote and exits.
func TestLiveSenderKilled(t *testing.T) {
	for _, data := range []string{"ssh", "tcp"} {
		t.Run(data, func(t *testing.T) {
			_, dir, to, flags := liveEnv(t)
			bin := coldshipBinary(t)
			img := filepath.Join(t.TempDir(), "disk.img")
			makeImage(t, img, 8<<20, region{0, 8 << 20, "random"})
			started := filepath.Join(t.TempDir(), "started")
			cmd := exec.Command(bin, append([]string{"send", img, "--to", to, "-q", "--data", data,
				// The hook waits as long as its sender lives.
				"--hook", "pre-switchover=touch " + started + "; while kill -0 $PPID; do sleep 0.05; done"}, flags...)...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			waitForFile(t, started)
			pid := liveReceiverPID(t, dir)
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()
			waitExited(t, pid, "its sender was killed")
			waitEmpty(t, dir)
		})
	}
}
