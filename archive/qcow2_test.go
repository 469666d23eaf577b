package archive

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coldship/coldship/internal/vmtest"
)

// qemuInfo is one image of qemu-img info --backing-chain --output=json.
type qemuInfo struct {
	Filename            string `json:"filename"`
	Format              string `json:"format"`
	BackingFilename     string `json:"backing-filename"`
	FullBackingFilename string `json:"full-backing-filename"`
	BackingFormat       string `json:"backing-filename-format"`
}

func backingChainInfo(t *testing.T, p string) []qemuInfo {
	t.Helper()
	var out []qemuInfo
	if err := json.Unmarshal([]byte(vmtest.Run(t, "qemu-img", "info", "--backing-chain", "--output=json", "-U", p)), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	vmtest.Run(t, "cp", "--sparse=always", from, to)
}

func rewrite(t *testing.T, p, name, format string) error {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return RewriteBacking(f, name, format)
}

// TestRewriteBacking moves a chain made with absolute backing names to
// another directory under other names, rewrites the backing names to
// relative ones, and has QEMU check the result: qemu-img info follows the
// new chain (no old path left), qemu-img check finds the images sound and
// qemu-img compare reads the same disk through both chains.
func TestRewriteBacking(t *testing.T) {
	for _, compat := range []string{"0.10", "1.1"} {
		t.Run("compat="+compat, func(t *testing.T) {
			src := t.TempDir()
			base := qcow2(t, src, "base.qcow2", "", compat)
			mid := qcow2(t, src, "mid.qcow2", base, compat)
			top := qcow2(t, src, "top.qcow2", mid, compat)
			write(t, base, 0x11, 0, 1<<20)
			write(t, mid, 0x22, 1<<20, 1<<20)
			write(t, top, 0x33, 2<<20, 64<<10)

			dst := t.TempDir()
			l0, l1, l2 := filepath.Join(dst, "l0.qcow2"), filepath.Join(dst, "l1.qcow2"), filepath.Join(dst, "l2.qcow2")
			copyFile(t, base, l0)
			copyFile(t, mid, l1)
			copyFile(t, top, l2)
			if compat == "1.1" {
				// A persistent dirty bitmap: an extension with offsets
				// that the rewrite must carry over.
				vmtest.Run(t, "qemu-img", "bitmap", "--add", l2, "bm0")
			}
			// A long name first, then the short one: the old name's bytes
			// must not survive.
			long := strings.Repeat("x/../", 150) + "l1.qcow2"
			for _, name := range []string{long, "l1.qcow2"} {
				if err := rewrite(t, l2, name, "qcow2"); err != nil {
					t.Fatal(err)
				}
			}
			if err := rewrite(t, l1, "l0.qcow2", "qcow2"); err != nil {
				t.Fatal(err)
			}

			chain := backingChainInfo(t, l2)
			if len(chain) != 3 || chain[0].BackingFilename != "l1.qcow2" || chain[0].FullBackingFilename != l1 ||
				chain[1].BackingFilename != "l0.qcow2" || chain[1].BackingFormat != "qcow2" || chain[2].Filename != l0 {
				t.Errorf("qemu-img info --backing-chain: %+v", chain)
			}
			if info := vmtest.Run(t, "qemu-img", "info", l2); compat == "1.1" && !strings.Contains(info, "name: bm0") {
				t.Errorf("the bitmap is lost:\n%s", info)
			}
			for _, p := range []string{l0, l1, l2} {
				vmtest.Run(t, "qemu-img", "check", "-q", p)
				b, _ := os.ReadFile(p)
				if bytes.Contains(b, []byte(src)) || bytes.Contains(b, []byte("x/../")) {
					t.Errorf("%s still holds an old backing name", p)
				}
			}
			if out, err := exec.Command("qemu-img", "compare", top, l2).CombinedOutput(); err != nil {
				t.Errorf("qemu-img compare: %v: %s", err, out)
			}
			got, err := BackingChain(l2, "")
			if err != nil || len(got) != 3 || got[2].Path != dst+"/l0.qcow2" {
				t.Errorf("BackingChain of the rewritten chain: %v, %v", paths(got), err)
			}

			// Without the format extension (QEMU then probes), and added back.
			if err := rewrite(t, l2, "l1.qcow2", ""); err != nil {
				t.Fatal(err)
			}
			if c := backingChainInfo(t, l2); len(c) != 3 || c[0].BackingFormat != "" {
				t.Errorf("without a backing format: %+v", c)
			}
			if err := rewrite(t, l2, "l1.qcow2", "qcow2"); err != nil {
				t.Fatal(err)
			}
			vmtest.Run(t, "qemu-img", "check", "-q", l2)

			// No backing file at all: a flattened image reads its own
			// clusters only.
			if err := rewrite(t, l1, "", ""); err != nil {
				t.Fatal(err)
			}
			if c := backingChainInfo(t, l1); len(c) != 1 || c[0].BackingFilename != "" {
				t.Errorf("backing removed: %+v", c)
			}
			vmtest.Run(t, "qemu-img", "check", "-q", l1)
		})
	}
}

func TestRewriteBackingRefuses(t *testing.T) {
	dir := t.TempDir()
	small := qcow2(t, dir, "small.qcow2", "", "1.1", "-o", "cluster_size=512")
	tests := []struct {
		name, backing, format, err string
	}{
		{"too long", strings.Repeat("a", 1024), "qcow2", "too long (at most 1023)"},
		{"does not fit", strings.Repeat("a", 400), "qcow2", "does not fit in the 512-byte header cluster"},
		{"format too long", "base", "a-very-long-format", "too long"},
		{"format without file", "", "qcow2", "without a backing file"},
		{"NUL", "a\x00b", "qcow2", "NUL"},
	}
	before, _ := os.ReadFile(small)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := rewrite(t, small, tt.backing, tt.format)
			if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), small) {
				t.Errorf("error %v, want %q naming the file", err, tt.err)
			}
			if after, _ := os.ReadFile(small); !bytes.Equal(before, after) {
				t.Error("a refused rewrite changed the image")
			}
		})
	}
	// What does fit in 512 bytes is accepted by QEMU.
	qcow2(t, dir, "b.qcow2", "", "1.1")
	if err := rewrite(t, small, "b.qcow2", "qcow2"); err != nil {
		t.Fatal(err)
	}
	if c := backingChainInfo(t, small); len(c) != 2 || c[0].BackingFilename != "b.qcow2" {
		t.Errorf("small cluster: %+v", c)
	}
	vmtest.Run(t, "qemu-img", "check", "-q", small)

	raw := filepath.Join(dir, "raw.img")
	os.WriteFile(raw, make([]byte, 4096), 0o644)
	if err := rewrite(t, raw, "b", "qcow2"); err == nil || !strings.Contains(err.Error(), "bad magic") {
		t.Errorf("raw image: %v", err)
	}
}

