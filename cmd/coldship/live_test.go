package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper/live"
	"github.com/coldship/coldship/shipper/live/livetest"
	"github.com/coldship/coldship/shipper/sftp/sftptest"
)

// liveEnv starts sshd on loopback and returns the destination directory,
// its ssh:// URL and the flags that reach it with the coldship built from
// this tree as the remote receiver.
func liveEnv(t *testing.T, opts ...sftptest.Option) (srv *sftptest.Server, dir, to string, flags []string) {
	bin := coldshipBinary(t)
	srv = sftptest.StartSSHD(t, opts...)
	t.Setenv("HOME", t.TempDir())
	t.Setenv("SSH_AUTH_SOCK", "")
	auth := []string{"--ssh-key", srv.ClientKeyFile, "--known-hosts", srv.KnownHostsFile}
	dir = filepath.Join(srv.Root, "vms")
	to = fmt.Sprintf("ssh://%s@%s:%d%s", srv.User, srv.Host, srv.Port, dir)
	return srv, dir, to, append([]string{"--live", "--remote-coldship", bin}, auth...)
}

func TestLiveRoundTrip(t *testing.T) {
	for _, data := range []string{"ssh", "tcp"} {
		t.Run(data, func(t *testing.T) {
			_, dir, to, flags := liveEnv(t)
			src := t.TempDir()
			vm := filepath.Join(src, "web01")
			os.MkdirAll(vm, 0o755)
			img := filepath.Join(vm, "disk.img")
			makeImage(t, img, 40<<20, region{0, 3 << 20, "random"}, region{10 << 20, 2 << 20, "text"},
				region{20 << 20, 1 << 20, "zero"}, region{39 << 20, 1 << 20, "random"})
			os.WriteFile(filepath.Join(vm, "web01.xml"), []byte("<domain/>\n"), 0o644)
			hookOut := filepath.Join(t.TempDir(), "post-receive")

			args := append([]string{"send", vm, "--to", to, "--data", data, "--json",
				"--remote-hook", "post-receive=printf '%s\\n' \"$COLDSHIP_SHIPMENT\" \"$COLDSHIP_FILES\" > " + hookOut}, flags...)
			if data == "tcp" {
				args = append(args, "--streams", "3")
			}
			r := mustRun(t, args...)
			sameFile(t, img, filepath.Join(dir, "web01", "disk.img"))
			sameFile(t, filepath.Join(vm, "web01.xml"), filepath.Join(dir, "web01", "web01.xml"))
			if a, b := allocated(t, img), allocated(t, filepath.Join(dir, "web01", "disk.img")); b > a {
				t.Errorf("restored image allocates %d bytes, the source %d: holes not kept", b, a)
			}
			// The restored paths, as receive prints them: in the summary
			// with --json.
			want := []string{filepath.Join(dir, "web01"), filepath.Join(dir, "web01", "disk.img"), filepath.Join(dir, "web01", "web01.xml")}
			summary := lastJSON(t, r.stdout)
			if got := fmt.Sprint(summary["paths"]); got != fmt.Sprint(want) {
				t.Errorf("paths %s, want %q", got, want)
			}
			if summary["type"] != "summary" || summary["switchover_s"] == nil || len(summary["rounds"].([]any)) != 1 {
				t.Errorf("summary: %v", summary)
			}
			hook, err := os.ReadFile(hookOut)
			if err != nil || !strings.Contains(string(hook), summary["shipment"].(string)) || !strings.Contains(string(hook), "disk.img") {
				t.Errorf("post-receive hook at the destination: %q %v", hook, err)
			}
			// Nothing sealed was stored anywhere: the destination holds the files.
			leftovers, _ := filepath.Glob(filepath.Join(dir, "*", ".*"))
			if len(leftovers) != 0 {
				t.Errorf("temporaries left: %v", leftovers)
			}

			// Again: the files exist now.
			r = run(t, args...)
			if r.code != exitError || !strings.Contains(r.stderr, "already exists") {
				t.Errorf("second send: exit %d, %s", r.code, r.stderr)
			}
			mustRun(t, append(args, "--remote-force")...)
		})
	}
}

// lastJSON checks every object of stdout against the documented schema
// and returns the last one.
func lastJSON(t *testing.T, stdout string) map[string]any {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	var m map[string]any
	for _, line := range lines {
		m = nil
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("stdout line is not JSON: %q", line)
		}
		checkSchema(t, m)
	}
	return m
}

