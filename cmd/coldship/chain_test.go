package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/internal/vmtest"
)

// chainSite is a source host's images: a chain of three qcow2 layers
// (base, mid on base by a relative name, top on mid by its absolute
// path, as libvirt names layers) and a second overlay, clone, on the same
// base (by "../images/base.qcow2"), each layer with data of its own.
type chainSite struct {
	root                  string
	base, mid, top, clone string
}

func newChainSite(t *testing.T) chainSite {
	t.Helper()
	root := filepath.Join(t.TempDir(), "site-a")
	s := chainSite{root: root}
	for _, d := range []string{"images", "vm1", "vm2"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	images := filepath.Join(root, "images")
	s.base = qemuImg(t, images, "base.qcow2", "", 0x11, 0, 2<<20)
	s.mid = qemuImg(t, images, "mid.qcow2", "base.qcow2", 0x22, 1<<20, 1<<20)
	s.top = qemuImg(t, filepath.Join(root, "vm1"), "top.qcow2", s.mid, 0x33, 3<<20, 64<<10)
	s.clone = qemuImg(t, filepath.Join(root, "vm2"), "clone.qcow2", "../images/base.qcow2", 0x44, 5<<20, 64<<10)
	return s
}

// away moves the site aside for the rest of f, so that no source path
// exists while f runs.
func (s chainSite) away(t *testing.T, f func()) {
	t.Helper()
	if err := os.Rename(s.root, s.root+".away"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := os.Rename(s.root+".away", s.root); err != nil {
			t.Fatal(err)
		}
	}()
	f()
}

// chainImage is one image of qemu-img info --backing-chain --output=json.
type chainImage struct {
	Filename            string `json:"filename"`
	Format              string `json:"format"`
	BackingFilename     string `json:"backing-filename"`
	FullBackingFilename string `json:"full-backing-filename"`
	BackingFormat       string `json:"backing-filename-format"`
}

// checkRestoredChain checks the restored overlay at restored, with the
// source at srcRoot moved away: qemu-img check passes on every layer, and its
// chain, as qemu-img info --backing-chain reads it, has layers layers,
// all under out, with relative backing names and no source path left.
func checkRestoredChain(t *testing.T, srcRoot, out, restored string, layers int) {
	t.Helper()
	b, err := exec.Command("qemu-img", "info", "--backing-chain", "--output=json", restored).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img info --backing-chain %s: %v\n%s", restored, err, b)
	}
	if strings.Contains(string(b), srcRoot) {
		t.Errorf("the restored chain of %s still names a source path:\n%s", restored, b)
	}
	var chain []chainImage
	if err := json.Unmarshal(b, &chain); err != nil {
		t.Fatal(err)
	}
	if len(chain) != layers {
		t.Fatalf("the restored chain of %s has %d layers, want %d:\n%s", restored, len(chain), layers, b)
	}
	for i, img := range chain {
		if !strings.HasPrefix(img.Filename, out+"/") || img.Format != "qcow2" {
			t.Errorf("layer %d of %s: %s (%s), want a qcow2 under %s", i, restored, img.Filename, img.Format, out)
		}
		if i == len(chain)-1 {
			if img.BackingFilename != "" {
				t.Errorf("the base %s names a backing file %q", img.Filename, img.BackingFilename)
			}
			continue
		}
		if filepath.IsAbs(img.BackingFilename) || img.BackingFormat != "qcow2" || img.FullBackingFilename != chain[i+1].Filename {
			t.Errorf("layer %s names %q (%s): want a relative name of %s, format qcow2", img.Filename, img.BackingFilename, img.BackingFormat, chain[i+1].Filename)
		}
		vmtest.Run(t, "qemu-img", "check", "-q", img.Filename)
	}
}

// compareChain checks that the restored overlay reads, through its chain,
// as the source overlay does through its own.
func compareChain(t *testing.T, source, restored string) {
	t.Helper()
	b, err := exec.Command("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", source, restored).CombinedOutput()
	if err != nil || !strings.Contains(string(b), "Images are identical") {
		t.Errorf("qemu-img compare %s %s: %v\n%s", source, restored, err, b)
	}
}