// header builds a version 3 qcow2 header cluster (512 bytes) by hand.
func header(mod func(b []byte)) []byte {
	b := make([]byte, 512)
	be := binary.BigEndian
	copy(b, qcow2Magic)
	be.PutUint32(b[4:], 3)
	be.PutUint32(b[20:], 9)
	be.PutUint64(b[24:], 1<<20)
	be.PutUint32(b[36:], 1)
	be.PutUint64(b[40:], 3*512)
	be.PutUint64(b[48:], 512)
	be.PutUint32(b[56:], 1)
	be.PutUint32(b[100:], 104)
	if mod != nil {
		mod(b)
	}
	return b
}

func TestRewriteQCOW2HeaderRefuses(t *testing.T) {
	be := binary.BigEndian
	tests := []struct {
		name string
		mod  func(b []byte)
		err  string
	}{
		{"L1 table in the header cluster", func(b []byte) { be.PutUint64(b[40:], 256) }, "the L1 table at offset 256"},
		{"refcount table at 0", func(b []byte) { be.PutUint64(b[48:], 0) }, "the refcount table at offset 0"},
		{"corrupt", func(b []byte) { be.PutUint64(b[72:], 2) }, "marked corrupt"},
		{"external data file", func(b []byte) { be.PutUint64(b[72:], 4) }, "external data file"},
		{"unknown feature", func(b []byte) { be.PutUint64(b[72:], 1<<40) }, "unknown incompatible features"},
		{"version 4", func(b []byte) { be.PutUint32(b[4:], 4) }, "unsupported version 4"},
		{"odd header length", func(b []byte) { be.PutUint32(b[100:], 105) }, "header_length 105"},
		{"extension overrun", func(b []byte) { be.PutUint32(b[104:], 0x1234); be.PutUint32(b[108:], 1000) }, "overruns"},
		{"two format extensions", func(b []byte) {
			for _, at := range []int{104, 120} {
				be.PutUint32(b[at:], qcow2ExtBackingFormat)
				be.PutUint32(b[at+4:], 3)
				copy(b[at+8:], "raw")
			}
		}, "appears twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := rewriteQCOW2Header(header(tt.mod), "base", "qcow2"); err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("error %v, want %q", err, tt.err)
			}
		})
	}
	// The hand-made header itself is fine, and unknown autoclear bits are
	// cleared by the rewrite.
	out, err := rewriteQCOW2Header(header(func(b []byte) { be.PutUint64(b[88:], 0xff) }), "base", "qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if got := be.Uint64(out[88:]); got != 3 {
		t.Errorf("autoclear %#x, want 0x3", got)
	}
}

// qcow2Seeds are headers for the fuzz targets: hand-made ones and the
// first 4 KiB of images qemu-img made (testdata/images).
func qcow2Seeds(f *testing.F) [][]byte {
	seeds := [][]byte{header(nil)}
	withExt, _ := rewriteQCOW2Header(header(nil), "base.qcow2", "qcow2")
	seeds = append(seeds, append(withExt, make([]byte, 512-len(withExt))...))
	files, _ := filepath.Glob(filepath.Join("testdata", "images", "*"))
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	return seeds
}