// TestLivePreCopy writes to the image through the pre-copy rounds, like a
// running VM (to a working set of a few blocks), until the pre-switchover hook stops the writer: the copy is
// the image as it was then.
func TestLivePreCopy(t *testing.T) {
	for _, data := range []string{"ssh", "tcp"} {
		t.Run(data, func(t *testing.T) {
			_, dir, to, flags := liveEnv(t)
			src := t.TempDir()
			img := filepath.Join(src, "disk.img")
			makeImage(t, img, 32<<20, region{0, 24 << 20, "random"})
			stop, stopped := filepath.Join(src, "stop"), filepath.Join(src, "stopped")
			var wg sync.WaitGroup
			wg.Go(func() {
				defer os.WriteFile(stopped, nil, 0o644)
				f, err := os.OpenFile(img, os.O_RDWR, 0)
				if err != nil {
					t.Error(err)
					return
				}
				defer f.Close()
				b := make([]byte, 4096)
				for i := 0; ; i++ {
					if _, err := os.Stat(stop); err == nil {
						return
					}
					for j := range b {
						b[j] = byte(rand.Uint32())
					}
					// A working set, as a VM's: the first 4 MiB.
					f.WriteAt(b, rand.Int64N(4<<20-4096))
					time.Sleep(200 * time.Microsecond)
				}
			})
			hook := fmt.Sprintf("pre-switchover=touch %s; while [ ! -e %s ]; do sleep 0.01; done", stop, stopped)
			r := mustRun(t, append([]string{"send", img, "--to", to, "--data", data, "--rounds", "3", "--hook", hook, "--json"}, flags...)...)
			wg.Wait()
			sameFile(t, img, filepath.Join(dir, "disk.img"))
			summary := lastJSON(t, r.stdout)
			rounds := summary["rounds"].([]any)
			if len(rounds) != 4 {
				t.Fatalf("%d rounds, want 3 pre-copy and the final", len(rounds))
			}
			first := rounds[0].(map[string]any)["bytes_data"].(float64)
			if first < 24<<20 {
				t.Errorf("round 1 sent %v bytes, want the whole image", first)
			}
			for _, rd := range rounds[1:] {
				if d := rd.(map[string]any)["bytes_data"].(float64); d >= first {
					t.Errorf("a later round sent %v bytes, as much as the first", d)
				}
			}
			if summary["switchover_s"].(float64) <= 0 {
				t.Errorf("switch-over time: %v", summary["switchover_s"])
			}
		})
	}
}

// TestLiveSummaryWords checks the sentences of a live send of one image
// in one round, without a pre-switchover hook: singular counts, and no
// hook's share of the switch-over (0 in JSON) since no hook ran.
func TestLiveSummaryWords(t *testing.T) {
	_, _, to, flags := liveEnv(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	makeImage(t, img, 1<<20, region{0, 1 << 20, "random"})
	r := mustRun(t, append([]string{"send", img, "--to", to}, flags...)...)
	for _, want := range []string{"in 1 block sent", "(1 path) at ", " in 1 round, "} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr does not say %q:\n%s", want, r.stderr)
		}
	}
	if strings.Contains(r.stderr, "pre-switchover hook") {
		t.Errorf("a pre-switchover hook's time although none ran:\n%s", r.stderr)
	}
	r = mustRun(t, append([]string{"send", img, "--to", to, "--remote-force", "--json"}, flags...)...)
	if hook := lastJSON(t, r.stdout)["pre_switchover_hook_s"]; hook != 0.0 {
		t.Errorf("pre_switchover_hook_s %v without a hook, want 0", hook)
	}
}

