package guest

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestCheckConsole(t *testing.T) {
	d := Digest([]byte("data"))
	boot := "Begin: Mounting root file system ... done.\r\n" + Marker + " t0k\r\n"
	for _, c := range []struct {
		name, log, want string // want: a piece of the error, "" for none
	}{
		{"ok", boot + DigestLabel + " " + d + "\r\n[   11.9] reboot: Power down\r\n", ""},
		{"no marker", "Kernel panic - not syncing: VFS: Unable to mount root fs\r\n", "did not run"},
		{"another guest", Marker + " other\r\n" + DigestLabel + " " + d + "\r\n", "another guest"},
		{"no digest", boot, "no " + DigestLabel},
		{"digest before marker", DigestLabel + " " + d + "\r\n" + boot, "no " + DigestLabel},
		{"wrong digest", boot + DigestLabel + " " + Digest([]byte("other")) + "\r\n", "want " + d},
		{"sha256sum failed", boot + DigestLabel + " failed\r\n", "SHA-256 failed"},
		{"token is a prefix", Marker + " t0k1\r\n" + DigestLabel + " " + d + "\r\n", "want token t0k"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := CheckConsole([]byte(c.log), "t0k", d)
			switch {
			case c.want == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("error %v, want one saying %q", err, c.want)
			}
		})
	}
}

func TestVersionLess(t *testing.T) {
	for _, c := range []struct {
		a, b string
		less bool
	}{
		{"6.1.0-9-amd64", "6.1.0-57-amd64", true},
		{"6.1.0-57-amd64", "6.1.0-9-amd64", false},
		{"6.1.0-57-amd64", "6.12.0-1-amd64", true},
		{"6.1.0-57-amd64", "6.1.0-57-amd64", false},
		{"6.1.0-57", "6.1.0-57-amd64", true},
		{"5.10.0-30-amd64", "6.1.0-1-amd64", true},
	} {
		if got := versionLess(c.a, c.b); got != c.less {
			t.Errorf("versionLess(%q, %q) = %v", c.a, c.b, got)
		}
	}
}

// The hook command line must reach QEMU argument by argument.
func TestShellJoin(t *testing.T) {
	args := []string{"printf", `%s\n`, "plain", "with space", "it's", "", "$HOME", "a,b=c:d", "`x`"}
	out, err := exec.Command("sh", "-c", ShellJoin(args)).Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Join(args[2:], "\n") + "\n"; string(out) != want {
		t.Errorf("sh saw %q, want %q", out, want)
	}
}

// Two guests that differ only in /data differ only in /data's blocks: an
// overlay of one on the other holds the new data and nothing else.
func TestBuildDiffersOnlyInData(t *testing.T) {
	h := Require(t)
	debugfs := h.Debugfs
	dir := t.TempDir()
	oldData, newData := make([]byte, 300<<10), make([]byte, 300<<10)
	rand.Read(oldData)
	rand.Read(newData)
	a, b := filepath.Join(dir, "a.raw"), filepath.Join(dir, "b.raw")
	for _, g := range []struct {
		path string
		data []byte
	}{{a, oldData}, {b, newData}} {
		if g.path == b {
			// Files written in another second have another ctime, which
			// mkfs.ext4 -d copies: the builds must not depend on it.
			time.Sleep(1100 * time.Millisecond)
		}
		if err := h.Build(context.Background(), g.path, Spec{Token: "t0k", Data: g.data}); err != nil {
			t.Fatal(err)
		}
	}
	cat := func(img, file string) []byte {
		out, err := exec.Command(debugfs, "-R", "cat "+file, img).Output()
		if err != nil {
			t.Fatalf("debugfs cat %s: %v", file, err)
		}
		return out
	}
	if !bytes.Equal(cat(b, "/data"), newData) {
		t.Error("/data in the image is not the spec's data")
	}
	if init := cat(b, "/sbin/init"); !bytes.Contains(init, []byte(Marker+" t0k")) {
		t.Errorf("/sbin/init does not print the token:\n%s", init)
	}
	if out, err := exec.Command(filepath.Join(filepath.Dir(h.Mkfs), "e2fsck"), "-fn", b).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn of the image: %v\n%s", err, out)
	}
	if fi, err := os.Stat(b); err != nil || fi.Size() != DefaultSize {
		t.Errorf("image size: %v, %v; want %d", fi, err, DefaultSize)
	}

	out, err := exec.Command(debugfs, "-R", "blocks /data", b).Output()
	if err != nil {
		t.Fatalf("debugfs blocks /data: %v", err)
	}
	dataBlocks := map[int]bool{}
	for _, f := range strings.Fields(string(out)) {
		n, _ := strconv.Atoi(f)
		dataBlocks[n] = true
	}
	x, _ := os.ReadFile(a)
	y, _ := os.ReadFile(b)
	var outside []int
	for i := 0; i+4096 <= len(x); i += 4096 {
		if !bytes.Equal(x[i:i+4096], y[i:i+4096]) && !dataBlocks[i/4096] {
			outside = append(outside, i/4096)
		}
	}
	if len(dataBlocks) != 75 || len(outside) > 0 {
		t.Errorf("/data has %d blocks (want 75); blocks outside it that differ: %v", len(dataBlocks), outside)
	}
}
