package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coldship/coldship/archive"
)

const testBS = 64 << 10 // small blocks keep the tests fast and exercise many of them

func TestRoundTripSizes(t *testing.T) {
	key, rcpt := keypair(t)
	bs := int64(testBS)
	sizes := []int64{0, 1, bs - 1, bs, bs + 1, 3*bs + 17}
	for _, compress := range []string{"none", "zstd"} {
		for _, kind := range []string{"random", "text", "zero"} {
			for _, size := range sizes {
				name := fmt.Sprintf("%s/%s/%d", compress, kind, size)
				t.Run(name, func(t *testing.T) {
					dir := t.TempDir()
					src := filepath.Join(dir, "disk.img")
					makeImage(t, src, size, region{0, size, kind})
					dest := filepath.Join(dir, "dest")
					id := strings.TrimSpace(mustRun(t, "send", src, "--to", dest, "-r", rcpt, "--block-size", "64K", "--compress", compress, "-q").stdout)
					out := filepath.Join(dir, "out")
					mustRun(t, "receive", dest, id, "--out", out, "-i", key, "-q")
					sameFile(t, src, filepath.Join(out, "disk.img"))
				})
			}
		}
	}
}

// TestSparseImage ships an image of holes, allocated zeros, random and
// compressible data, and checks the restore is identical and as sparse.
func TestSparseImage(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "vm", "disk.raw")
	os.MkdirAll(filepath.Dir(src), 0o755)
	makeImage(t, src, 96<<20,
		region{0, 3 << 20, "random"},
		region{8 << 20, 4 << 20, "zero"}, // allocated zeros: read, not shipped
		region{20<<20 + 5, 2 << 20, "text"},
		region{96<<20 - 70000, 70000, "random"},
	)
	dest := filepath.Join(dir, "dest")
	r := mustRun(t, "send", filepath.Join(dir, "vm"), "--to", dest, "-r", rcpt, "--json")
	if !strings.Contains(r.stdout, `"type":"summary"`) {
		t.Fatalf("--json printed no summary: %s", r.stdout)
	}
	var sum map[string]any
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if strings.Contains(line, `"summary"`) {
			if err := json.Unmarshal([]byte(line), &sum); err != nil {
				t.Fatal(err)
			}
		}
	}
	id, _ := sum["shipment"].(string)
	if !archive.ValidID(id) {
		t.Errorf("summary names shipment %v", sum["shipment"])
	}
	if z := sum["bytes_zero"].(float64); z < 4<<20 {
		t.Errorf("bytes_zero = %v, want at least the 4 MiB of allocated zeros", z)
	}
	if h := sum["bytes_hole"].(float64); h < 60<<20 {
		t.Errorf("bytes_hole = %v, want most of the image", h)
	}
	if d := sum["bytes_data"].(float64); d > 12<<20 {
		t.Errorf("bytes_data = %v, shipped more than the data regions", d)
	}
	out := filepath.Join(dir, "out")
	mustRun(t, "receive", dest, "--out", out, "-i", key, "-q") // latest shipment by default
	restored := filepath.Join(out, "vm", "disk.raw")
	sameFile(t, src, restored)
	if a, b := allocated(t, src), allocated(t, restored); b > a {
		t.Errorf("restored image allocates %d bytes, the source %d: not as sparse", b, a)
	}
	if a := allocated(t, restored); a > 16<<20 {
		t.Errorf("restored image allocates %d bytes for ~7 MiB of data", a)
	}
	if _, err := exec.LookPath("du"); err == nil {
		du, _ := exec.Command("du", "-k", restored).Output()
		t.Logf("du of restored image: %s", du)
	}
}

