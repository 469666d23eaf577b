package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"golang.org/x/crypto/ssh"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/local"
	"github.com/coldship/coldship/shipper/restore"
	"github.com/coldship/coldship/shipper/s3/s3test"
	"github.com/coldship/coldship/shipper/v3test"
)

// Issue 13's attack table, at the command level: an attacker with write
// access to the destination and only its public recipient (and, for some
// rows, a signing key of their own) against a destination that trusts one
// source's signing key.

// trustSite is a source that signs, a destination that trusts it, and an
// attacker who knows the destination's public recipient.
type trustSite struct {
	t       *testing.T
	dir     string
	dest    string
	auth    []string // transport flags for every command (SFTP)
	key     string   // the destination's age identity file
	rcpt    string   // its public recipient, which the attacker knows too
	signKey string   // the source's signing key
	allowed string   // the destination's allowed_signers file
	state   string   // the source's state directory (its chains)
	hooks   string   // where the receive hooks leave their mark
}

func newTrustSite(t *testing.T, dest string, auth ...string) *trustSite {
	t.Helper()
	s := &trustSite{t: t, dir: t.TempDir(), dest: dest, auth: auth}
	s.key, s.rcpt = keypair(t)
	var pub string
	s.signKey, pub = sshKeygen(t, "ed25519", "")
	s.allowed = writeAllowedSigners(t, `site-a namespaces="coldship" `+pub)
	s.state = filepath.Join(s.dir, "state")
	s.hooks = filepath.Join(s.dir, "hooks")
	os.MkdirAll(s.hooks, 0o755)
	return s
}

func (s *trustSite) run(args ...string) result {
	s.t.Helper()
	return run(s.t, append(args, s.auth...)...)
}

func (s *trustSite) mustRun(args ...string) result {
	s.t.Helper()
	return mustRun(s.t, append(args, s.auth...)...)
}

// sendSigned ships src as the source does: signed, the next of its chain.
func (s *trustSite) sendSigned(src string, args ...string) string {
	s.t.Helper()
	r := s.mustRun(append([]string{"send", src, "--to", s.dest, "-r", s.rcpt, "-q", "--sign-key", s.signKey, "--state-dir", s.state}, args...)...)
	return strings.TrimSpace(r.stdout)
}

// forge ships src as the attacker does, with coldship and the public
// recipient (args: --sign-key of the attacker's own key, say).
func (s *trustSite) forge(src string, args ...string) string {
	s.t.Helper()
	r := s.mustRun(append([]string{"send", src, "--to", s.dest, "-r", s.rcpt, "-q", "--state-dir", filepath.Join(s.dir, "attacker")}, args...)...)
	return strings.TrimSpace(r.stdout)
}

// receiveHooks are hooks that leave their environment in s.hooks.
func (s *trustSite) receiveHooks() []string {
	os.RemoveAll(s.hooks)
	os.MkdirAll(s.hooks, 0o755)
	return []string{"--hook", envHook(s.hooks, "pre-receive"), "--hook", envHook(s.hooks, "post-receive")}
}

// hooksRan lists the receive hooks that ran since receiveHooks.
func (s *trustSite) hooksRan() []string {
	var ran []string
	for _, phase := range []string{"pre-receive", "post-receive"} {
		if _, err := os.Stat(filepath.Join(s.hooks, phase+".env")); err == nil {
			ran = append(ran, phase)
		}
	}
	return ran
}

// domainDir makes a folder as send --libvirt-domain ships it: a disk, the
// domain's definition (for libvirt's test driver) and coldship's sidecar,
// so that receive --libvirt-define defines and starts it.
func domainDir(t *testing.T, parent, name string) string {
	t.Helper()
	d := filepath.Join(parent, name)
	os.MkdirAll(d, 0o755)
	makeImage(t, filepath.Join(d, name+".img"), 256<<10, region{0, 64 << 10, "random"})
	orig := "/var/lib/libvirt/images/" + name + ".img"
	xml := fmt.Sprintf(`<domain type='test'><name>%s</name><memory>65536</memory><os><type>hvm</type></os>
  <devices><disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s'/><target dev='vda' bus='virtio'/></disk></devices>
</domain>
`, name, orig)
	sidecar, _ := json.Marshal(map[string]any{"domain": name, "xml": name + ".xml", "disks": map[string]string{orig: name + ".img"}})
	os.WriteFile(filepath.Join(d, name+".xml"), []byte(xml), 0o644)
	os.WriteFile(filepath.Join(d, libvirtSidecar), sidecar, 0o644)
	return d
}

