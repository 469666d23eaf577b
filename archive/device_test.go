package archive

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/coldship/coldship/internal/vmtest"
)

func TestBlockDeviceSource(t *testing.T) {
	dev, file := vmtest.Loop(t, 8<<20)
	srcs := sourcesOf(t, dev)
	if len(srcs) != 1 || !srcs[0].Device || srcs[0].Name != filepath.Base(dev) || srcs[0].Path != dev {
		t.Fatalf("sources %+v", srcs)
	}
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := StampOf(f)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size != 8<<20 || st.Rdev == 0 || st.PathRdev != st.Rdev {
		t.Errorf("stamp %+v: want the device's size and number", st)
	}
	rs, err := DataRanges(f, st.Size)
	if err != nil || len(rs) != 1 || rs[0] != (Range{0, 8 << 20}) {
		t.Errorf("DataRanges = %v, %v; want the whole device", rs, err)
	}

	// A resize changes the stamp.
	if err := os.Truncate(file, 12<<20); err != nil {
		t.Fatal(err)
	}
	vmtest.Run(t, "losetup", "--set-capacity", dev)
	if again, err := StampOf(f); err != nil || again == st || again.Size != 12<<20 {
		t.Errorf("stamp after a resize: %+v, %v", again, err)
	}

	// Inside a directory a device is still refused.
	dir := t.TempDir()
	os.Symlink(dev, filepath.Join(dir, "disk"))
	if _, err := CollectSources([]string{dir}); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("device in a directory: %v", err)
	}
	// A character device is no disk.
	if _, err := CollectSources([]string{"/dev/null"}); err == nil || !strings.Contains(err.Error(), "not a regular file, block device or directory") {
		t.Errorf("character device: %v", err)
	}
}

// TestBackingChainOnDevice: a qcow2 overlay on a raw base on a block
// device (an LVM volume, say): the base ships as a device.
func TestBackingChainOnDevice(t *testing.T) {
	dev, _ := vmtest.Loop(t, 4<<20)
	dir := t.TempDir()
	top := filepath.Join(dir, "top.qcow2")
	vmtest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", dev, "-F", "raw", top)
	chain, err := BackingChain(top, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || chain[1].Path != dev || chain[1].Format != ImageRaw {
		t.Fatalf("chain %v", paths(chain))
	}
	srcs, err := AddBackingChains(sourcesOf(t, top))
	if err != nil {
		t.Fatal(err)
	}
	if len(srcs) != 2 || !srcs[0].Device || srcs[0].Name != filepath.Base(dev) || srcs[1].Backing != srcs[0].Name || srcs[1].BackingFormat != "raw" {
		t.Errorf("sources %+v", srcs)
	}
	// The same device through another node is the same layer.
	var st syscall.Stat_t
	if err := syscall.Stat(dev, &st); err != nil {
		t.Fatal(err)
	}
	node := filepath.Join(t.TempDir(), "node")
	if err := syscall.Mknod(node, syscall.S_IFBLK|0o600, int(st.Rdev)); err != nil {
		t.Fatal(err)
	}
	srcs, err = AddBackingChains(sourcesOf(t, node, top))
	if err != nil || len(srcs) != 2 || srcs[1].Backing != "node" {
		t.Errorf("device given through another node: %+v, %v", srcs, err)
	}
}

func TestSourceOwner(t *testing.T) {
	if os.Getuid() != 0 {
		vmtest.Unavailable(t, "changing a file's owner needs root")
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "disk.img")
	os.WriteFile(p, []byte("x"), 0o640)
	if err := os.Chown(p, 64055, 994); err != nil {
		t.Fatal(err)
	}
	for _, srcs := range [][]Source{sourcesOf(t, p), sourcesOf(t, dir)} {
		s := srcs[len(srcs)-1]
		if s.Path != p || s.UID != 64055 || s.GID != 994 {
			t.Errorf("source %s owned by %d:%d, want 64055:994", s.Path, s.UID, s.GID)
		}
	}
}
