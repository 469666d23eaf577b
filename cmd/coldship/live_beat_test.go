package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coldship/coldship/shipper/sftp/sftptest"
)

// aliveConfig gives the sender an ssh_config whose keepalives give a
// connection up after 1 s × 2: the lanes' stall timeout and the live
// session's heartbeat timeout, by the one rule.
func aliveConfig(t *testing.T) {
	t.Helper()
	home := os.Getenv("HOME")
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	if err := os.WriteFile(filepath.Join(home, ".ssh", "config"), []byte("Host *\n  ServerAliveInterval 1\n  ServerAliveCountMax 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// stoppedReceiver runs a live send whose receiver is stopped (SIGSTOP)
// once its pre-switchover hook runs, before the final round, and returns
// how the send ended. The receiver is continued before it returns, and
// has exited.
func stoppedReceiver(t *testing.T, dir, img string, args ...string) result {
	t.Helper()
	return atSwitchover(t, dir, img, func(pid int) func() {
		syscall.Kill(pid, syscall.SIGSTOP)
		return func() { syscall.Kill(pid, syscall.SIGCONT) }
	}, args...)
}

// atSwitchover runs a live send, does harm to the link or the receiver
// (pid) while the sender's pre-switchover hook holds it before the final
// round, and returns how the send ended. Nothing may be at a final name;
// once harm's undo has run, the receiver must remove what it wrote and
// exit.
func atSwitchover(t *testing.T, dir, img string, harm func(pid int) (undo func()), args ...string) result {
	t.Helper()
	hookDir := t.TempDir()
	started, goOn := filepath.Join(hookDir, "started"), filepath.Join(hookDir, "go")
	done := make(chan result, 1)
	go func() {
		done <- runCtx(t, context.Background(), nil, append(append([]string{"send", img},
			"--hook", fmt.Sprintf("pre-switchover=touch %s; while [ ! -e %s ]; do sleep 0.01; done", started, goOn)), args...)...)
	}()
	waitForFile(t, started)
	pid := liveReceiverPID(t, dir)
	undo := sync.OnceFunc(harm(pid))
	defer undo()
	os.WriteFile(goOn, nil, 0o644)
	var r result
	select {
	case r = <-done:
	case <-time.After(3 * time.Minute): // a guard against hanging the suite, not a timing
		undo()
		t.Fatal("send --live still blocked")
	}
	if _, err := os.Stat(filepath.Join(dir, "disk.img")); err == nil {
		t.Error("disk.img is at its final name")
	}
	// Undone, it finds its input closed: it cleans up and exits.
	undo()
	waitExited(t, pid, "its sender gave up")
	return r
}

// TestLiveReceiverStopped: a receiver stopped with SIGSTOP, which sshd
// still answers for, fails the send (exit 1, naming the receiver) once
// its heartbeats have stopped for ServerAliveInterval ×
// ServerAliveCountMax: with --data ssh, where SSH's flow control holds
// the sender (on forwarded channels, or in the session's one channel
// where sshd forwards nothing); and with --data tcp, a round small enough
// for the lanes' socket buffers, where the sender waits for its
// acknowledgement. Nothing is at a final name, and the receiver,
// continued, removes what it wrote.
func TestLiveReceiverStopped(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int64
		opts []sftptest.Option
		args []string
	}{
		{"ssh", 96 << 20, nil, []string{"--data", "ssh"}},
		{"ssh without forwarding", 96 << 20, []sftptest.Option{sftptest.NoForwarding()}, []string{"--data", "ssh"}},
		{"tcp, small round", 1 << 20, nil, []string{"--data", "tcp", "--streams", "2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, dir, to, flags := liveEnv(t, tc.opts...)
			aliveConfig(t)
			img := filepath.Join(t.TempDir(), "disk.img")
			makeImage(t, img, tc.size, region{0, tc.size, "random"})
			r := stoppedReceiver(t, dir, img, append(append([]string{"--to", to, "-q"}, tc.args...), flags...)...)
			want := fmt.Sprintf("the receiver on %s stopped answering: heard nothing from it for 2s", srv.Host)
			if r.code != exitError || !strings.Contains(r.stderr, want) {
				t.Errorf("exit %d, want 1 saying %q:\n%s", r.code, want, r.stderr)
			}
			waitEmpty(t, dir)
		})
	}
}

// TestLiveSenderStopped: a sender stopped with SIGSTOP between a pre-copy
// round and the final one (sshd has no ClientAliveInterval, and the
// sender's kernel would answer it anyway) fails the receiver once its
// heartbeats have stopped for the session's timeout: it removes what it
// wrote and exits, releasing the folder, so that the next live send there
// lands.
func TestLiveSenderStopped(t *testing.T) {
	_, dir, to, flags := liveEnv(t)
	aliveConfig(t)
	bin := coldshipBinary(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	makeImage(t, img, 8<<20, region{0, 8 << 20, "random"})
	started := filepath.Join(t.TempDir(), "started")
	cmd := exec.Command(bin, append([]string{"send", img, "--to", to, "-q", "--data", "ssh", "--rounds", "1",
		"--hook", "pre-switchover=touch " + started + "; while kill -0 $PPID; do sleep 0.05; done"}, flags...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Wait()
	}()
	waitForFile(t, started)
	pid := liveReceiverPID(t, dir)
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) == 0 {
		t.Fatal("the pre-copy round wrote nothing at the destination")
	}
	cmd.Process.Signal(syscall.SIGSTOP)
	waitExited(t, pid, "its sender was stopped")
	waitEmpty(t, dir)

	// The folder is free: a new live send lands there.
	mustRun(t, append([]string{"send", img, "--to", to, "-q"}, flags...)...)
	sameFile(t, img, filepath.Join(dir, "disk.img"))
}

// TestLiveSlowPeers: a pre-receive hook at the destination and a
// pre-switchover hook after a pre-copy round, each taking longer than the
// heartbeat timeout, do not fail the send: each end goes on beating while
// its hook runs.
func TestLiveSlowPeers(t *testing.T) {
	for _, data := range []string{"ssh", "tcp"} {
		t.Run(data, func(t *testing.T) {
			_, dir, to, flags := liveEnv(t)
			aliveConfig(t)
			img := filepath.Join(t.TempDir(), "disk.img")
			makeImage(t, img, 8<<20, region{0, 8 << 20, "random"})
			mustRun(t, append([]string{"send", img, "--to", to, "-q", "--data", data, "--rounds", "1",
				"--remote-hook", "pre-receive=sleep 5", "--hook", "pre-switchover=sleep 5"}, flags...)...)
			sameFile(t, img, filepath.Join(dir, "disk.img"))
		})
	}
}

// waitExited waits for process pid to end (exited, even if not yet
// reaped), failing the test with why it should have.
func waitExited(t *testing.T, pid int, why string) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); syscall.Kill(pid, 0) == nil; time.Sleep(20 * time.Millisecond) {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); strings.Contains(string(b), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the receiver (pid %d) still runs after %s", pid, why)
		}
	}
}