// pruneLine returns the line of prune's stderr table about shipment id,
// its spaces squeezed: "keep ID SIZE REASONS".
func pruneLine(stderr, id string) string {
	for _, l := range strings.Split(stderr, "\n") {
		if f := strings.Fields(l); len(f) > 1 && (f[1] == id || len(f) > 2 && f[0] == "would" && f[2] == id) {
			return strings.Join(f, " ")
		}
	}
	return ""
}

func readSigner(file string) (ssh.Signer, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	return ssh.ParsePrivateKey(b)
}

var libvirtArgs = []string{"--libvirt-define", "--libvirt-start", "--libvirt-uri", "test:///default"}

func missing(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("%s exists (%v): something was written", p, err)
	}
}

// TestTrustForgery: `coldship send evil --to DEST -r <the public
// recipient>`, unsigned or signed by the attacker's own key. With
// --trusted-senders receive and verify of it exit 4 and nothing is written
// or run; latest is the real shipment, each forgery named on stderr.
func TestTrustForgery(t *testing.T) {
	requireTool(t, "virsh")
	dir := t.TempDir()
	s := newTrustSite(t, filepath.Join(dir, "dest"))
	testForgery(t, s, true)

	// Without --trusted-senders: as before, the forgery is restored and
	// its domain defined (what key-less receive cannot tell), and receive
	// says the sender is not authenticated (not with -q).
	forged := s.forge(domainDir(t, filepath.Join(dir, "evil2"), "evil"))
	r := s.mustRun(append([]string{"receive", s.dest, forged, "--out", filepath.Join(dir, "unprotected"), "-i", s.key}, libvirtArgs...)...)
	if !strings.Contains(r.stderr, "the sender of "+forged+" is not authenticated") || !strings.Contains(r.stderr, "libvirt domain evil defined and started") {
		t.Errorf("key-less receive of a forgery:\n%s", r.stderr)
	}
	r = s.mustRun("receive", s.dest, forged, "--out", filepath.Join(dir, "quiet"), "-i", s.key, "-q")
	if strings.Contains(r.stderr, "not authenticated") {
		t.Errorf("-q does not hide the notice:\n%s", r.stderr)
	}
	r = s.mustRun("receive", s.dest, forged, "--out", filepath.Join(dir, "json"), "-i", s.key, "--json")
	if !strings.Contains(r.stdout, `{"message":"the sender of `+forged+` is not authenticated`) {
		t.Errorf("--json: no notice object:\n%s", r.stdout)
	}
}

func TestTrustForgerySFTP(t *testing.T) {
	_, dest, auth := sftpEnv(t)
	testForgery(t, newTrustSite(t, dest, auth...), false)
}

func TestTrustForgeryS3(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	testForgery(t, newTrustSite(t, "s3://"+srv.Bucket+"/dr/web01"), false)
}