// TestChainRoundTrip ships two overlays that share a base, one of them
// through a middle layer, over the local destination and SFTP, naming only
// the overlays; receives them where the source paths do not exist; and
// checks the restored chains with qemu-img. Over SFTP the VM folders are
// the sources, so the layers land in a folder of one overlay and the other
// reads its base from there.
func TestChainRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		dest func(t *testing.T) (string, []string)
		args func(s chainSite) []string
		top  string // restored, relative to out
		cl   string
	}{
		{"local",
			func(t *testing.T) (string, []string) { return filepath.Join(t.TempDir(), "dest"), nil },
			func(s chainSite) []string { return []string{s.top, s.clone} },
			"top.qcow2", "clone.qcow2"},
		{"sftp",
			func(t *testing.T) (string, []string) { _, dest, auth := sftpEnv(t); return dest, auth },
			func(s chainSite) []string {
				return []string{filepath.Dir(s.top), filepath.Dir(s.clone)}
			},
			"vm1/top.qcow2", "vm2/clone.qcow2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key, rcpt := keypair(t)
			s := newChainSite(t)
			dest, auth := tc.dest(t)
			r := mustRun(t, append(append([]string{"send"}, tc.args(s)...), append([]string{"--to", dest, "-r", rcpt, "--json"}, auth...)...)...)
			if n := summaryOf(t, r.stdout)["files"].(float64); n < 4 {
				t.Errorf("shipped %v files: want the two overlays, mid and base once", n)
			}
			// The layers that join the shipment from the images' headers
			// are named, once each.
			if n := strings.Count(r.stdout, `"also shipping `); n != 2 {
				t.Errorf("%d notices of backing files shipped though not named, want 2 (mid and base):\n%s", n, r.stdout)
			}
			out := filepath.Join(t.TempDir(), "site-b")
			s.away(t, func() {
				mustRun(t, append([]string{"receive", dest, "--out", out, "-i", key, "-q"}, auth...)...)
				checkRestoredChain(t, s.root, out, filepath.Join(out, tc.top), 3)
				checkRestoredChain(t, s.root, out, filepath.Join(out, tc.cl), 2)
			})
			compareChain(t, s.top, filepath.Join(out, tc.top))
			compareChain(t, s.clone, filepath.Join(out, tc.cl))

			// --include of an overlay brings its layers.
			part := filepath.Join(t.TempDir(), "part")
			r = mustRun(t, append([]string{"receive", dest, "--out", part, "-i", key, "--include", tc.top}, auth...)...)
			if !strings.Contains(r.stderr, "too: an included image reads through it") {
				t.Errorf("--include of an overlay: stderr does not say its layers came along: %s", r.stderr)
			}
			compareChain(t, s.top, filepath.Join(part, tc.top))
			if _, err := os.Stat(filepath.Join(part, tc.cl)); err == nil {
				t.Errorf("--include %s restored %s too", tc.top, tc.cl)
			}
		})
	}
}

// TestChainIncremental: an incremental send after a write into the top
// layer ships that layer's changed blocks only (the unchanged base and
// middle layer cost nothing), and receive --into updates the restored
// chain in place, writing only those blocks, its overlays still pointing
// at their restored layers.
func TestChainIncremental(t *testing.T) {
	key, rcpt := keypair(t)
	s := newChainSite(t)
	dest := filepath.Join(t.TempDir(), "dest")
	const bs = 64 << 10
	send := []string{s.top, s.clone, "--to", dest, "-r", rcpt, "--block-size", "64K", "--base", "latest"}
	id1, sum1, _ := drSend(t, send...)
	if d := num(sum1, "bytes_data"); d < 3<<20 {
		t.Fatalf("first send: %d bytes of data, want the layers' 3 MiB and more", d)
	}
	out := filepath.Join(t.TempDir(), "site-b")
	mustRun(t, "receive", dest, id1, "--into", out, "-i", key, "-q")

	// One new 64 KiB cluster in the top layer: its data, and the L2 table
	// and refcount block that map it.
	vmtest.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 85 6M 64k", s.top)
	id2, sum2, _ := drSend(t, send...)
	if sum2["base"] != id1 {
		t.Fatalf("second send: %v; want incremental on %s", sum2, id1)
	}
	data, unchanged := num(sum2, "bytes_data"), num(sum2, "bytes_unchanged")
	t.Logf("incremental: %d bytes of data changed, %d unchanged, %d shipped", data, unchanged, num(sum2, "bytes_shipped"))
	if data == 0 || data > 3*bs || unchanged < num(sum1, "bytes_data")-3*bs {
		t.Errorf("second send: %d bytes of data changed, %d unchanged (first send %d): want at most 3 blocks of the top layer changed",
			data, unchanged, num(sum1, "bytes_data"))
	}
	if shipped := num(sum2, "bytes_shipped"); shipped > 3*cipher.SealedSize(bs)+32<<10 {
		t.Errorf("second send shipped %d bytes: want at most 3 sealed blocks and a few KiB of metadata", shipped)
	}

	s.away(t, func() {
		r := mustRun(t, "receive", dest, id2, "--into", out, "-i", key, "--json")
		w := num(summaryOf(t, r.stdout), "bytes_written")
		t.Logf("receive --into wrote %d bytes", w)
		if w == 0 || w > 3*bs {
			t.Errorf("receive --into wrote %d bytes: want the top layer's changed blocks only", w)
		}
		checkRestoredChain(t, s.root, out, filepath.Join(out, "top.qcow2"), 3)
		checkRestoredChain(t, s.root, out, filepath.Join(out, "clone.qcow2"), 2)
	})
	compareChain(t, s.top, filepath.Join(out, "top.qcow2"))
	compareChain(t, s.clone, filepath.Join(out, "clone.qcow2"))
}

