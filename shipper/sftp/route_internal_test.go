package sftp

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestProxyCommandEnvironment: an ssh_config ProxyCommand runs without
// the variable coldship reads a passphrase from (a proxy that logs its
// environment must not log it), and with the rest of the environment.
func TestProxyCommandEnvironment(t *testing.T) {
	t.Setenv("COLDSHIP_PASSPHRASE", "correct horse battery")
	t.Setenv("COLDSHIP_PROXY_TEST", "kept")
	out := filepath.Join(t.TempDir(), "env")
	c, err := dialCommand("sh -c 'env > "+out+"; echo done'", "proxy:22", io.Discard) // as ProxyCommand, run with exec
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c.r) // until the command exits
	c.Close()
	if strings.TrimSpace(string(b)) != "done" {
		t.Fatalf("the proxy command did not run: %q", b)
	}
	env, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(env), "correct horse") || !strings.Contains(string(env), "COLDSHIP_PROXY_TEST=kept") {
		t.Errorf("the proxy command's environment:\n%s", env)
	}
}