func testForgery(t *testing.T, s *trustSite, libvirt bool) {
	src := t.TempDir()
	real := s.sendSigned(domainDir(t, filepath.Join(src, "real"), "web01"))
	forged := s.forge(domainDir(t, filepath.Join(src, "evil"), "evil"))
	attackerKey, _ := sshKeygen(t, "ed25519", "")
	bySelf := s.forge(domainDir(t, filepath.Join(src, "evil-signed"), "evil"), "--sign-key", attackerKey)
	trusted := []string{"--trusted-senders", s.allowed}
	var lv []string
	if libvirt {
		lv = libvirtArgs
	}

	// What key-less checks cannot tell: the forgery opens with the
	// destination's identity.
	s.mustRun("verify", s.dest, forged, "-i", s.key)
	for _, tc := range []struct{ id, why string }{{forged, "no signed object: not signed"}, {bySelf, "signer is not trusted"}} {
		for _, args := range [][]string{{"verify", s.dest, tc.id}, {"verify", s.dest, tc.id, "-i", s.key}, {"show", s.dest, tc.id, "-i", s.key}} {
			if r := s.run(append(args, trusted...)...); r.code != exitAuth || !strings.Contains(r.stderr, tc.why) {
				t.Errorf("%s --trusted-senders of a forgery: exit %d, want 4 saying %q:\n%s", strings.Join(args, " "), r.code, tc.why, r.stderr)
			}
		}
		out := filepath.Join(s.dir, "out-"+tc.id)
		args := append([]string{"receive", s.dest, tc.id, "--out", out, "-i", s.key}, append(s.receiveHooks(), lv...)...)
		r := s.run(append(args, trusted...)...)
		if r.code != exitAuth || !strings.Contains(r.stderr, tc.why) || !strings.Contains(r.stderr, s.allowed) {
			t.Errorf("receive --trusted-senders of a forgery: exit %d, want 4 saying %q:\n%s", r.code, tc.why, r.stderr)
		}
		missing(t, out)
		if ran := s.hooksRan(); len(ran) > 0 || strings.Contains(r.stderr, "libvirt domain") {
			t.Errorf("receive of a forgery ran %v:\n%s", ran, r.stderr)
		}
	}

	// latest is the newest shipment that verifies; each newer one is named
	// with why.
	out := filepath.Join(s.dir, "out")
	r := s.mustRun(append(append([]string{"receive", s.dest, "--out", out, "-i", s.key}, append(s.receiveHooks(), lv...)...), trusted...)...)
	for _, want := range []string{"warning: skipping shipment " + forged + ": no signed object: not signed",
		"warning: skipping shipment " + bySelf + ": signature: signer is not trusted"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("receive latest does not say %q:\n%s", want, r.stderr)
		}
	}
	if env := readEnv(t, s.hooks, "post-receive"); env["COLDSHIP_SHIPMENT"] != real {
		t.Errorf("post-receive ran on %s, want the real shipment %s", env["COLDSHIP_SHIPMENT"], real)
	}
	if _, err := os.Stat(filepath.Join(out, "web01", "web01.img")); err != nil {
		t.Errorf("the real shipment was not restored: %v", err)
	}
	if libvirt && (!strings.Contains(r.stderr, "libvirt domain web01 defined and started") || strings.Contains(r.stderr, "evil")) {
		t.Errorf("receive latest defined another domain:\n%s", r.stderr)
	}
	if strings.Contains(r.stderr, "not authenticated") {
		t.Errorf("receive --trusted-senders says the sender is not authenticated:\n%s", r.stderr)
	}
	if r := s.mustRun(append([]string{"verify", s.dest}, trusted...)...); !strings.Contains(r.stderr, real+": authenticated (signed by site-a (ssh-ed25519 SHA256:") {
		t.Errorf("verify --trusted-senders does not say who signed:\n%s", r.stderr)
	}
	if r := s.mustRun(append([]string{"verify", s.dest, real, "-i", s.key}, trusted...)...); !strings.Contains(r.stderr, "authenticated (signed by site-a") ||
		!strings.Contains(r.stderr, "every block authentic") {
		t.Errorf("verify -i --trusted-senders:\n%s", r.stderr)
	}
	checkListTrust(t, s, map[string]string{real: "site-a", forged: "unsigned", bySelf: "untrusted"})
	r = s.run(append([]string{"verify", "--all", s.dest}, trusted...)...)
	if r.code != exitAuth || !strings.Contains(r.stderr, "problem: shipment "+forged+": no signed object: not signed") ||
		!strings.Contains(r.stderr, "problem: shipment "+bySelf+": signature: signer is not trusted") || strings.Contains(r.stderr, "shipment "+real) {
		t.Errorf("verify --all --trusted-senders: exit %d:\n%s", r.code, r.stderr)
	}
	s.mustRun("verify", "--all", s.dest)
	if r := s.mustRun(append([]string{"show", s.dest, "-i", s.key}, trusted...)...); !strings.Contains(r.stdout, "shipment  "+real) ||
		!strings.Contains(r.stdout, "signer    site-a (ssh-ed25519 SHA256:") {
		t.Errorf("show --trusted-senders:\n%s", r.stdout)
	}
}