// TestChainLive: send --live follows the chains too, and the receiver
// points the overlays at the layers it restored.
func TestChainLive(t *testing.T) {
	_, dir, to, flags := liveEnv(t)
	s := newChainSite(t)
	mustRun(t, append([]string{"send", s.top, s.clone, "--to", to, "-q"}, flags...)...)
	s.away(t, func() {
		checkRestoredChain(t, s.root, dir, filepath.Join(dir, "top.qcow2"), 3)
		checkRestoredChain(t, s.root, dir, filepath.Join(dir, "clone.qcow2"), 2)
	})
	compareChain(t, s.top, filepath.Join(dir, "top.qcow2"))
	compareChain(t, s.clone, filepath.Join(dir, "clone.qcow2"))
}

// TestOwnersEndToEnd: a VM whose overlay and folder belong to
// libvirt-qemu:kvm (64055:994) and whose base, found through the chain,
// belongs to root is sent; the shipment records each owner; received as
// root each comes back with its own, with --no-same-owner everything
// belongs to root, and received as nobody everything belongs to nobody.
func TestOwnersEndToEnd(t *testing.T) {
	if os.Geteuid() != 0 {
		vmtest.Unavailable(t, "giving files other owners needs root")
	}
	setpriv := requireTool(t, "setpriv")
	bin := coldshipBinary(t)
	key, rcpt := keypair(t)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755) // nobody must reach it
	src := filepath.Join(dir, "src")
	vm := filepath.Join(src, "vm")
	os.MkdirAll(vm, 0o755)
	base := qemuImg(t, src, "base.qcow2", "", 0x11, 0, 1<<20)
	top := qemuImg(t, vm, "disk.qcow2", base, 0x22, 1<<20, 64<<10)
	for _, p := range []string{vm, top} {
		if err := os.Chown(p, 64055, 994); err != nil {
			t.Fatal(err)
		}
	}
	dest := filepath.Join(dir, "dest")
	id := strings.TrimSpace(mustRun(t, "send", vm, "--to", dest, "-r", rcpt, "-q").stdout)
	want := map[string]string{"vm": "64055:994", "vm/disk.qcow2": "64055:994", "vm/base.qcow2": "0:0"}
	shown := 0
	for _, line := range strings.Split(strings.TrimSpace(mustRun(t, "show", dest, id, "-i", key, "--json").stdout), "\n") {
		var f struct{ Path, Owner string }
		json.Unmarshal([]byte(line), &f)
		if w, ok := want[f.Path]; ok {
			shown++
			if f.Owner != w {
				t.Errorf("show: %s owned by %s, want %s", f.Path, f.Owner, w)
			}
		}
	}
	if shown != len(want) {
		t.Errorf("show listed %d of the %d files", shown, len(want))
	}
	check := func(out, what string, want map[string]string) {
		t.Helper()
		for p, w := range want {
			fi, err := os.Stat(filepath.Join(out, p))
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if got := fmt.Sprintf("%d:%d", st.Uid, st.Gid); got != w {
				t.Errorf("%s: %s owned by %s, want %s", what, p, got, w)
			}
		}
	}

	out := filepath.Join(dir, "root")
	mustRun(t, "receive", dest, id, "--out", out, "-i", key, "-q")
	check(out, "received as root", want)
	out = filepath.Join(dir, "nosame")
	mustRun(t, "receive", dest, id, "--out", out, "-i", key, "-q", "--no-same-owner")
	check(out, "--no-same-owner", map[string]string{"vm": "0:0", "vm/disk.qcow2": "0:0", "vm/base.qcow2": "0:0"})

	// As nobody, into a folder of nobody's, with a key only nobody reads.
	home := filepath.Join(dir, "nobody")
	os.Mkdir(home, 0o755)
	os.Chown(home, 65534, 65534)
	nkey := filepath.Join(home, "key")
	b, _ := os.ReadFile(key)
	os.WriteFile(nkey, b, 0o600)
	os.Chown(nkey, 65534, 65534)
	out = filepath.Join(home, "out")
	cmd := exec.Command(setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--",
		bin, "receive", dest, id, "--out", out, "-i", nkey, "-q")
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_STATE_HOME="+home)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("receive as nobody: %v: %s", err, b)
	}
	check(out, "received as nobody", map[string]string{"vm": "65534:65534", "vm/disk.qcow2": "65534:65534", "vm/base.qcow2": "65534:65534"})
	compareChain(t, top, filepath.Join(out, "vm", "disk.qcow2"))
}
