package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coldship/coldship/internal/vmtest"
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

// TestLiveTCPLaneLost: after the pre-copy round the packets of the TCP
// lanes to the receiver vanish (a firewall that drops without a reset, a
// path gone while SSH's still works), or are answered with a reset, and
// the final round fits in the socket buffers, so no write blocks. The
// send must fail with exit 1 naming the data connection: for vanishing
// packets once the receiver has acknowledged nothing for the stall
// timeout, instead of waiting on the heartbeats of a receiver that never
// gets the round (TCP would retransmit for some 15 minutes, and a sender
// that only waits would not even hear of that). The receiver, told on the
// control lane, removes what it wrote and exits.
func TestLiveTCPLaneLost(t *testing.T) {
	if os.Geteuid() != 0 {
		vmtest.Unavailable(t, "dropping packets with iptables needs root")
	}
	iptables := requireTool(t, "iptables")
	for _, tc := range []struct {
		name   string
		target []string
		want   string
	}{
		{"dropped", []string{"DROP"}, "took nothing for 2s"},
		{"reset", []string{"REJECT", "--reject-with", "tcp-reset"}, "connection reset by peer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, dir, to, flags := liveEnv(t)
			aliveConfig(t)
			img := filepath.Join(t.TempDir(), "disk.img")
			makeImage(t, img, 1<<20, region{0, 1 << 20, "random"})
			r := atSwitchover(t, dir, img, func(pid int) func() {
				rule := append([]string{"INPUT", "-i", "lo", "-p", "tcp", "--dport", strconv.Itoa(lanePort(t, pid)), "-j"}, tc.target...)
				if out, err := exec.Command(iptables, append([]string{"-I"}, rule...)...).CombinedOutput(); err != nil {
					t.Fatalf("iptables: %v\n%s", err, out)
				}
				return func() { exec.Command(iptables, append([]string{"-D"}, rule...)...).Run() }
			}, append([]string{"--to", to, "-q", "--data", "tcp", "--streams", "2"}, flags...)...)
			if r.code != exitError || !strings.Contains(r.stderr, "data connection") || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, want 1 naming a data connection and saying %q:\n%s", r.code, tc.want, r.stderr)
			}
			waitEmpty(t, dir)
		})
	}
}

// lanePort finds the local TCP port of process pid's connections (on
// IPv4): that of a live receiver's data connections, which it accepted
// on one port.
func lanePort(t *testing.T, pid int) int {
	t.Helper()
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	sockets := map[string]bool{}
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && strings.HasPrefix(l, "socket:[") {
			sockets[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	table, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(table), "\n")[1:] {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "01" || !sockets[f[9]] {
			continue
		}
		_, hexPort, _ := strings.Cut(f[1], ":")
		if port, err := strconv.ParseInt(hexPort, 16, 32); err == nil {
			return int(port)
		}
	}
	t.Fatalf("process %d has no TCP connection", pid)
	return 0
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

// TestLiveFolderChanged: a file added to the VM's folder before the final
// round (here by the pre-switchover hook, as a snapshot taken at the last
// moment would be) fails the live send as a changed source (exit 6,
// naming the file), and the receiver keeps nothing: the shipment would
// not hold it.
func TestLiveFolderChanged(t *testing.T) {
	_, dir, to, flags := liveEnv(t)
	vm := filepath.Join(t.TempDir(), "vm1")
	os.Mkdir(vm, 0o755)
	makeImage(t, filepath.Join(vm, "disk.img"), 4<<20, region{0, 4 << 20, "random"})
	added := filepath.Join(vm, "disk.snap.qcow2")
	r := run(t, append([]string{"send", vm, "--to", to, "-q", "--rounds", "1", "--hook", "pre-switchover=touch " + added}, flags...)...)
	want := added + " was added since the live send listed it"
	if r.code != exitBusy || !strings.Contains(r.stderr, want) {
		t.Errorf("exit %d, want %d saying %q:\n%s", r.code, exitBusy, want, r.stderr)
	}
	waitEmpty(t, dir)
}
