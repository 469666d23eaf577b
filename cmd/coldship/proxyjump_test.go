package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coldship/coldship/shipper/sftp/sftptest"
)

// TestSFTPProxyJump sends through a jump host that ~/.ssh/config names,
// and checks that the jump host's key is verified too: unknown, the
// command exits 4 (authentication) naming it.
func TestSFTPProxyJump(t *testing.T) {
	jump := sftptest.StartSSHD(t)
	target := sftptest.StartSSHD(t)
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("SSH_AUTH_SOCK", "")
	sshDir := filepath.Join(home, ".ssh")
	os.MkdirAll(sshDir, 0o700)
	entry := func(alias string, srv *sftptest.Server, extra string) string {
		return fmt.Sprintf("Host %s\n  HostName %s\n  Port %d\n  User %s\n  IdentityFile %s\n%s\n",
			alias, srv.Host, srv.Port, srv.User, srv.ClientKeyFile, extra)
	}
	os.WriteFile(filepath.Join(sshDir, "config"), []byte(entry("target", target, "  ProxyJump jump")+entry("jump", jump, "")), 0o600)
	knownHosts := filepath.Join(sshDir, "known_hosts")
	targetKey, _ := os.ReadFile(target.KnownHostsFile)
	jumpKey, _ := os.ReadFile(jump.KnownHostsFile)
	dest := "sftp://target" + target.Root + "/via-jump"

	os.WriteFile(knownHosts, targetKey, 0o600)
	r := run(t, "list", dest)
	if r.code != exitAuth || !strings.Contains(r.stderr, "jump host jump") || !strings.Contains(r.stderr, jump.HostKeyFingerprint) {
		t.Errorf("unknown jump host: exit %d, stderr %q; want 4 naming the jump host and its key", r.code, r.stderr)
	}

	os.WriteFile(knownHosts, append(targetKey, jumpKey...), 0o600)
	_, rcpt := keypair(t)
	src := filepath.Join(t.TempDir(), "disk.img")
	makeImage(t, src, 4<<20, region{0, 1 << 20, "random"})
	mustRun(t, "send", src, "--to", dest, "-r", rcpt, "-q")
	if r := mustRun(t, "list", dest); !strings.Contains(r.stdout, "complete") {
		t.Errorf("list through the jump host: %q", r.stdout)
	}
}
