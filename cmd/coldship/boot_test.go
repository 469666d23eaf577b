package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coldship/coldship/internal/guest"
)

// bootTimeout is the post-receive hook's timeout, after which coldship kills
// QEMU: a safety net for a guest that hangs, not a limit on speed. A boot
// under TCG costs QEMU about 18 CPU seconds: some twenty seconds on an idle
// 2-core machine, over two minutes at a load average of 20.
const bootTimeout = "10m"

// newGuestData returns a fresh token for a guest's marker and n random bytes
// for its /data.
func newGuestData(t *testing.T, n int) (string, []byte) {
	t.Helper()
	tok := make([]byte, 8)
	data := make([]byte, n)
	if _, err := rand.Read(tok); err != nil {
		t.Fatal(err)
	}
	rand.Read(data)
	return hex.EncodeToString(tok), data
}

// bootRestored ships img (a file under siteA, in format), moves siteA away
// so that no source path exists any more, and receives the shipment into
// dir/site-b with a post-receive hook that boots the restored image under
// QEMU. The guest must print token and the SHA-256 digest of its /data.
func bootRestored(t *testing.T, h guest.Host, dir, siteA, img, format, token, digest string) {
	t.Helper()
	key, rcpt := keypair(t)
	dest := filepath.Join(dir, "dest")
	id := strings.TrimSpace(mustRun(t, "send", img, "--to", dest, "-r", rcpt, "-q").stdout)
	if err := os.Rename(siteA, siteA+".moved"); err != nil {
		t.Fatal(err)
	}

	out := filepath.Join(dir, "site-b")
	console := filepath.Join(dir, "console.log")
	hook := `cd "$COLDSHIP_OUT" && exec ` + guest.ShellJoin(h.BootArgs(filepath.Base(img), format, console))
	start := time.Now()
	r := run(t, "receive", dest, id, "--out", out, "-i", key, "-q",
		"--hook-timeout", bootTimeout, "--hook", "post-receive="+hook)
	log, _ := os.ReadFile(console)
	if r.code != 0 {
		t.Fatalf("receive with a post-receive hook booting the guest: exit %d\nstderr: %s\nconsole:\n%s", r.code, r.stderr, log)
	}
	if err := guest.CheckConsole(log, token, digest); err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, log)
	}
	t.Logf("receive and boot of the %s guest took %s", format, time.Since(start).Round(time.Second))
}

// TestBootRestoredGuest restarts what coldship restored: a small Linux
// guest is shipped, received where its source paths do not exist and
// booted by a post-receive hook; its console shows that its init ran and
// that its data file came through intact.
func TestBootRestoredGuest(t *testing.T) {
	h := guest.Require(t)
	for _, format := range []string{"raw", "qcow2"} {
		t.Run(format, func(t *testing.T) {
			dir := t.TempDir()
			token, data := newGuestData(t, 1<<20)
			siteA := filepath.Join(dir, "site-a")
			vm := filepath.Join(siteA, "vm")
			if err := os.MkdirAll(vm, 0o755); err != nil {
				t.Fatal(err)
			}
			raw := filepath.Join(vm, "disk.raw")
			if err := h.Build(context.Background(), raw, guest.Spec{Token: token, Data: data}); err != nil {
				t.Fatal(err)
			}
			img := raw
			if format == "qcow2" {
				img = filepath.Join(vm, "disk.qcow2")
				if err := h.Qcow2(context.Background(), raw, img); err != nil {
					t.Fatal(err)
				}
				os.Remove(raw)
			}
			bootRestored(t, h, dir, siteA, img, format, token, guest.Digest(data))
		})
	}
}