// checkListTrust checks list --trusted-senders, in columns and in JSON,
// and list --json without it.
func checkListTrust(t *testing.T, s *trustSite, want map[string]string) {
	t.Helper()
	r := s.mustRun("list", s.dest, "--trusted-senders", s.allowed)
	for id, w := range want {
		if !strings.Contains(r.stdout, id+"\t") || !strings.Contains(r.stdout, "\t"+w+"\n") {
			t.Errorf("list --trusted-senders: %s is not %q:\n%s", id, w, r.stdout)
		}
	}
	for _, trust := range []bool{true, false} {
		args := []string{"list", s.dest, "--json"}
		if trust {
			args = append(args, "--trusted-senders", s.allowed)
		}
		r := s.mustRun(args...)
		for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			var o map[string]any
			if err := json.Unmarshal([]byte(line), &o); err != nil {
				t.Fatal(err)
			}
			checkSchema(t, o)
			id, _ := o["id"].(string)
			w, ok := want[id]
			if !ok {
				continue
			}
			switch {
			case !trust && o["trust"] != nil, trust && w == "site-a" && (o["signer"] != "site-a" || o["trust"] != "trusted"),
				trust && w != "site-a" && (o["signer"] != nil || o["trust"] != w):
				t.Errorf("list --json (trusted senders: %v): %s: %v", trust, id, o)
			case w == "site-a" && (o["chain"] == nil || o["previous"] != nil), w == "unsigned" && o["chain"] != nil:
				t.Errorf("list --json (trusted senders: %v): chain of %s: %v", trust, id, o)
			case w == "untrusted" && trust == (o["chain"] != nil):
				t.Errorf("list --json: the chain of an untrusted shipment shown with trusted senders, or not without: %v", o)
			}
		}
	}
}

// TestTrustFutureDated: the forgery with an id dated 2999 is never latest:
// without --trusted-senders it is skipped as dated ahead, with them as not
// verified; hooks and --libvirt-define run on the real shipment; prune does
// not count it.
func TestTrustFutureDated(t *testing.T) {
	requireTool(t, "virsh")
	dir := t.TempDir()
	s := newTrustSite(t, filepath.Join(dir, "dest"))
	old := s.sendSigned(domainDir(t, filepath.Join(dir, "old"), "web01"))
	real := s.sendSigned(domainDir(t, filepath.Join(dir, "real"), "web01"))
	// The attacker's coldship, its clock set to 2999.
	sources, err := archive.CollectSources([]string{domainDir(t, filepath.Join(dir, "evil"), "evil")})
	if err != nil {
		t.Fatal(err)
	}
	rcpt, _ := age.ParseX25519Recipient(s.rcpt)
	tr, _ := local.New(s.dest)
	res, err := shipper.Send(context.Background(), tr, sources, shipper.SendOptions{Recipients: []age.Recipient{rcpt},
		Now: func() time.Time { return time.Date(2999, 12, 31, 23, 0, 0, 0, time.UTC) }})
	if err != nil {
		t.Fatal(err)
	}
	future := res.ID

	for _, trusted := range [][]string{nil, {"--trusted-senders", s.allowed}} {
		out := filepath.Join(dir, fmt.Sprintf("out-%d", len(trusted)))
		args := append(append([]string{"receive", s.dest, "--out", out, "-i", s.key, "-q"}, s.receiveHooks()...), libvirtArgs...)
		r := s.mustRun(append(args, trusted...)...)
		if !strings.Contains(r.stderr, "warning: skipping "+future+": dated 2999-12-31T23:00:00Z, more than 24h0m0s ahead") {
			t.Errorf("receive latest (%v) does not name the future shipment, even with -q:\n%s", trusted, r.stderr)
		}
		if env := readEnv(t, s.hooks, "post-receive"); env["COLDSHIP_SHIPMENT"] != real {
			t.Errorf("post-receive ran on %s, want %s", env["COLDSHIP_SHIPMENT"], real)
		}
		missing(t, filepath.Join(out, "evil"))
		if r := s.mustRun(append([]string{"verify", s.dest}, trusted...)...); !strings.Contains(r.stderr, real+": ") {
			t.Errorf("verify latest (%v):\n%s", trusted, r.stderr)
		}
	}
	// Named explicitly: the key-less receive takes it (that is what naming
	// does), with --trusted-senders it is refused.
	if r := s.run("receive", s.dest, future, "--out", filepath.Join(dir, "f"), "-i", s.key, "--trusted-senders", s.allowed); r.code != exitAuth {
		t.Errorf("receive --trusted-senders of the future forgery: exit %d\n%s", r.code, r.stderr)
	}
	// prune counts it for no rule: the real shipment is the last one.
	for _, trusted := range [][]string{nil, {"--trusted-senders", s.allowed}} {
		r := s.mustRun(append([]string{"prune", s.dest, "--keep-last", "1", "--dry-run"}, trusted...)...)
		if strings.TrimSpace(r.stdout) != old || !strings.HasPrefix(pruneLine(r.stderr, future), "ignore "+future) ||
			!strings.Contains(pruneLine(r.stderr, real), "last 1") ||
			!strings.Contains(r.stderr, "warning: 1 shipment at") {
			t.Errorf("prune --keep-last 1 (%v): stdout %q\n%s", trusted, r.stdout, r.stderr)
		}
	}
}

