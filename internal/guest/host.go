package guest

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unicode"
)

// Host is where the tools a guest needs were found.
type Host struct {
	QEMU    string // qemu-system-x86_64
	QEMUImg string // qemu-img
	QEMUIO  string // qemu-io
	Mkfs    string // mkfs.ext4
	Debugfs string // debugfs
	Busybox string // a statically linked busybox
	Kernel  string // /boot/vmlinuz-VERSION
	Initrd  string // /boot/initrd.img-VERSION, the same VERSION
}

// bootDir is where Debian's kernel packages install kernels and initrds.
const bootDir = "/boot"

// FindHost looks for every tool a guest needs and reports all that are
// missing at once, each with the Debian package that provides it.
func FindHost() (Host, error) {
	var h Host
	var missing []string
	for _, tool := range []struct {
		name, pkg string
		path      *string
	}{
		{"qemu-system-x86_64", "qemu-system-x86", &h.QEMU},
		{"qemu-img", "qemu-utils", &h.QEMUImg},
		{"qemu-io", "qemu-utils", &h.QEMUIO},
		{"mkfs.ext4", "e2fsprogs", &h.Mkfs},
		{"debugfs", "e2fsprogs", &h.Debugfs},
		{"busybox", "busybox-static", &h.Busybox},
	} {
		p, err := exec.LookPath(tool.name)
		if err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", tool.name, tool.pkg))
			continue
		}
		*tool.path = p
	}
	if h.Busybox != "" {
		if err := checkStatic(h.Busybox); err != nil {
			missing = append(missing, err.Error())
		}
	}
	var err error
	if h.Kernel, h.Initrd, err = findKernel(bootDir); err != nil {
		missing = append(missing, err.Error())
	}
	if len(missing) > 0 {
		return h, errors.New("cannot boot a test guest: " + strings.Join(missing, "; "))
	}
	return h, nil
}

// Require returns the host's tools, or skips the test naming what is
// missing; under CI=true, where make test installs them, it fails instead.
func Require(t testing.TB) Host {
	t.Helper()
	h, err := FindHost()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%v (make test installs them)", err)
		}
		t.Skipf("%v; run make test-deps", err)
	}
	return h
}

// checkStatic refuses a dynamically linked busybox: the guest has no
// libraries for it to load.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("busybox %s: %v", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("busybox %s is dynamically linked (install busybox-static)", path)
		}
	}
	return nil
}

// findKernel returns the newest kernel in dir that has an initrd of the same
// version beside it, both readable.
func findKernel(dir string) (kernel, initrd string, err error) {
	kernels, _ := filepath.Glob(filepath.Join(dir, "vmlinuz-*"))
	best := ""
	for _, k := range kernels {
		v := strings.TrimPrefix(filepath.Base(k), "vmlinuz-")
		if _, err := os.Stat(filepath.Join(dir, "initrd.img-"+v)); err != nil {
			continue
		}
		if best == "" || versionLess(best, v) {
			best = v
		}
	}
	if best == "" {
		return "", "", fmt.Errorf("no kernel with an initrd in %s (Debian package linux-image-amd64)", dir)
	}
	kernel, initrd = filepath.Join(dir, "vmlinuz-"+best), filepath.Join(dir, "initrd.img-"+best)
	for _, p := range []string{kernel, initrd} {
		f, err := os.Open(p)
		if err != nil {
			return "", "", fmt.Errorf("kernel %s: %v", best, err)
		}
		f.Close()
	}
	return kernel, initrd, nil
}

// versionLess orders kernel versions the way people read them: runs of
// digits compare as numbers (6.1.0-9 before 6.1.0-57), the rest as text.
func versionLess(a, b string) bool {
	for a != "" && b != "" {
		ra, rest1 := leadingRun(a)
		rb, rest2 := leadingRun(b)
		if ra != rb {
			da, db := unicode.IsDigit(rune(ra[0])), unicode.IsDigit(rune(rb[0]))
			if da && db {
				ra, rb = strings.TrimLeft(ra, "0"), strings.TrimLeft(rb, "0")
				if len(ra) != len(rb) {
					return len(ra) < len(rb)
				}
			}
			return ra < rb
		}
		a, b = rest1, rest2
	}
	return len(a) < len(b)
}

// leadingRun splits s after its first run of digits or of non-digits.
func leadingRun(s string) (run, rest string) {
	digit := unicode.IsDigit(rune(s[0]))
	i := 1
	for i < len(s) && unicode.IsDigit(rune(s[i])) == digit {
		i++
	}
	return s[:i], s[i:]
}