// TestLiveReceiveSummaryWords runs receive --live in this process, as
// a person would at the far end, fed by a sender of one image in one
// round: its sentence counts in the singular.
func TestLiveReceiveSummaryWords(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.img")
	makeImage(t, img, 1<<20, region{0, 1 << 20, "random"})
	sources, err := archive.CollectSources([]string{img})
	if err != nil {
		t.Fatal(err)
	}
	toRecvR, toRecvW := io.Pipe()
	toSendR, toSendW := io.Pipe()
	var stderr strings.Builder
	var wg sync.WaitGroup
	wg.Go(func() {
		execute(context.Background(), []string{"receive", "--live", "-", "--out", t.TempDir()}, toRecvR, toSendW, &stderr)
		toSendW.Close()
		toRecvR.Close()
	})
	_, err = live.Send(context.Background(), live.Peer{In: toSendR, Out: toRecvW}, sources, live.SendOptions{})
	toRecvW.Close()
	toSendR.Close()
	wg.Wait()
	if err != nil {
		t.Fatalf("send: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "(1 path) into ") || !strings.Contains(stderr.String(), " in 1 round") {
		t.Errorf("receive --live summary, want 1 path in 1 round:\n%s", stderr.String())
	}
}

// TestLiveConnectionCut cuts the SSH connection in the middle of a send:
// the sender fails, and the receiver leaves nothing at a final name (nor
// its temporaries).
func TestLiveConnectionCut(t *testing.T) {
	srv, dir, to, flags := liveEnv(t)
	srv.Forwarder().SetDelay(2 * time.Millisecond)
	src := t.TempDir()
	img := filepath.Join(src, "disk.img")
	makeImage(t, img, 64<<20, region{0, 64 << 20, "random"})
	done := make(chan result, 1)
	go func() {
		done <- runCtx(t, context.Background(), nil, append([]string{"send", img, "--to", to, "-q"}, flags...)...)
	}()
	waitForFile(t, filepath.Join(dir, ".disk.img.coldship-*"))
	time.Sleep(100 * time.Millisecond)
	srv.CutConnections()
	r := <-done
	if r.code == 0 {
		t.Fatal("send succeeded although its connection was cut")
	}
	// One line: the cause follows the failure, not on a line of its own.
	if msg := strings.TrimSpace(r.stderr); strings.Contains(msg, "\n") || !strings.Contains(msg, "connection to the receiver failed: ") {
		t.Errorf("error of a cut connection, want one line saying why: %q", r.stderr)
	}
	// The receiver notices the end of its input and cleans up.
	waitEmpty(t, dir)
}

// TestLiveTCPAttacks tampers with, replays and injects records on a TCP
// data connection: the receiver fails with exit status 5, so does the
// sender, and nothing is left at the destination.
func TestLiveTCPAttacks(t *testing.T) {
	_, dir, to, flags := liveEnv(t)
	src := t.TempDir()
	img := filepath.Join(src, "disk.img")
	makeImage(t, img, 16<<20, region{0, 16 << 20, "random"})
	for name, attack := range map[string]func(int) livetest.Edit{
		"tamper": livetest.Tamper, "replay": livetest.Replay, "inject": livetest.Inject, "drop": livetest.Drop,
	} {
		t.Run(name, func(t *testing.T) {
			var mu sync.Mutex
			n := 0
			liveDial = func(ctx context.Context, network, addr string) (net.Conn, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, network, addr)
				mu.Lock()
				defer mu.Unlock()
				if n++; err != nil || n != 2 {
					return c, err
				}
				return livetest.Wrap(c, attack(1)), nil
			}
			defer func() { liveDial = nil }()
			r := run(t, append([]string{"send", img, "--to", to, "--data", "tcp", "--streams", "2", "-q"}, flags...)...)
			if r.code != exitIntegrity {
				t.Errorf("exit %d, want 5\n%s", r.code, r.stderr)
			}
			left, _ := filepath.Glob(filepath.Join(dir, "*"))
			hidden, _ := filepath.Glob(filepath.Join(dir, ".*"))
			if len(left)+len(hidden) != 0 {
				t.Errorf("left at the destination: %v %v", left, hidden)
			}
		})
	}
}

