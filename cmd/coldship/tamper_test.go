package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// recLen is the sealed length of a full 64 KiB block: salt and commitment,
// four full 16 KiB chunks and an empty final chunk, each with a 16-byte tag.
const recLen = 56 + 64<<10 + 5*16

type tamperFixture struct {
	key, dest, id, other string
	dir                  string
}

// newTamperFixture ships two random files (A then B, three blocks each)
// with one job and one stream, so segment 1 holds A0 A1 A2 B0 B1 B2 in
// that order, and a second shipment of the same files.
func newTamperFixture(t *testing.T) *tamperFixture {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	makeImage(t, filepath.Join(src, "a.img"), 3*testBS, region{0, 3 * testBS, "random"})
	makeImage(t, filepath.Join(src, "b.img"), 3*testBS, region{0, 3 * testBS, "random"})
	dest := filepath.Join(dir, "dest")
	send := func() string {
		return strings.TrimSpace(mustRun(t, "send", filepath.Join(src, "a.img"), filepath.Join(src, "b.img"), "--to", dest,
			"-r", rcpt, "--block-size", "64K", "-j", "1", "--streams", "1", "-q").stdout)
	}
	f := &tamperFixture{key: key, dest: dest, dir: dir}
	f.id = send()
	f.other = send()
	return f
}

func (f *tamperFixture) obj(name string) string { return filepath.Join(f.dest, f.id, name) }

func readAt(t *testing.T, path string, off, n int64) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), b[off:off+n]...)
}

func writeAt(t *testing.T, path string, off int64, p []byte) {
	fh, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
}

func flip(t *testing.T, path string, off int64) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if off < 0 {
		off += int64(len(b))
	}
	writeAt(t, path, off, []byte{b[off] ^ 0x20})
}

func TestTamperGivesExit5(t *testing.T) {
	seg := "segments/00000001"
	tests := []struct {
		name      string
		tamper    func(t *testing.T, f *tamperFixture)
		inventory bool // a keyless verify also catches it
	}{
		{"flip header", func(t *testing.T, f *tamperFixture) { flip(t, f.obj("header"), 30) }, true},
		{"flip wrapped key", func(t *testing.T, f *tamperFixture) { flip(t, f.obj("keys/0000"), -5) }, true},
		{"flip segment body", func(t *testing.T, f *tamperFixture) { flip(t, f.obj(seg), recLen+1000) }, true},
		{"flip segment salt", func(t *testing.T, f *tamperFixture) { flip(t, f.obj(seg), 3) }, true},
		{"flip last tag", func(t *testing.T, f *tamperFixture) { flip(t, f.obj(seg), -1) }, true},
		{"flip manifest", func(t *testing.T, f *tamperFixture) { flip(t, f.obj("manifest"), -20) }, true},
		{"flip inventory", func(t *testing.T, f *tamperFixture) { flip(t, f.obj("inventory"), -80) }, true},
		{"truncate segment", func(t *testing.T, f *tamperFixture) {
			fi, _ := os.Stat(f.obj(seg))
			os.Truncate(f.obj(seg), fi.Size()-100)
		}, true},
		{"append to segment", func(t *testing.T, f *tamperFixture) {
			fh, _ := os.OpenFile(f.obj(seg), os.O_APPEND|os.O_WRONLY, 0)
			fh.Write([]byte("trailing garbage"))
			fh.Close()
		}, true},
		{"swap two blocks", func(t *testing.T, f *tamperFixture) {
			a, b := readAt(t, f.obj(seg), 0, recLen), readAt(t, f.obj(seg), recLen, recLen)
			writeAt(t, f.obj(seg), 0, b)
			writeAt(t, f.obj(seg), recLen, a)
		}, true},
		{"block copied from another file", func(t *testing.T, f *tamperFixture) {
			writeAt(t, f.obj(seg), 0, readAt(t, f.obj(seg), 3*recLen, recLen)) // B0 over A0
		}, true},
		{"block copied from another shipment", func(t *testing.T, f *tamperFixture) {
			writeAt(t, f.obj(seg), 0, readAt(t, filepath.Join(f.dest, f.other, seg), 0, recLen))
		}, true},
		{"delete segment", func(t *testing.T, f *tamperFixture) { os.Remove(f.obj(seg)) }, true},
		{"delete manifest", func(t *testing.T, f *tamperFixture) { os.Remove(f.obj("manifest")) }, true},
		{"delete wrapped key", func(t *testing.T, f *tamperFixture) { os.Remove(f.obj("keys/0000")) }, true},
		{"delete header", func(t *testing.T, f *tamperFixture) { os.Remove(f.obj("header")) }, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newTamperFixture(t)
			mustRun(t, "verify", f.dest, f.id, "-i", f.key)
			tc.tamper(t, f)
			out := filepath.Join(f.dir, "out")
			r := run(t, "receive", f.dest, f.id, "--out", out, "-i", f.key)
			if r.code != exitIntegrity {
				t.Errorf("receive: exit %d, want %d; stderr: %s", r.code, exitIntegrity, r.stderr)
			}
			if !strings.Contains(r.stderr, f.id) {
				t.Errorf("receive error does not name the shipment: %s", r.stderr)
			}
			noFinalFiles(t, out)
			if r := run(t, "verify", f.dest, f.id, "-i", f.key); r.code != exitIntegrity {
				t.Errorf("verify -i: exit %d, want %d; stderr: %s", r.code, exitIntegrity, r.stderr)
			}
			if tc.inventory {
				if r := run(t, "verify", f.dest, f.id); r.code != exitIntegrity {
					t.Errorf("verify (inventory): exit %d, want %d; stderr: %s", r.code, exitIntegrity, r.stderr)
				}
			}
			// The other shipment is untouched and still restores.
			mustRun(t, "receive", f.dest, f.other, "--out", filepath.Join(f.dir, "other"), "-i", f.key, "-q")
		})
	}
}

