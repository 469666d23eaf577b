package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coldship/coldship/shipper/sftp/sftptest"
)

// BenchmarkLiveLatency sends an image with send --live over --data ssh and
// --data tcp, on loopback and at COLDSHIP_BENCH_RTT_MS (default 100) of
// round trip: the tests' delay line (sftptest.Forwarder) sits in front of
// sshd and of each TCP lane, which toxiproxy cannot, the receiver picking
// its lane port. The image is COLDSHIP_BENCH_LIVE_MIB MiB (default 256) of
// random data. Besides time and MB/s it reports this process's CPU
// (sender and delay lines) and sshd's (with the receiver), and fails if
// the restored image differs. scripts/bench-live.sh runs it.
func BenchmarkLiveLatency(b *testing.B) {
	mib, rtt := envInt("COLDSHIP_BENCH_LIVE_MIB", 256), envInt("COLDSHIP_BENCH_RTT_MS", 100)
	bin := coldshipBinary(b)
	srv := sftptest.StartSSHD(b)
	b.Setenv("HOME", b.TempDir())
	b.Setenv("SSH_AUTH_SOCK", "")
	img := filepath.Join(b.TempDir(), "image.img")
	data := make([]byte, mib<<20)
	rand.Read(data)
	if err := os.WriteFile(img, data, 0o644); err != nil {
		b.Fatal(err)
	}
	dir := filepath.Join(srv.Root, "vms")
	to := fmt.Sprintf("ssh://%s@%s:%d%s", srv.User, srv.Host, srv.Port, dir)
	for _, ms := range []int{0, rtt} {
		for _, mode := range []string{"ssh", "tcp"} {
			b.Run(fmt.Sprintf("rtt=%dms/data=%s", ms, mode), func(b *testing.B) {
				delay := time.Duration(ms) * time.Millisecond / 2
				srv.Forwarder().SetDelay(delay)
				defer srv.Forwarder().SetDelay(0)
				lanes := &laneDelay{delay: delay, fwd: map[string]*sftptest.Forwarder{}}
				defer lanes.close()
				liveDial = lanes.dial
				defer func() { liveDial = nil }()
				b.SetBytes(int64(len(data)))
				for b.Loop() {
					b.StopTimer()
					os.RemoveAll(dir)
					cpu0, sshd0 := selfCPU(), srv.CPU()
					b.StartTimer()
					r := runArgs(context.Background(), "send", "--live", img, "--to", to, "--data", mode, "-q",
						"--remote-coldship", bin, "--ssh-key", srv.ClientKeyFile, "--known-hosts", srv.KnownHostsFile)
					b.StopTimer()
					if r.code != 0 {
						b.Fatalf("send --live --data %s: exit %d: %s", mode, r.code, r.stderr)
					}
					time.Sleep(200 * time.Millisecond) // sshd reaps the session
					b.ReportMetric((selfCPU() - cpu0).Seconds(), "cpu-s")
					b.ReportMetric((srv.CPU() - sshd0).Seconds(), "sshd-cpu-s")
					if got, err := os.ReadFile(filepath.Join(dir, "image.img")); err != nil || !bytes.Equal(got, data) {
						b.Fatalf("the restored image differs (%v)", err)
					}
					b.StartTimer()
				}
			})
		}
	}
}

// laneDelay dials each TCP lane through a delay line of its own address.
type laneDelay struct {
	delay time.Duration
	mu    sync.Mutex
	fwd   map[string]*sftptest.Forwarder
}

func (l *laneDelay) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	l.mu.Lock()
	f := l.fwd[addr]
	if f == nil {
		var err error
		if f, err = sftptest.NewForwarder(addr); err != nil {
			l.mu.Unlock()
			return nil, err
		}
		f.SetDelay(l.delay)
		l.fwd[addr] = f
	}
	l.mu.Unlock()
	var d net.Dialer
	return d.DialContext(ctx, network, f.Addr())
}

func (l *laneDelay) close() {
	for _, f := range l.fwd {
		f.Close()
	}
}

// runArgs runs coldship in-process, as run does for tests.
func runArgs(ctx context.Context, args ...string) result {
	var out, errb bytes.Buffer
	root := newRootCmd(strings.NewReader(""), &out, &errb)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err != nil {
		fmt.Fprintf(&errb, "coldship: %v\n", err)
	}
	return result{out.String(), errb.String(), exitCode(err)}
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
