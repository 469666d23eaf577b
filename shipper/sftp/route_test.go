package sftp_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/sftp"
	"github.com/coldship/coldship/shipper/sftp/sftptest"
)

// hops starts a jump host (logging the channels it forwards) and a
// destination, each with a user key of its own, and a known_hosts file
// that holds both host keys.
func hops(t *testing.T) (jump, target *sftptest.Server, knownHosts string) {
	isolate(t)
	jump = sftptest.StartSSHD(t, sftptest.Verbose())
	target = sftptest.StartSSHD(t)
	knownHosts = filepath.Join(t.TempDir(), "known_hosts")
	var both []byte
	for _, srv := range []*sftptest.Server{jump, target} {
		b, err := os.ReadFile(srv.KnownHostsFile)
		if err != nil {
			t.Fatal(err)
		}
		both = append(both, b...)
	}
	if err := os.WriteFile(knownHosts, both, 0o600); err != nil {
		t.Fatal(err)
	}
	return jump, target, knownHosts
}

// hostEntry is an ssh_config Host entry for srv.
func hostEntry(alias string, srv *sftptest.Server, knownHosts string, extra ...string) string {
	lines := []string{
		"Host " + alias,
		"    HostName " + srv.Host,
		fmt.Sprintf("    Port %d", srv.Port),
		"    User " + srv.User,
		"    IdentityFile " + srv.ClientKeyFile,
		"    UserKnownHostsFile " + knownHosts,
	}
	for _, e := range extra {
		lines = append(lines, "    "+e)
	}
	return strings.Join(lines, "\n") + "\n"
}

func writeConfig(t *testing.T, entries ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ssh_config")
	if err := os.WriteFile(p, []byte(strings.Join(entries, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// forwarded counts the channels the jump host's sshd opened to port.
// forwardedAtLeast waits up to 10 s for the count of forwarded
// connections to port to reach want (the streams past the first connect
// in the background, and sshd logs when it forwards) and returns it.
func forwardedAtLeast(srv *sftptest.Server, port, want int) int {
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := forwarded(srv, port)
		if n >= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func forwarded(srv *sftptest.Server, port int) int {
	return strings.Count(srv.Log(), fmt.Sprintf("target 127.0.0.1 port %d\n", port)) +
		strings.Count(srv.Log(), fmt.Sprintf("target 127.0.0.1 port %d\r\n", port))
}

func roundTrip(t *testing.T, cfg sftp.Config, dir string, srv *sftptest.Server) {
	t.Helper()
	tr := dial(t, cfg)
	data := randomBytes(3<<20 + 5)
	ctx := context.Background()
	if err := tr.Put(ctx, "s/obj", bytes.NewReader(data), -1); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(srv.Root, dir, "s", "obj")); err != nil || !bytes.Equal(got, data) {
		t.Errorf("the destination holds %d bytes (%v), want the %d put", len(got), err, len(data))
	}
	rc, err := tr.Open(ctx, "s/obj", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var got bytes.Buffer
	if _, err := got.ReadFrom(rc); err != nil || !bytes.Equal(got.Bytes(), data) {
		t.Errorf("read back %d bytes (%v), want %d", got.Len(), err, len(data))
	}
}

// TestProxyJump reaches the destination through jump hosts that
// ~/.ssh/config names, one and then two hops (the second hop through the
// first), each checked against known_hosts and authenticated with its own
// key: the jump host's sshd shows the channels it forwarded.
func TestProxyJump(t *testing.T) {
	jump, target, knownHosts := hops(t)
	for _, tc := range []struct {
		name, jumps string
		hops        int // channels the jump host forwards per connection
	}{
		{"one hop", "jump", 1},
		{"two hops", "jump,jump2", 2},
		{"as a URL, with the user", "ssh://" + jump.User + "@jump", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sshConfig := writeConfig(t,
				hostEntry("target", target, knownHosts, "ProxyJump "+tc.jumps),
				hostEntry("jump", jump, knownHosts),
				hostEntry("jump2", jump, knownHosts))
			before := forwarded(jump, target.Port)
			dir := strings.ReplaceAll(tc.name, " ", "-")
			cfg := sftp.Config{Host: "target", Path: filepath.Join(target.Root, dir), SSHConfig: sshConfig, Streams: 2}
			roundTrip(t, cfg, dir, target)
			if n := forwardedAtLeast(jump, target.Port, before+2) - before; n < 2 {
				t.Errorf("the jump host forwarded %d connections to the destination, want one per stream (2)\n%s", n, jump.Log())
			}
			if tc.hops == 2 && forwarded(jump, jump.Port) == 0 {
				t.Errorf("the second hop did not go through the first")
			}
		})
	}
}

// TestProxyJumpHostKeys checks that every hop's host key is verified: an
// unknown jump host fails with ErrAuth before the destination is reached,
// and so does an unknown destination behind a known jump host.
func TestProxyJumpHostKeys(t *testing.T) {
	jump, target, _ := hops(t)
	for _, tc := range []struct {
		name  string
		known *sftptest.Server // the only host in known_hosts
		want  string
	}{
		{"unknown jump host", target, "jump host jump"},
		{"unknown destination", jump, target.HostKeyFingerprint},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sshConfig := writeConfig(t,
				hostEntry("target", target, tc.known.KnownHostsFile, "ProxyJump jump"),
				hostEntry("jump", jump, tc.known.KnownHostsFile))
			accepted := target.Forwarder().Accepted()
			_, err := sftp.Dial(context.Background(), sftp.Config{Host: "target", Path: target.Root, SSHConfig: sshConfig, Streams: 1})
			if !errors.Is(err, shipper.ErrAuth) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Dial: err = %v, want ErrAuth naming %q", err, tc.want)
			}
			t.Log(err)
			if tc.known == target && target.Forwarder().Accepted() != accepted {
				t.Errorf("the destination was reached although the jump host's key is unknown")
			}
		})
	}
}

// TestProxyCommand reaches the destination through a ProxyCommand that
// runs OpenSSH's client to the jump host (ssh -W %h:%p), its tokens
// expanded.
func TestProxyCommand(t *testing.T) {
	if _, err := exec.LookPath("ssh"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("ssh is required in CI: %v (apt-get install openssh-client)", err)
		}
		t.Skip("no ssh client")
	}
	jump, target, knownHosts := hops(t)
	proxy := fmt.Sprintf("ProxyCommand ssh -F none -i %s -o IdentitiesOnly=yes -o BatchMode=yes "+
		"-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o LogLevel=ERROR -p %d -W %%h:%%p %s@%s",
		jump.ClientKeyFile, jump.KnownHostsFile, jump.Port, jump.User, jump.Host)
	sshConfig := writeConfig(t, hostEntry("target", target, knownHosts, proxy))
	cfg := sftp.Config{Host: "target", Path: filepath.Join(target.Root, "cmd"), SSHConfig: sshConfig, Streams: 2}
	roundTrip(t, cfg, "cmd", target)
	if n := forwardedAtLeast(jump, target.Port, 2); n < 2 {
		t.Errorf("the jump host forwarded %d connections to the destination, want one per stream (2)", n)
	}

	// A command that fails: the error says how the connection ended, and
	// it is no authentication failure.
	sshConfig = writeConfig(t, hostEntry("target", target, knownHosts, "ProxyCommand exit 3"))
	_, err := sftp.Dial(context.Background(), sftp.Config{Host: "target", SSHConfig: sshConfig, Streams: 1})
	if err == nil || errors.Is(err, shipper.ErrAuth) {
		t.Errorf("Dial through a failing ProxyCommand: err = %v", err)
	}
}