func TestWrongKeyGivesExit4(t *testing.T) {
	_, rcpt := keypair(t)
	wrong, _ := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 200<<10, region{0, 200 << 10, "random"})
	dest := filepath.Join(dir, "dest")
	id := strings.TrimSpace(mustRun(t, "send", src, "--to", dest, "-r", rcpt, "-q").stdout)
	out := filepath.Join(dir, "out")
	for _, args := range [][]string{
		{"receive", dest, id, "--out", out, "-i", wrong},
		{"verify", dest, id, "-i", wrong},
	} {
		r := run(t, args...)
		if r.code != exitAuth || !strings.Contains(r.stderr, "no identity matches") {
			t.Errorf("%s with the wrong identity: exit %d, stderr %q; want 4", args[0], r.code, r.stderr)
		}
	}
	noFinalFiles(t, out)
}

func TestPassphrase(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 300<<10, region{0, 100 << 10, "random"})
	dest := filepath.Join(dir, "dest")
	pf := filepath.Join(dir, "pass")
	os.WriteFile(pf, []byte("correct horse battery staple\n"), 0o600)

	id := strings.TrimSpace(mustRun(t, "send", src, "--to", dest, "--passphrase-file", pf, "-q").stdout)
	mustRun(t, "receive", dest, id, "--out", filepath.Join(dir, "a"), "--passphrase-file", pf, "-q")
	sameFile(t, src, filepath.Join(dir, "a", "disk.img"))

	t.Setenv("COLDSHIP_PASSPHRASE", "correct horse battery staple")
	mustRun(t, "receive", dest, id, "--out", filepath.Join(dir, "b"), "-q")
	sameFile(t, src, filepath.Join(dir, "b", "disk.img"))

	t.Setenv("COLDSHIP_PASSPHRASE", "wrong horse")
	r := run(t, "receive", dest, id, "--out", filepath.Join(dir, "c"))
	if r.code != exitAuth {
		t.Errorf("wrong passphrase: exit %d, want 4; stderr %s", r.code, r.stderr)
	}
	if strings.Contains(r.stderr, "wrong horse") || strings.Contains(r.stderr, "correct horse") {
		t.Errorf("a passphrase appears in the error output: %s", r.stderr)
	}
	noFinalFiles(t, filepath.Join(dir, "c"))
}

func TestKeygen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "id.txt")
	r := mustRun(t, "keygen", "-o", p)
	if !strings.HasPrefix(r.stdout, "age1") || strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("keygen stdout = %q, want one age1 recipient line", r.stdout)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity file mode %v, %v; want 0600", fi.Mode(), err)
	}
	b, _ := os.ReadFile(p)
	if r := run(t, "keygen", "-o", p); r.code == 0 {
		t.Error("keygen overwrote an existing identity file")
	}
	if b2, _ := os.ReadFile(p); string(b2) != string(b) {
		t.Error("identity file changed")
	}
}