func TestVMDirectory(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	vm := filepath.Join(dir, "web01")
	os.MkdirAll(filepath.Join(vm, "disks"), 0o755)
	os.MkdirAll(filepath.Join(vm, "empty"), 0o700)
	makeImage(t, filepath.Join(vm, "disks", "root.img"), 5<<20, region{1 << 20, 1 << 20, "random"})
	makeImage(t, filepath.Join(vm, "disks", "data.img"), 3<<20+1, region{0, 3<<20 + 1, "text"})
	os.WriteFile(filepath.Join(vm, "web01.xml"), []byte("<domain/>\n"), 0o600)
	os.WriteFile(filepath.Join(vm, "notes"), nil, 0o644)
	extra := filepath.Join(dir, "nvram.fd")
	makeImage(t, extra, 128<<10, region{0, 100, "random"})

	dest := filepath.Join(dir, "dest")
	id := strings.TrimSpace(mustRun(t, "send", vm, extra, "--to", dest, "-r", rcpt, "--block-size", "64K", "-q").stdout)
	out := filepath.Join(dir, "out")
	r := mustRun(t, "receive", dest, id, "--out", out, "-i", key, "-q")
	for _, rel := range []string{"disks/root.img", "disks/data.img", "web01.xml", "notes"} {
		sameFile(t, filepath.Join(vm, rel), filepath.Join(out, "web01", rel))
		if !strings.Contains(r.stdout, filepath.Join(out, "web01", rel)) {
			t.Errorf("receive stdout does not list %s", rel)
		}
	}
	sameFile(t, extra, filepath.Join(out, "nvram.fd"))
	fi, err := os.Stat(filepath.Join(out, "web01", "web01.xml"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("web01.xml mode = %v, %v; want 0600", fi.Mode(), err)
	}
	src, _ := os.Stat(filepath.Join(vm, "disks", "root.img"))
	got, _ := os.Stat(filepath.Join(out, "web01", "disks", "root.img"))
	if !got.ModTime().Equal(src.ModTime()) {
		t.Errorf("mtime %v, want %v", got.ModTime(), src.ModTime())
	}
	if fi, err := os.Stat(filepath.Join(out, "web01", "empty")); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("empty directory not restored with its mode: %v %v", fi, err)
	}

	// Receiving again must not overwrite without --force.
	r = run(t, "receive", dest, id, "--out", out, "-i", key, "-q")
	if r.code != exitError || !strings.Contains(r.stderr, "already exists") {
		t.Errorf("second receive: exit %d, stderr %q; want exit 1 naming the existing file", r.code, r.stderr)
	}
	os.WriteFile(filepath.Join(out, "web01", "notes"), []byte("changed"), 0o644)
	mustRun(t, "receive", dest, id, "--out", out, "-i", key, "-q", "--force")
	sameFile(t, filepath.Join(vm, "notes"), filepath.Join(out, "web01", "notes"))
}

// TestIncludeSummary: with --include, the summary counts what was
// restored (the file, and the folders on its way), not the whole shipment.
func TestIncludeSummary(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	vm := filepath.Join(dir, "web01")
	os.MkdirAll(filepath.Join(vm, "disks"), 0o755)
	for _, name := range []string{"root.img", "data.img", "swap.img"} {
		makeImage(t, filepath.Join(vm, "disks", name), 1<<20, region{0, 64 << 10, "random"})
	}
	dest := filepath.Join(dir, "dest")
	id := strings.TrimSpace(mustRun(t, "send", vm, "--to", dest, "-r", rcpt, "--block-size", "64K", "-q").stdout)
	r := mustRun(t, "receive", dest, id, "--out", filepath.Join(dir, "out"), "-i", key, "--include", "web01/disks/root.img")
	if want := "restored " + id + " (1 file and 2 folders, 1.0 MiB)"; !strings.Contains(r.stderr, want) {
		t.Errorf("receive --include: stderr %q; want %q", r.stderr, want)
	}
}

func TestQcow2RoundTrip(t *testing.T) {
	qemuImg := requireTool(t, "qemu-img")
	key, rcpt := keypair(t)
	dir := t.TempDir()
	raw := filepath.Join(dir, "seed.raw")
	makeImage(t, raw, 64<<20, region{0, 2 << 20, "random"}, region{30 << 20, 1 << 20, "text"})
	img := filepath.Join(dir, "vm", "disk.qcow2")
	os.MkdirAll(filepath.Dir(img), 0o755)
	if out, err := exec.Command(qemuImg, "convert", "-f", "raw", "-O", "qcow2", raw, img).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	vmdk := filepath.Join(dir, "vm", "disk.vmdk")
	if out, err := exec.Command(qemuImg, "convert", "-f", "raw", "-O", "vmdk", raw, vmdk).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	dest := filepath.Join(dir, "dest")
	id := strings.TrimSpace(mustRun(t, "send", img, vmdk, "--to", dest, "-r", rcpt, "-q").stdout)
	out := filepath.Join(dir, "out")
	mustRun(t, "receive", dest, id, "--out", out, "-i", key, "-q")
	for _, c := range [][2]string{{img, filepath.Join(out, "disk.qcow2")}, {vmdk, filepath.Join(out, "disk.vmdk")}} {
		if b, err := exec.Command(qemuImg, "compare", c[0], c[1]).CombinedOutput(); err != nil {
			t.Errorf("qemu-img compare %s: %v\n%s", filepath.Base(c[0]), err, b)
		}
		sameFile(t, c[0], c[1])
	}
	if b, err := exec.Command(qemuImg, "compare", "-f", "raw", "-F", "qcow2", raw, filepath.Join(out, "disk.qcow2")).CombinedOutput(); err != nil {
		t.Errorf("restored qcow2 does not hold the seed image: %v\n%s", err, b)
	}
}

