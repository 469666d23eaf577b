package archive

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/coldship/coldship/internal/vmtest"
)

func TestParseVMDKExtents(t *testing.T) {
	for _, tt := range []struct {
		name, text string
		want       []VMDKExtent
		err        string
	}{
		{"monolithicFlat", "# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\n\n# Extent description\nRW 131072 FLAT \"x-flat.vmdk\" 0\n",
			[]VMDKExtent{{"RW", 131072, "FLAT", "x-flat.vmdk"}}, ""},
		{"split sparse and zero", "RW 4192256 SPARSE \"x-s001.vmdk\"\r\nRDONLY 100 SPARSE \"x s002.vmdk\"\n  RW 2048 ZERO\nNOACCESS 8 FLAT \"sub/x.vmdk\" 16\n",
			[]VMDKExtent{{"RW", 4192256, "SPARSE", "x-s001.vmdk"}, {"RDONLY", 100, "SPARSE", "x s002.vmdk"}, {"RW", 2048, "ZERO", ""}, {"NOACCESS", 8, "FLAT", "sub/x.vmdk"}}, ""},
		{"not extent lines", "# RW 1 FLAT \"a\" 0\nddb.adapterType = \"ide\"\nRWX 1 FLAT \"a\" 0\n", nil, ""},
		{"no type", "RW 131072\n", nil, "needs a size and a type"},
		{"bad size", "RW lots FLAT \"x\" 0\n", nil, `extent size "lots"`},
		{"zero size", "RW 0 FLAT \"x\" 0\n", nil, `extent size "0"`},
		{"unquoted", "RW 1 FLAT x-flat.vmdk 0\n", nil, "no quoted extent file name"},
		{"unclosed", "RW 1 FLAT \"x-flat.vmdk 0\n", nil, "no closing quote"},
		{"empty name", "RW 1 SPARSE \"\"\n", nil, "empty extent file name"},
		{"bad offset", "RW 1 FLAT \"x\" -1\n", nil, `extent offset "-1"`},
		{"long name", "RW 1 SPARSE \"" + strings.Repeat("a", 512) + "\"\n", nil, "512 bytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseVMDKExtents([]byte(tt.text))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("= %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func FuzzParseVMDKExtents(f *testing.F) {
	f.Add([]byte("# Disk DescriptorFile\nRW 131072 FLAT \"x-flat.vmdk\" 0\nRW 8 ZERO\n"))
	f.Add([]byte("RDONLY 4192256 SPARSE \"x-s001.vmdk\"\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		extents, err := ParseVMDKExtents(b)
		if err != nil {
			return
		}
		for _, e := range extents {
			if e.Sectors <= 0 || len(e.File) > vmdkMaxExtentName || (e.File == "") != (e.Type == "ZERO") ||
				(e.File != "" && !bytes.Contains(b, []byte(`"`+e.File+`"`))) {
				t.Fatalf("extent %+v accepted", e)
			}
		}
	})
}

func TestVMDKExtentName(t *testing.T) {
	for name, want := range map[string]string{
		"x-flat.vmdk": "x-flat.vmdk", "./x-flat.vmdk": "x-flat.vmdk", "sub//x.vmdk": "sub/x.vmdk", "a:b/../x": "",
		"/srv/x-flat.vmdk": "", "../x-flat.vmdk": "", "sub/../../x": "", "nbd:host:1234": "", "json:{}": "", ".": "", "./": "",
	} {
		got, err := vmdkExtentName(name)
		if got != want || (err == nil) != (want != "") {
			t.Errorf("vmdkExtentName(%q) = %q, %v; want %q", name, got, err, want)
		}
	}
}

// vmdkImage makes a vmdk of subformat sub in dir with qemu-img, with data
// written at 1 MiB.
func vmdkImage(t *testing.T, dir, name, sub string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	vmtest.Run(t, "qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat="+sub, p, "8M")
	vmtest.Run(t, "qemu-io", "-f", "vmdk", "-c", "write -P 7 1M 64k", p)
	return p
}

func TestAddVMDKExtents(t *testing.T) {
	dir := t.TempDir()
	flat := vmdkImage(t, dir, "flat.vmdk", "monolithicFlat")
	split := vmdkImage(t, dir, "split.vmdk", "twoGbMaxExtentSparse")
	mono := vmdkImage(t, dir, "mono.vmdk", "monolithicSparse")
	names := func(srcs []Source) (out []string) {
		for _, s := range srcs {
			out = append(out, s.Name+":"+s.Format+":"+strings.Join(s.DataFiles, ","))
		}
		return out
	}

	t.Run("files", func(t *testing.T) {
		got, err := AddVMDKExtents(sourcesOf(t, flat, split, mono))
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"flat.vmdk:vmdk:flat-flat.vmdk", "mono.vmdk::", "split.vmdk:vmdk:split-s001.vmdk",
			"flat-flat.vmdk:raw:", "split-s001.vmdk::"}
		if !reflect.DeepEqual(names(got), want) {
			t.Errorf("sources %v, want %v", names(got), want)
		}
	})
	t.Run("folder", func(t *testing.T) {
		// The extents are sources already, under the names the descriptors give.
		got, err := AddBackingChains(sourcesOf(t, dir))
		if err != nil {
			t.Fatal(err)
		}
		base := filepath.Base(dir) + "/"
		for _, s := range got {
			if s.Name == base+"flat.vmdk" && !reflect.DeepEqual(s.DataFiles, []string{base + "flat-flat.vmdk"}) {
				t.Errorf("%s: data files %v", s.Name, s.DataFiles)
			}
		}
		if len(got) != 6 {
			t.Errorf("sources %v: want the folder and its 5 files once each", names(got))
		}
	})
	t.Run("base of an overlay", func(t *testing.T) {
		vm := t.TempDir()
		top := filepath.Join(vm, "top.qcow2")
		vmtest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", flat, "-F", "vmdk", top)
		got, err := AddBackingChains(sourcesOf(t, top))
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"flat-flat.vmdk:raw:", "flat.vmdk:vmdk:flat-flat.vmdk", "top.qcow2:qcow2:"}
		if !reflect.DeepEqual(names(got), want) {
			t.Errorf("sources %v, want %v", names(got), want)
		}
	})
}

// TestAddVMDKExtentsFailures: a descriptor whose extents cannot ship so
// that the restored descriptor finds them fails, naming it.
func TestAddVMDKExtentsFailures(t *testing.T) {
	for _, tt := range []struct {
		name, line string
		setup      func(t *testing.T, dir string)
		err        string
	}{
		{"missing", `RW 16 FLAT "gone-flat.vmdk" 0`, nil, "gone-flat.vmdk"},
		{"absolute", `RW 16 FLAT "/srv/x-flat.vmdk" 0`, nil, "an absolute name"},
		{"dotdot", `RW 16 FLAT "../x-flat.vmdk" 0`, nil, "leads out of the descriptor's folder"},
		{"protocol", `RW 16 FLAT "nbd:host:10809" 0`, nil, "not a local file (protocol nbd:)"},
		{"unparsable", `RW 16 FLAT x-flat.vmdk 0`, nil, "no quoted extent file name"},
		{"no extent", `RW 16 ZERO`, nil, "names no extent file"},
		{"fifo", `RW 16 FLAT "fifo" 0`, func(t *testing.T, dir string) {
			if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file or block device"},
		{"subfolder", `RW 16 FLAT "sub/x-flat.vmdk" 0`, func(t *testing.T, dir string) {
			os.Mkdir(filepath.Join(dir, "sub"), 0o755)
			os.WriteFile(filepath.Join(dir, "sub", "x-flat.vmdk"), make([]byte, 8192), 0o644)
		}, "lies in a subfolder"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			desc := filepath.Join(dir, "x.vmdk")
			if err := os.WriteFile(desc, []byte("# Disk DescriptorFile\nversion=1\nparentCID=ffffffff\n"+tt.line+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if tt.setup != nil {
				tt.setup(t, dir)
			}
			_, err := AddVMDKExtents(sourcesOf(t, desc))
			if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), desc) {
				t.Fatalf("error %v; want one naming %s and saying %q", err, desc, tt.err)
			}
		})
	}
	t.Run("itself", func(t *testing.T) {
		desc := filepath.Join(t.TempDir(), "x.vmdk")
		os.WriteFile(desc, []byte("# Disk DescriptorFile\nRW 16 FLAT \"x.vmdk\" 0\n"), 0o644)
		if _, err := AddVMDKExtents(sourcesOf(t, desc)); err == nil || !strings.Contains(err.Error(), "names itself") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("shared extent", func(t *testing.T) {
		dir := t.TempDir()
		a, b := filepath.Join(dir, "a.vmdk"), filepath.Join(dir, "b.vmdk")
		for _, p := range []string{a, b} {
			os.WriteFile(p, []byte("# Disk DescriptorFile\nRW 16 FLAT \"x-flat.vmdk\" 0\n"), 0o644)
		}
		os.WriteFile(filepath.Join(dir, "x-flat.vmdk"), make([]byte, 8192), 0o644)
		if _, err := AddVMDKExtents(sourcesOf(t, a, b)); err == nil || !strings.Contains(err.Error(), "is also an extent of "+a) {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("too large", func(t *testing.T) {
		desc := filepath.Join(t.TempDir(), "x.vmdk")
		b := append([]byte("# Disk DescriptorFile\n"), bytes.Repeat([]byte("#\n"), vmdkMaxDescriptor)...)
		if err := os.WriteFile(desc, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := AddVMDKExtents(sourcesOf(t, desc)); err == nil || !strings.Contains(err.Error(), "larger than") {
			t.Fatalf("error %v", err)
		}
	})
}

func TestIsVMDKDescriptor(t *testing.T) {
	for text, want := range map[string]bool{
		"# Disk DescriptorFile\nversion=1\n":                true,
		"# Disk DescriptorFile":                             true,
		"# written by hand\n   \nversion=1\nCID=fffffffe\n": true,
		"#\r\n \r\nversion=3\r\n":                           true,
		"version=2\n":                                       true,
		"version=1":                                         false, // QEMU wants the newline
		"\nversion=1\n":                                     false, // an empty line is not a blank one to QEMU
		"# comment\nversion=4\n":                            false,
		"# comment\nCID=1\nversion=1\n":                     false,
		"  x\nversion=1\n":                                  false,
		"":                                                  false,
		"QFI\xfb":                                           false,
		"# Disk Descriptor\n" + strings.Repeat("#\n", 2000): false,
	} {
		if got := isVMDKDescriptor([]byte(text)); got != want {
			t.Errorf("isVMDKDescriptor(%q) = %v, want %v", text, got, want)
		}
	}
	// A descriptor that does not start with the usual comment still ships
	// its extents.
	dir := t.TempDir()
	desc := filepath.Join(dir, "x.vmdk")
	os.WriteFile(desc, []byte("# hand-made\nversion=1\nCID=fffffffe\nparentCID=ffffffff\nRW 16 FLAT \"x-flat.vmdk\" 0\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "x-flat.vmdk"), make([]byte, 8192), 0o644)
	got, err := AddVMDKExtents(sourcesOf(t, desc))
	if err != nil || len(got) != 2 || !reflect.DeepEqual(got[0].DataFiles, []string{"x-flat.vmdk"}) {
		t.Errorf("AddVMDKExtents of a descriptor without the usual first line: %+v, %v", got, err)
	}
}