func FuzzImageInfo(f *testing.F) {
	for _, s := range qcow2Seeds(f) {
		f.Add(s)
	}
	f.Add([]byte("KDMV\x01\x00\x00\x00"))
	f.Add([]byte("# Disk DescriptorFile\nparentCID=12345678\nparentFileNameHint=\"base.vmdk\"\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := ReadImageInfo(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		if len(img.Backing) > len(b) || len(img.BackingFormat) > qcow2MaxFormatName {
			t.Fatalf("image info larger than its input: %+v", img)
		}
	})
}

// FuzzRewriteQCOW2Header: whatever header the rewrite accepts, the result
// parses back with the new backing file and every other extension kept.
func FuzzRewriteQCOW2Header(f *testing.F) {
	for _, s := range qcow2Seeds(f) {
		f.Add(s, "base.qcow2", "qcow2")
	}
	f.Fuzz(func(t *testing.T, b []byte, name, format string) {
		before, err := parseQCOW2(b)
		if err != nil {
			return
		}
		out, err := rewriteQCOW2Header(b, name, format)
		if err != nil {
			return
		}
		if len(out) > len(b) {
			t.Fatalf("rewrite of %d bytes returned %d", len(b), len(out))
		}
		after, err := parseQCOW2(append(out, b[len(out):]...))
		if err != nil {
			t.Fatalf("rewritten header does not parse: %v", err)
		}
		if after.backing != name || after.backingFormat != format {
			t.Fatalf("backing %q (%q), want %q (%q)", after.backing, after.backingFormat, name, format)
		}
		var kept, want []qcow2Ext
		for _, e := range before.exts {
			if e.typ != qcow2ExtBackingFormat {
				want = append(want, e)
			}
		}
		for _, e := range after.exts {
			if e.typ != qcow2ExtBackingFormat {
				kept = append(kept, e)
			}
		}
		if len(kept) != len(want) {
			t.Fatalf("extensions %d, want %d", len(kept), len(want))
		}
		for i := range kept {
			if kept[i].typ != want[i].typ || !bytes.Equal(kept[i].data, want[i].data) {
				t.Fatalf("extension %d changed", i)
			}
		}
	})
}

// TestReadImageInfoTestdata reads the headers qemu-img made, kept in
// testdata so that no tool is needed.
func TestReadImageInfoTestdata(t *testing.T) {
	tests := map[string]Image{
		"qcow2-v2-overlay": {Format: ImageQCOW2, HasBacking: true, Backing: "/var/lib/libvirt/images/base.qcow2", BackingFormat: "qcow2"},
		"qcow2-v3-overlay": {Format: ImageQCOW2, HasBacking: true, Backing: "base.qcow2", BackingFormat: "qcow2"},
		"qcow2-v3-base":    {Format: ImageQCOW2},
		"vmdk-child":       {Format: ImageVMDK, HasBacking: true, Backing: "base.vmdk"},
	}
	for name, want := range tests {
		b, err := os.ReadFile(filepath.Join("testdata", "images", name))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := ReadImageInfo(bytes.NewReader(b), int64(len(b))); err != nil || got != want {
			t.Errorf("%s: %+v, %v; want %+v", name, got, err, want)
		}
		// Cut anywhere, a header is an error or raw, never a panic.
		for n := 0; n < len(b); n += 7 {
			ReadImageInfo(bytes.NewReader(b[:n]), int64(n))
		}
	}
}

// TestCheckPointBacking: the send's check and the restore's rewrite agree
// on every name, on an overlay made by qemu-img with a 512-byte header
// cluster (376 bytes free for the name after its backing format).
func TestCheckPointBacking(t *testing.T) {
	dir := t.TempDir()
	qcow2(t, dir, "base.qcow2", "", "1.1")
	top := qcow2(t, dir, "top.qcow2", "base.qcow2", "1.1", "-o", "cluster_size=512")
	for _, tc := range []struct {
		name string
		fits bool
	}{
		{"base.qcow2", true}, // what it holds
		{"../images/base.qcow2", true},
		{strings.Repeat("n", 376), true},
		{strings.Repeat("n", 377), false},
		{strings.Repeat("n", 1000), false},
	} {
		cp := filepath.Join(t.TempDir(), "top.qcow2")
		b, err := os.ReadFile(top)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(cp, b, 0o644)
		f, err := os.OpenFile(cp, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		checked := CheckPointBacking(f, tc.name, "qcow2")
		after, _ := os.ReadFile(cp)
		pointed := PointBacking(f, tc.name, "qcow2")
		f.Close()
		if (checked == nil) != tc.fits || (pointed == nil) != tc.fits {
			t.Errorf("name of %d bytes: check %v, point %v; want fits=%v", len(tc.name), checked, pointed, tc.fits)
		}
		if !bytes.Equal(after, b) {
			t.Errorf("name of %d bytes: the check wrote to the image", len(tc.name))
		}
		if tc.fits {
			if img := imageInfoOf(t, cp); img.Backing != tc.name {
				t.Errorf("pointed at %q, holds %q", tc.name, img.Backing)
			}
		}
	}
}

func imageInfoOf(t *testing.T, p string) Image {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := ImageInfo(f)
	if err != nil {
		t.Fatal(err)
	}
	return img
}