// TestTrustRollback: the newest shipment deleted, receive --into refuses
// the previous one (exit 5, both ids named) unless --allow-rollback; a
// shipment of another chain likewise; the marker records the chain.
func TestTrustRollback(t *testing.T) {
	dir := t.TempDir()
	s := newTrustSite(t, filepath.Join(dir, "dest"))
	img := filepath.Join(dir, "vm", "disk.img")
	os.MkdirAll(filepath.Dir(img), 0o755)
	version := func(v string) {
		makeImage(t, img, 128<<10, region{0, 64 << 10, "random"})
		f, _ := os.OpenFile(img, os.O_WRONLY, 0)
		f.WriteAt([]byte(v), 0)
		f.Close()
	}
	holds := func(into, v string) {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(into, "vm", "disk.img"))
		if err != nil || !strings.HasPrefix(string(b), v) {
			t.Fatalf("%s does not hold version %s (%v)", into, v, err)
		}
	}
	trusted := []string{"--trusted-senders", s.allowed}
	version("v1")
	a := s.sendSigned(filepath.Join(dir, "vm"))
	version("v2")
	b := s.sendSigned(filepath.Join(dir, "vm"))
	into := filepath.Join(dir, "dr")
	s.mustRun(append([]string{"receive", s.dest, "--into", into, "-i", s.key, "-q"}, trusted...)...)
	holds(into, "v2")
	files := []archive.File{{Path: "vm", Type: archive.TypeDir}, {Path: "vm/disk.img", Type: archive.TypeFile}}
	h, ok, err := restore.Held(into, files)
	signed := mustReadFile(t, filepath.Join(s.dest, b, archive.SignedObject))
	if !ok || err != nil || h.Shipment != b || h.Chain != statementOf(t, s.dest, b).Chain || h.Statement != archive.StatementDigest(signed) {
		t.Fatalf("the restore marker does not record %s's chain and statement: %+v %v %v", b, h, ok, err)
	}

	// The attacker deletes the newest shipment: latest is now a.
	os.RemoveAll(filepath.Join(s.dest, b))
	for _, trust := range [][]string{trusted, nil} {
		r := s.run(append(append([]string{"receive", s.dest, "--into", into, "-i", s.key}, s.receiveHooks()...), trust...)...)
		if r.code != exitIntegrity || !strings.Contains(r.stderr, "refusing to roll back: shipment "+a+" is older than "+b) ||
			!strings.Contains(r.stderr, "--allow-rollback") || len(s.hooksRan()) > 0 {
			t.Errorf("rollback (%v): exit %d, hooks %v:\n%s", trust, r.code, s.hooksRan(), r.stderr)
		}
		holds(into, "v2")
	}
	r := s.mustRun(append([]string{"receive", s.dest, "--into", into, "-i", s.key, "--allow-rollback"}, trusted...)...)
	if !strings.Contains(r.stderr, "--allow-rollback: refusing to roll back") {
		t.Errorf("--allow-rollback does not say what it allowed:\n%s", r.stderr)
	}
	holds(into, "v1")

	// The source lost its state: a new chain, refused until allowed.
	s.state = filepath.Join(dir, "state2")
	version("v3")
	c := s.sendSigned(filepath.Join(dir, "vm"))
	r = s.run(append([]string{"receive", s.dest, "--into", into, "-i", s.key}, trusted...)...)
	if r.code != exitIntegrity || !strings.Contains(r.stderr, "shipment "+c+" belongs to chain") || !strings.Contains(r.stderr, "the restore holds "+a) {
		t.Errorf("another chain: exit %d:\n%s", r.code, r.stderr)
	}
	// Without trusted senders there is no chain to compare: c is newer.
	s.mustRun("receive", s.dest, "--into", into, "-i", s.key, "-q")
	holds(into, "v3")
	// That restore recorded no chain (its signature was not checked): the
	// next trusted update is held to the age rule only, and the same
	// shipment again is no rollback.
	if h, _, _ := restore.Held(into, files); h.Chain != "" {
		t.Errorf("a key-less receive recorded chain %q", h.Chain)
	}
	s.mustRun(append([]string{"receive", s.dest, c, "--into", into, "-i", s.key, "-q"}, trusted...)...)
	if r := s.run("receive", s.dest, a, "--into", into, "-i", s.key); r.code != exitIntegrity || !strings.Contains(r.stderr, c) {
		t.Errorf("older, key-less: exit %d:\n%s", r.code, r.stderr)
	}
	if r := s.run("receive", s.dest, a, "--out", filepath.Join(dir, "o"), "-i", s.key, "--allow-rollback"); r.code != exitUsage {
		t.Errorf("--allow-rollback without --into: exit %d", r.code)
	}
}