func TestListAndVerify(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 1<<20, region{0, 1 << 20, "random"})
	dest := filepath.Join(dir, "dest")
	id1 := strings.TrimSpace(mustRun(t, "send", src, "--to", dest, "-r", rcpt, "--name", "nightly", "-q").stdout)
	id2 := strings.TrimSpace(mustRun(t, "send", src, "--to", dest, "-r", rcpt, "-q").stdout)
	if id1 >= id2 && id1[:16] != id2[:16] {
		t.Errorf("shipment ids do not sort by time: %s then %s", id1, id2)
	}
	os.Remove(filepath.Join(dest, id2, "manifest"))
	r := mustRun(t, "list", dest)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 {
		t.Fatalf("list printed %d lines, want 2:\n%s", len(lines), r.stdout)
	}
	if !strings.Contains(r.stdout, id1) || !strings.Contains(lines[0]+lines[1], "nightly") {
		t.Errorf("list misses the shipment or its label:\n%s", r.stdout)
	}
	for _, l := range lines {
		want := "complete"
		if strings.HasPrefix(l, id2) {
			want = "incomplete"
		}
		if f := strings.Split(l, "\t"); f[4] != want {
			t.Errorf("list line %q, want %s", l, want)
		}
	}
	r = mustRun(t, "list", dest, "--json")
	if n := strings.Count(r.stdout, `"complete":`); n != 2 {
		t.Errorf("list --json printed %d objects", n)
	}
	// latest complete is id1 now that id2 lost its manifest; "latest"
	// names it as leaving the shipment out does
	mustRun(t, "verify", dest)
	mustRun(t, "verify", dest, id1, "-i", key)
	for _, args := range [][]string{{"verify", dest, "latest", "-i", key, "--json"}, {"show", dest, "latest", "-i", key, "--json"}} {
		if r := mustRun(t, args...); !strings.Contains(r.stdout, id1) || strings.Contains(r.stdout, id2) {
			t.Errorf("%s %s latest: did not pick %s:\n%s", args[0], dest, id1, r.stdout)
		}
	}
	out := filepath.Join(dir, "latest-out")
	mustRun(t, "receive", dest, "latest", "-i", key, "--out", out, "-q")
	sameFile(t, src, filepath.Join(out, "disk.img"))
	for _, args := range [][]string{{"verify", dest, id2}, {"verify", dest, id2, "-i", key}, {"receive", dest, id2, "-i", key, "--out", filepath.Join(dir, "o")}} {
		if r := run(t, args...); r.code != exitIntegrity || !strings.Contains(r.stderr, "incomplete") {
			t.Errorf("%v on an incomplete shipment: exit %d, %s; want 5 saying incomplete", args[0], r.code, r.stderr)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	_, rcpt := keypair(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"no dest", []string{"send", dir, "-r", rcpt}},
		{"no source", []string{"send", "--to", dir, "-r", rcpt}},
		{"bad flag", []string{"send", dir, "--to", dir, "--nope"}},
		{"bad block size", []string{"send", dir, "--to", dir, "-r", rcpt, "--block-size", "1000"}},
		{"bad compress", []string{"send", dir, "--to", dir, "-r", rcpt, "--compress", "lz4"}},
		{"bad recipient", []string{"send", dir, "--to", dir, "-r", "age1nope"}},
		{"no recipient and no terminal", []string{"send", dir, "--to", dir}},
		{"receive without out", []string{"receive", dir}},
		{"bad scheme", []string{"list", "ftp://x/y"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("COLDSHIP_PASSPHRASE", "")
			if r := run(t, tc.args...); r.code != exitUsage {
				t.Errorf("exit %d, want %d (stderr %q)", r.code, exitUsage, r.stderr)
			}
		})
	}
}
