package archive

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/coldship/coldship/internal/vmtest"
)

// qcow2 makes a qcow2 image with qemu-img in dir; backing "" makes a base.
// compat is "0.10" (version 2) or "1.1" (version 3).
func qcow2(t *testing.T, dir, name, backing, compat string, extra ...string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	args := []string{"create", "-q", "-f", "qcow2", "-o", "compat=" + compat}
	args = append(args, extra...)
	if backing != "" {
		args = append(args, "-b", backing, "-F", "qcow2", p)
	} else {
		args = append(args, p, "4M")
	}
	vmtest.Run(t, "qemu-img", args...)
	return p
}

// write writes pattern byte pat at off, n bytes, into the image at p.
func write(t *testing.T, p string, pat byte, off, n int) {
	t.Helper()
	vmtest.Run(t, "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P %d %d %d", pat, off, n), p)
}

// threeLayers makes base <- mid <- top in dir with relative backing names
// and data in each layer.
func threeLayers(t *testing.T, dir, compat string) (base, mid, top string) {
	t.Helper()
	base = qcow2(t, dir, "base.qcow2", "", compat)
	mid = qcow2(t, dir, "mid.qcow2", "base.qcow2", compat)
	top = qcow2(t, dir, "top.qcow2", "mid.qcow2", compat)
	write(t, base, 0x11, 0, 1<<20)
	write(t, mid, 0x22, 1<<20, 1<<20)
	write(t, top, 0x33, 2<<20, 64<<10)
	return base, mid, top
}

func paths(ls []Layer) []string {
	var out []string
	for _, l := range ls {
		out = append(out, l.Path+":"+l.Format)
	}
	return out
}

func TestBackingChain(t *testing.T) {
	for _, compat := range []string{"0.10", "1.1"} {
		t.Run("compat="+compat, func(t *testing.T) {
			dir := t.TempDir()
			base, mid, top := threeLayers(t, dir, compat)
			chain, err := BackingChain(top, "")
			if err != nil {
				t.Fatal(err)
			}
			want := []string{top + ":qcow2", dir + "/mid.qcow2:qcow2", dir + "/base.qcow2:qcow2"}
			if got := paths(chain); !reflect.DeepEqual(got, want) {
				t.Errorf("chain %v\nwant %v", got, want)
			}
			if chain[0].Backing != "mid.qcow2" || chain[0].BackingFormat != "qcow2" || chain[2].Backing != "" {
				t.Errorf("layers %+v", chain)
			}

			// Relative to the directory of the image that names it, not
			// to the working directory; absolute names as they are.
			other := t.TempDir()
			abs := qcow2(t, other, "abs.qcow2", mid, compat)
			t.Chdir(t.TempDir())
			chain, err = BackingChain(abs, "")
			if err != nil {
				t.Fatal(err)
			}
			if want := []string{abs + ":qcow2", mid + ":qcow2", dir + "/base.qcow2:qcow2"}; !reflect.DeepEqual(paths(chain), want) {
				t.Errorf("chain %v\nwant %v", paths(chain), want)
			}
			t.Chdir(dir)
			chain, err = BackingChain("top.qcow2", "")
			if err != nil || len(chain) != 3 || chain[2].Path != "base.qcow2" {
				t.Errorf("chain from a relative path: %v, %v", paths(chain), err)
			}

			// An image known to be raw is never read as the qcow2 its
			// guest may have written into it.
			if chain, err := BackingChain(top, ImageRaw); err != nil || len(chain) != 1 || chain[0].Format != ImageRaw {
				t.Errorf("qcow2 read as raw: %v, %v", paths(chain), err)
			}
			if _, err := BackingChain(base, ImageVMDK); err == nil || !strings.Contains(err.Error(), "recorded as vmdk, but its header is qcow2") {
				t.Errorf("qcow2 read as vmdk: %v", err)
			}
			if chain, err := BackingChain(base, ""); err != nil || len(chain) != 1 {
				t.Errorf("base: %v, %v", paths(chain), err)
			}
		})
	}
}