// TestTrustJunkFolder: a folder 29991231T235959Z-... holding a file named
// manifest is never latest and prune --keep-last 1 keeps the newest real
// shipment.
func TestTrustJunkFolder(t *testing.T) {
	dir := t.TempDir()
	s := newTrustSite(t, filepath.Join(dir, "dest"))
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 128<<10, region{0, 64 << 10, "random"})
	a := s.sendSigned(src)
	b := s.sendSigned(src)
	junk := filepath.Join(s.dest, "29991231T235959Z-ffffffff")
	os.MkdirAll(junk, 0o755)
	os.WriteFile(filepath.Join(junk, "manifest"), []byte("junk"), 0o644)

	for _, trusted := range [][]string{nil, {"--trusted-senders", s.allowed}} {
		out := filepath.Join(dir, fmt.Sprintf("out-%d", len(trusted)))
		r := s.run(append([]string{"receive", s.dest, "--out", out, "-i", s.key}, trusted...)...)
		if r.code != 0 || !strings.Contains(r.stderr, "skipping 29991231T235959Z-ffffffff") {
			t.Errorf("receive latest (%v): exit %d:\n%s", trusted, r.code, r.stderr)
		}
		sameFile(t, src, filepath.Join(out, "disk.img"))
		r = s.mustRun(append([]string{"prune", s.dest, "--keep-last", "1", "--dry-run"}, trusted...)...)
		if strings.TrimSpace(r.stdout) != a {
			t.Errorf("prune --keep-last 1 --dry-run (%v) would delete %q, want %s:\n%s", trusted, r.stdout, a, r.stderr)
		}
	}
	r := s.mustRun("prune", s.dest, "--keep-last", "1", "-q")
	if strings.TrimSpace(r.stdout) != a || !strings.Contains(r.stderr, "warning: left alone, counted for no rule: 29991231T235959Z-ffffffff: header unreadable") {
		t.Errorf("prune -q: stdout %q:\n%s", r.stdout, r.stderr)
	}
	for _, p := range []string{filepath.Join(s.dest, b, "manifest"), filepath.Join(junk, "manifest")} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("prune deleted %s", p)
		}
	}
}