func TestLiveUsage(t *testing.T) {
	_, rcpt := keypair(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	makeImage(t, img, 1<<20, region{0, 1 << 20, "random"})
	for _, args := range [][]string{
		{"send", "--live", img, "--to", "sftp://h/x"},
		{"send", "--live", img, "--to", "ssh://h/x", "-r", rcpt},
		{"send", "--live", img, "--to", "ssh://h/x", "--data", "udp"},
		{"send", "--live", img, "--to", "ssh://h/x", "--streams", "65"},
		{"send", "--live", img, "--to", "ssh://h/x", "--remote-hook", "pre-send=true"},
		{"send", "--live", "--to", "ssh://h/x"},
		{"send", "--live", img, "--to", "ssh://h/x", "--bwlimit", "10M"},
		{"send", "--live", img, "--to", "ssh://h/x", "--base", "latest"},
		{"send", "--live", img, "--to", "ssh://h/x", "--segment-size", "16M"},
		{"send", "--live", img, "--to", "ssh://h/x", "--retries", "1"},
		{"receive", "--live", "/srv", "--out", "x"},
		{"receive", "--live", "-"},
	} {
		if r := run(t, args...); r.code != exitUsage {
			t.Errorf("coldship %s: exit %d, want 2; %s", strings.Join(args, " "), r.code, r.stderr)
		}
	}
	// A site's recipient for its stored sends: refused, naming the
	// variable that the user did not type.
	t.Setenv("COLDSHIP_RECIPIENT", rcpt)
	if r := run(t, "send", "--live", img, "--to", "ssh://h/x"); r.code != exitUsage || !strings.Contains(r.stderr, "COLDSHIP_RECIPIENT") {
		t.Errorf("send --live with COLDSHIP_RECIPIENT: exit %d, want 2 naming the variable; %s", r.code, r.stderr)
	}
	os.Unsetenv("COLDSHIP_RECIPIENT")
	// From the environment too, named as such: a live send must not
	// ignore a rate limit that a unit's environment file sets.
	t.Setenv("COLDSHIP_BWLIMIT", "10M")
	if r := run(t, "send", "--live", img, "--to", "ssh://h/x"); r.code != exitUsage || !strings.Contains(r.stderr, "COLDSHIP_BWLIMIT") {
		t.Errorf("send --live with COLDSHIP_BWLIMIT: exit %d, want 2 naming the variable; %s", r.code, r.stderr)
	}
}

func TestLiveRemoteMissing(t *testing.T) {
	_, _, to, flags := liveEnv(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	makeImage(t, img, 1<<20, region{0, 1 << 20, "random"})
	r := run(t, append(append([]string{"send", img, "--to", to}, flags...), "--remote-coldship", "/nonexistent/coldship")...)
	if r.code != exitError || !strings.Contains(r.stderr, "--remote-coldship") {
		t.Errorf("exit %d, want 1 and a hint at --remote-coldship; %s", r.code, r.stderr)
	}
}

// forwardedTo returns the ports of the direct-tcpip channels that sshd
// (logging at DEBUG1) opened to its loopback, port 0 (the probe) aside.
func forwardedTo(log string) []string {
	var ports []string
	for _, line := range strings.Split(log, "\n") {
		if _, after, ok := strings.Cut(line, "server_request_direct_tcpip: originator"); ok {
			if _, port, ok := strings.Cut(after, "target 127.0.0.1 port "); ok && strings.TrimSpace(port) != "0" {
				ports = append(ports, strings.TrimSpace(port))
			}
		}
	}
	return ports
}

// TestLiveSSHLanes carries the blocks of --data ssh over several SSH
// channels of the one connection: sshd shows a forwarded channel per lane
// to the receiver's listener on its loopback, and the image arrives whole.
func TestLiveSSHLanes(t *testing.T) {
	srv, dir, to, flags := liveEnv(t, sftptest.Verbose())
	img := filepath.Join(t.TempDir(), "disk.img")
	makeImage(t, img, 24<<20, region{0, 20 << 20, "random"})
	r := mustRun(t, append([]string{"send", img, "--to", to, "--streams", "3"}, flags...)...)
	sameFile(t, img, filepath.Join(dir, "disk.img"))
	ports := forwardedTo(srv.Log())
	if len(ports) != 3 {
		t.Fatalf("sshd forwarded %d channels (%v), want one per lane (3)\n%s", len(ports), ports, r.stderr)
	}
	for _, p := range ports[1:] {
		if p != ports[0] {
			t.Errorf("lanes went to ports %v, want the receiver's one", ports)
		}
	}
	if strings.Contains(r.stderr, "forward") {
		t.Errorf("a notice about forwarding although sshd forwards: %s", r.stderr)
	}
}

// TestLiveSSHNoForwarding falls back to the one SSH channel, saying so,
// when sshd does not forward TCP connections.
func TestLiveSSHNoForwarding(t *testing.T) {
	_, dir, to, flags := liveEnv(t, sftptest.NoForwarding())
	img := filepath.Join(t.TempDir(), "disk.img")
	makeImage(t, img, 8<<20, region{0, 6 << 20, "random"})
	r := mustRun(t, append([]string{"send", img, "--to", to}, flags...)...)
	sameFile(t, img, filepath.Join(dir, "disk.img"))
	if !strings.Contains(r.stderr, "AllowTcpForwarding") || !strings.Contains(r.stderr, "one SSH channel") {
		t.Errorf("no notice of the fallback: %s", r.stderr)
	}
}

// TestLiveLockWait: --lock-wait is the receiver's, as the receiver's
// error says: a live send into a folder that another receive holds waits
// for it, and lands once it is free.
func TestLiveLockWait(t *testing.T) {
	_, dir, to, flags := liveEnv(t)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Another receive into dir: its flock on the folder.
	held, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := unix.Flock(int(held.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	makeImage(t, img, 4<<20, region{0, 4 << 20, "random"})
	started := filepath.Join(t.TempDir(), "started")
	done := make(chan result, 1)
	go func() {
		done <- runCtx(t, context.Background(), nil, append([]string{"send", img, "--to", to, "-q", "--lock-wait", "1h",
			"--remote-hook", "pre-receive=touch " + started}, flags...)...)
	}()
	// The receiver locks the folder it opened once its pre-receive hook
	// ran: release ours once it has.
	waitForFile(t, started)
	waitOpened(t, dir, done)
	unix.Flock(int(held.Fd()), unix.LOCK_UN)
	r := <-done
	if r.code != 0 {
		t.Fatalf("send --live --lock-wait 1h into a folder another receive held: exit %d\n%s", r.code, r.stderr)
	}
	sameFile(t, img, filepath.Join(dir, "disk.img"))
}

// waitOpened waits until another process holds dir open, or the run of
// done ends (and is put back).
func waitOpened(t *testing.T, dir string, done chan result) {
	t.Helper()
	self := fmt.Sprintf("/proc/%d/", os.Getpid())
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		select {
		case r := <-done:
			done <- r
			return
		default:
		}
		fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
		for _, fd := range fds {
			if link, _ := os.Readlink(fd); link == dir && !strings.HasPrefix(fd, self) {
				return
			}
		}
	}
	t.Fatalf("no process opened %s", dir)
}

// TestLiveInterruptedAfterLanding: a sender interrupted once the receiver
// renamed the files into place (here, in its post-receive hook) cannot
// undo that, and says so rather than leave "interrupted" alone.
func TestLiveInterruptedAfterLanding(t *testing.T) {
	_, dir, to, flags := liveEnv(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	makeImage(t, img, 4<<20, region{0, 4 << 20, "random"})
	hookDir := t.TempDir()
	started, goOn := filepath.Join(hookDir, "started"), filepath.Join(hookDir, "go")
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	done := make(chan result, 1)
	go func() {
		done <- runCtx(t, ctx, nil, append([]string{"send", img, "--to", to, "-q",
			"--remote-hook", fmt.Sprintf("post-receive=touch %s; while [ ! -e %s ]; do sleep 0.01; done", started, goOn)}, flags...)...)
	}()
	waitForFile(t, started)
	cancel(errInterrupted)
	os.WriteFile(goOn, nil, 0o644)
	r := <-done
	if r.code != exitInterrupted || !strings.Contains(r.stderr, "already put every file in place") {
		t.Errorf("exit %d, want 130 saying the files are in place:\n%s", r.code, r.stderr)
	}
	sameFile(t, img, filepath.Join(dir, "disk.img"))
}

// TestLiveLinkLostAfterFinalRound: a receiver that goes away once the
// final round is in leaves the sender unsure of the outcome, and its error
// says that the destination may hold the files (and the VM be started
// there), not only that the connection failed.
func TestLiveLinkLostAfterFinalRound(t *testing.T) {
	_, dir, to, flags := liveEnv(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	makeImage(t, img, 4<<20, region{0, 4 << 20, "random"})
	// The receiver dies in its post-receive hook: after every file landed.
	r := run(t, append([]string{"send", img, "--to", to, "-q", "--remote-hook", "post-receive=kill -9 $PPID"}, flags...)...)
	if r.code != exitError || !strings.Contains(r.stderr, "the destination may have put every file in place") {
		t.Errorf("exit %d, want 1 saying the destination may hold the files:\n%s", r.code, r.stderr)
	}
	sameFile(t, img, filepath.Join(dir, "disk.img"))
}