func TestBackingChainFailures(t *testing.T) {
	dir := t.TempDir()
	base, mid, top := threeLayers(t, dir, "1.1")

	// A missing backing file is named, with the image naming it.
	os.Rename(base, base+".moved")
	_, err := BackingChain(top, "")
	if err == nil || !strings.Contains(err.Error(), "backing file "+dir+"/base.qcow2 of "+dir+"/mid.qcow2") ||
		!strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing base: %v", err)
	}
	// Unreadable: a directory where the base should be.
	os.Mkdir(base, 0o755)
	if _, err := BackingChain(top, ""); err == nil || !strings.Contains(err.Error(), "not a regular file or block device") {
		t.Errorf("directory as base: %v", err)
	}
	os.Remove(base)
	os.Rename(base+".moved", base)

	// A loop: the base made to name the top.
	f, err := os.OpenFile(base, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := RewriteBacking(f, "top.qcow2", "qcow2"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := BackingChain(top, ""); err == nil || !strings.Contains(err.Error(), "loops") {
		t.Errorf("loop: %v", err)
	}
	if _, err := AddBackingChains(sourcesOf(t, top)); err == nil || !strings.Contains(err.Error(), "loops") {
		t.Errorf("AddBackingChains of a loop: %v", err)
	}

	// Names that are not local files.
	for _, name := range []string{"nbd:localhost:10809", "json:{\"file.driver\":\"file\",\"file.filename\":\"/x\"}", "http://example.invalid/base.qcow2"} {
		vmtest.Run(t, "qemu-img", "rebase", "-u", "-f", "qcow2", "-b", name, "-F", "raw", mid)
		_, err := BackingChain(top, "")
		if err == nil || !strings.Contains(err.Error(), "--no-backing-chain") || !strings.Contains(err.Error(), mid) {
			t.Errorf("backing %q: %v", name, err)
		}
	}
	// A backing format coldship does not read.
	vmtest.Run(t, "qemu-img", "rebase", "-u", "-f", "qcow2", "-b", "base.qcow2", "-F", "qed", mid)
	if _, err := BackingChain(top, ""); err == nil || !strings.Contains(err.Error(), `format "qed"`) {
		t.Errorf("qed backing: %v", err)
	}
}

func TestBackingChainVMDK(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.vmdk")
	child := filepath.Join(dir, "child.vmdk")
	vmtest.Run(t, "qemu-img", "create", "-q", "-f", "vmdk", base, "4M")
	vmtest.Run(t, "qemu-img", "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", child)
	desc := filepath.Join(dir, "split.vmdk")
	vmtest.Run(t, "qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", desc, "4M")
	descChild := filepath.Join(dir, "split-child.vmdk")
	vmtest.Run(t, "qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", "-b", "base.vmdk", "-F", "vmdk", descChild)

	tests := []struct {
		path string
		want Image
	}{
		{base, Image{Format: ImageVMDK}},
		{child, Image{Format: ImageVMDK, HasBacking: true, Backing: "base.vmdk"}},
		{desc, Image{Format: ImageVMDK, Descriptor: true}},
		{descChild, Image{Format: ImageVMDK, HasBacking: true, Backing: "base.vmdk", Descriptor: true}},
	}
	for _, tt := range tests {
		f, err := os.Open(tt.path)
		if err != nil {
			t.Fatal(err)
		}
		img, err := ImageInfo(f)
		f.Close()
		if err != nil || img != tt.want {
			t.Errorf("ImageInfo(%s) = %+v, %v; want %+v", filepath.Base(tt.path), img, err, tt.want)
		}
	}
	if chain, err := BackingChain(base, ""); err != nil || len(chain) != 1 || chain[0].Format != ImageVMDK {
		t.Errorf("vmdk base: %v, %v", paths(chain), err)
	}
	for _, p := range []string{child, descChild} {
		_, err := BackingChain(p, "")
		if err == nil || !strings.Contains(err.Error(), "vmdk backing chains are not supported: ship with --no-backing-chain after flattening (qemu-img convert)") ||
			!strings.Contains(err.Error(), `parent "base.vmdk"`) {
			t.Errorf("vmdk child %s: %v", p, err)
		}
	}
}

// sourcesOf collects paths as SOURCE arguments.
func sourcesOf(t *testing.T, args ...string) []Source {
	t.Helper()
	srcs, err := CollectSources(args)
	if err != nil {
		t.Fatal(err)
	}
	return srcs
}

func TestAddBackingChains(t *testing.T) {
	dir := t.TempDir()
	base, _, top := threeLayers(t, dir, "1.1")
	// A second overlay on the same base, in another directory, with an
	// absolute backing name.
	vm2 := filepath.Join(t.TempDir(), "vm2")
	os.Mkdir(vm2, 0o755)
	other := qcow2(t, vm2, "base.qcow2", base, "0.10") // its name clashes with the base's
	os.WriteFile(filepath.Join(vm2, "vm2.xml"), []byte("<domain/>"), 0o644)

	got, err := AddBackingChains(sourcesOf(t, top, vm2))
	if err != nil {
		t.Fatal(err)
	}
	type row struct{ Name, Path, Format, Backing, BackingFormat string }
	var rows []row
	for _, s := range got {
		rows = append(rows, row{s.Name, s.Path, s.Format, s.Backing, s.BackingFormat})
	}
	want := []row{
		{"base.qcow2", dir + "/base.qcow2", "qcow2", "", ""}, // shipped once, next to the first overlay needing it
		{"vm2", vm2, "", "", ""},
		{"vm2/vm2.xml", vm2 + "/vm2.xml", "raw", "", ""},
		{"mid.qcow2", dir + "/mid.qcow2", "qcow2", "base.qcow2", "qcow2"},
		{"vm2/base.qcow2", other, "qcow2", "base.qcow2", "qcow2"},
		{"top.qcow2", top, "qcow2", "mid.qcow2", "qcow2"},
	}
	if !reflect.DeepEqual(rows, want) {
		t.Errorf("sources:\n%+v\nwant\n%+v", rows, want)
	}

	// A base already among the sources is not added again, and a name
	// taken by another file gets a prefix.
	got, err = AddBackingChains(sourcesOf(t, base, top))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Name != "base.qcow2" || got[0].Path != base || got[1].Name != "mid.qcow2" {
		t.Errorf("base given: %+v", got)
	}
	clash := filepath.Join(t.TempDir(), "mid.qcow2")
	os.WriteFile(clash, []byte("not the mid layer"), 0o644)
	got, err = AddBackingChains(sourcesOf(t, clash, top))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range got {
		names = append(names, s.Name+"<-"+s.Backing)
	}
	if want := []string{"base.qcow2<-", "mid.qcow2<-", "2-mid.qcow2<-base.qcow2", "top.qcow2<-2-mid.qcow2"}; !reflect.DeepEqual(names, want) {
		t.Errorf("names %v, want %v", names, want)
	}
	if got[0].UID != uint32(os.Getuid()) || got[0].GID != uint32(os.Getgid()) {
		t.Errorf("owner of an added layer: %d:%d", got[0].UID, got[0].GID)
	}
}

// TestBackingChainUnreadOverlays: an overlay in a format whose chain
// coldship does not follow (qcow version 1, QED) is refused, naming it
// and its backing file, rather than shipped without its backing file;
// one without a backing file ships as it is (raw).
func TestBackingChainUnreadOverlays(t *testing.T) {
	qcow1 := func(backing string) []byte {
		b := make([]byte, 512)
		copy(b, "QFI\xfb\x00\x00\x00\x01")
		if backing != "" {
			binary.BigEndian.PutUint64(b[8:], 64)
			binary.BigEndian.PutUint32(b[16:], uint32(len(backing)))
			copy(b[64:], backing)
		}
		return b
	}
	qed := func(backing string) []byte {
		b := make([]byte, 4096)
		copy(b, "QED\x00")
		binary.LittleEndian.PutUint32(b[4:], 65536)
		if backing != "" {
			binary.LittleEndian.PutUint64(b[16:], 1)
			binary.LittleEndian.PutUint32(b[56:], 64)
			binary.LittleEndian.PutUint32(b[60:], uint32(len(backing)))
			copy(b[64:], backing)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string // "" ships
	}{
		{"qcow1 overlay", qcow1("base.img"), `is a qcow overlay on "base.img"`},
		{"qcow1", qcow1(""), ""},
		{"qed overlay", qed("base.img"), `is a qed overlay on "base.img"`},
		{"qed", qed(""), ""},
		{"qed truncated", []byte("QED\x00"), ""},
	} {
		dir := t.TempDir()
		p := filepath.Join(dir, "disk.img")
		os.WriteFile(p, tc.data, 0o644)
		os.WriteFile(filepath.Join(dir, "base.img"), make([]byte, 512), 0o644)
		chain, err := BackingChain(p, "")
		switch {
		case tc.want == "" && (err != nil || len(chain) != 1 || chain[0].Format != ImageRaw):
			t.Errorf("%s: chain %v, err %v; want itself, shipped as raw", tc.name, chain, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), p+" "+tc.want) || !strings.Contains(err.Error(), "--no-backing-chain")):
			t.Errorf("%s: chain %v, err %v; want it refused", tc.name, chain, err)
		}
	}
}