// TestTrustStrippedBases: the bases stripped from the newest shipment's
// plaintext inventory. prune --trusted-senders keeps them; key-less prune
// believes the inventory (what key-less cannot prove); key-less verify
// fails on the statement until the attacker removes it too.
func TestTrustStrippedBases(t *testing.T) {
	dir := t.TempDir()
	s := newTrustSite(t, filepath.Join(dir, "dest"))
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 4<<20, region{0, 4 << 20, "random"})
	a := s.sendSigned(src, "--base", "latest")
	change := func(off int64) {
		f, _ := os.OpenFile(src, os.O_WRONLY, 0)
		f.WriteAt([]byte("changed"), off)
		f.Close()
	}
	change(0)
	b := s.sendSigned(src, "--base", "latest")
	change(3 << 20)
	c := s.sendSigned(src, "--base", "latest")
	invPath := filepath.Join(s.dest, c, archive.InventoryObject)
	inv, err := archive.ParseInventory(mustReadFile(t, invPath))
	if err != nil || len(inv.BaseIDs()) == 0 {
		t.Fatalf("the incremental shipment lists no bases: %v %v", inv, err)
	}
	inv.Bases = nil
	ib, _ := inv.Marshal()
	os.WriteFile(invPath, ib, 0o644)

	trusted := []string{"--trusted-senders", s.allowed}
	r := s.mustRun(append([]string{"prune", s.dest, "--keep-last", "1", "--dry-run"}, trusted...)...)
	if strings.TrimSpace(r.stdout) != "" || !strings.HasPrefix(pruneLine(r.stderr, c), "ignore "+c) || !strings.Contains(r.stderr, "inventory differs from it") ||
		!strings.Contains(pruneLine(r.stderr, a), "base of "+b) {
		t.Errorf("prune --trusted-senders would delete %q:\n%s", r.stdout, r.stderr)
	}
	r = s.mustRun("prune", s.dest, "--keep-last", "1", "--dry-run")
	if got := strings.Fields(r.stdout); len(got) != 2 || got[0] != a || got[1] != b {
		t.Errorf("key-less prune: would delete %q (it believes the plaintext inventory: README says so)", r.stdout)
	}
	checkListTrust(t, s, map[string]string{c: "tampered"})

	// Key-less verify checks the statement the shipment carries...
	if r := s.run("verify", s.dest, c); r.code != exitIntegrity || !strings.Contains(r.stderr, "inventory differs from it") {
		t.Errorf("key-less verify of the stripped shipment: exit %d:\n%s", r.code, r.stderr)
	}
	if r := s.run("verify", "--all", s.dest); r.code != exitIntegrity || !strings.Contains(r.stderr, "problem: "+c+"/signed: shipment "+c) {
		t.Errorf("key-less verify --all: exit %d:\n%s", r.code, r.stderr)
	}
	// ...which the attacker can remove: then only a trusted key tells.
	os.Remove(filepath.Join(s.dest, c, archive.SignedObject))
	os.Remove(filepath.Join(s.dest, c, archive.SignatureObject))
	if r := s.run("verify", s.dest, c); r.code != 0 || !strings.Contains(r.stderr, "not authenticated") {
		t.Errorf("key-less verify without the statement: exit %d:\n%s", r.code, r.stderr)
	}
	if r := s.run(append([]string{"verify", s.dest, c}, trusted...)...); r.code != exitAuth {
		t.Errorf("verify --trusted-senders without the statement: exit %d:\n%s", r.code, r.stderr)
	}
}

// TestTrustSwappedKeySlot: a key slot replaced by one wrapping the
// attacker's key (the inventory updated to match): the key binding of the
// sealed manifest refuses it (exit 5), the signature too (exit 4).
func TestTrustSwappedKeySlot(t *testing.T) {
	dir := t.TempDir()
	s := newTrustSite(t, filepath.Join(dir, "dest"))
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 128<<10, region{0, 64 << 10, "random"})
	id := s.sendSigned(src)
	rcpt, _ := age.ParseX25519Recipient(s.rcpt)
	k, _ := cipher.NewKey()
	wrapped, _ := k.Wrap(rcpt)
	if err := v3test.ReplaceObject(s.dest, id, "keys/0000", wrapped); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, exitIntegrity, "manifest: integrity check failed"},
		{[]string{"--trusted-senders", s.allowed}, exitAuth, "keys/0000 differs from it"},
	} {
		out := filepath.Join(dir, fmt.Sprintf("out-%d", tc.code))
		r := s.run(append([]string{"receive", s.dest, id, "--out", out, "-i", s.key}, tc.args...)...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("receive %v: exit %d, want %d saying %q:\n%s", tc.args, r.code, tc.code, tc.want, r.stderr)
		}
		missing(t, out)
	}
}

// TestTrustForgedHugeManifest: issue 13's 8 TiB forged manifest, with
// --trusted-senders: refused before its manifest is used (exit 4), signed
// by the attacker or not, no temporary file, nothing written.
func TestTrustForgedHugeManifest(t *testing.T) {
	dir := t.TempDir()
	s := newTrustSite(t, filepath.Join(dir, "dest"))
	r, _ := age.ParseX25519Recipient(s.rcpt)
	const bs = 1 << 20
	big := []v3test.File{{Path: "big.img", Size: 8 << 40, Blocks: []int64{0, (8<<40)/bs - 1}, Content: v3test.Pattern(3, "d0")}}
	forge := func() string {
		id, err := v3test.Write(s.dest, big, v3test.Options{BlockSize: bs, Recipients: []age.Recipient{r}, Now: time.Now().Truncate(time.Second),
			Tamper: func(m *archive.Manifest) { m.Files[0].DataBlocks, m.Files[0].DataBytes = 8<<20, 8<<40 }})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	unsigned := forge()
	bySelf := forge()
	attacker, _ := sshKeygen(t, "ed25519", "")
	signer, err := readSigner(attacker)
	if err != nil {
		t.Fatal(err)
	}
	tr, _ := local.New(s.dest)
	inv, err := os.ReadFile(filepath.Join(s.dest, bySelf, archive.InventoryObject))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := shipper.SignShipment(context.Background(), tr, bySelf, sha256.Sum256(inv), signer, shipper.ChainLink{Chain: archive.NewChainID()}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{unsigned, bySelf} {
		out := filepath.Join(dir, "out-"+id)
		res := s.run("receive", s.dest, id, "--out", out, "-i", s.key, "--trusted-senders", s.allowed)
		if res.code != exitAuth {
			t.Errorf("receive --trusted-senders of the forged 8 TiB manifest: exit %d:\n%s", res.code, res.stderr)
		}
		if left, _ := filepath.Glob(filepath.Join(out, ".*.coldship-*")); len(left) != 0 {
			t.Errorf("temporary files left: %v", left)
		}
		missing(t, out)
	}
}

// TestTrustedSendersErrors: a file that does not load is a usage error for
// every command that takes it; the environment variable is the flag.
func TestTrustedSendersErrors(t *testing.T) {
	dir := t.TempDir()
	s := newTrustSite(t, filepath.Join(dir, "dest"))
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 64<<10, region{0, 64 << 10, "random"})
	forged := s.forge(src)
	bad := writeAllowedSigners(t, "site-a ssh-ed25519 not-base64")
	out := filepath.Join(dir, "out")
	for _, file := range []string{bad, filepath.Join(dir, "nope")} {
		for _, args := range [][]string{
			{"receive", s.dest, "--out", out, "-i", s.key}, {"verify", s.dest}, {"list", s.dest},
			{"prune", s.dest, "--keep-last", "1", "--dry-run"}, {"show", s.dest, "-i", s.key},
		} {
			if r := s.run(append(args, "--trusted-senders", file)...); r.code != exitUsage || !strings.Contains(r.stderr, "--trusted-senders") {
				t.Errorf("%s with allowed signers %s: exit %d:\n%s", args[0], filepath.Base(file), r.code, r.stderr)
			}
		}
	}
	missing(t, out)
	if r := s.run("receive", "-", "--live", "--out", out, "--trusted-senders", s.allowed); r.code != exitUsage || !strings.Contains(r.stderr, "live session") {
		t.Errorf("receive --live --trusted-senders: exit %d:\n%s", r.code, r.stderr)
	}
	t.Setenv("COLDSHIP_TRUSTED_SENDERS", s.allowed)
	if r := s.run("receive", s.dest, forged, "--out", out, "-i", s.key); r.code != exitAuth {
		t.Errorf("COLDSHIP_TRUSTED_SENDERS: exit %d:\n%s", r.code, r.stderr)
	}
	missing(t, out)
}
