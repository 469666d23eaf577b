package restore

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/internal/vmtest"
)

// qcow2Chain makes, in a folder of its own, base.qcow2 (4 MiB, data at
// 0) and top.qcow2 on it, named by its absolute path as libvirt names
// layers (data at 1 MiB), and returns their paths.
func qcow2Chain(t *testing.T) (base, top string) {
	t.Helper()
	dir := t.TempDir()
	base, top = filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	vmtest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "4M")
	vmtest.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 17 0 1M", base)
	vmtest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
	vmtest.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 34 1M 64k", top)
	return base, top
}

func readImage(t *testing.T, shipPath, p string) image {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return image{shipPath, b}
}

// chainShipment ships base (as basePath) and top (as topPath, an overlay
// of basePath) built from the files at base and top.
func chainShipment(t *testing.T, id, base, top, basePath, topPath string) (Shipment, []block) {
	t.Helper()
	sh, blocks := shipment(id, readImage(t, basePath, base), readImage(t, topPath, top))
	for i := range sh.Files {
		if sh.Files[i].Path == topPath {
			sh.Files[i].Backing = &archive.Backing{Path: basePath, Format: archive.ImageQCOW2}
		}
	}
	if d := path.Dir(basePath); d != "vm" {
		// A layer in a folder of its own: the folder is in the shipment.
		df := sh.Files[0]
		df.Path = d
		sh.Files = append([]archive.File{sh.Files[0], df}, sh.Files[1:]...)
		for k := range blocks {
			blocks[k].file++
		}
	}
	return sh, blocks
}

// backingOf returns the backing file name and format of the qcow2 at p.
func backingOf(t *testing.T, p string) (string, string) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := archive.ImageInfo(f)
	if err != nil {
		t.Fatal(err)
	}
	return img.Backing, img.BackingFormat
}

// sameDisk checks with qemu-img that the chain at restored reads as the
// one at source, and that the restored chain is consistent.
func sameDisk(t *testing.T, source, restored string) {
	t.Helper()
	vmtest.Run(t, "qemu-img", "check", "-q", restored)
	if b, err := exec.Command("qemu-img", "compare", source, restored).CombinedOutput(); err != nil {
		t.Errorf("qemu-img compare %s %s: %v\n%s", source, restored, err, b)
	}
}

// TestRelinkBacking: a restored overlay names its restored backing file,
// relative to its folder; a header that is already right is not written;
// an update keeps the rewritten header of an overlay whose header block did
// not change, points an overlay it does not otherwise touch again when the
// name must change, and reads a changed overlay again without taking its
// rewritten header for damage.
func TestRelinkBacking(t *testing.T) {
	base, top := qcow2Chain(t)
	dir := filepath.Join(t.TempDir(), "out")
	sh, blocks := chainShipment(t, "20261130T120000Z-00000001", base, top, "vm/base.qcow2", "vm/top.qcow2")
	if _, err := restoreAll(t, sh, blocks, Options{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	rtop := filepath.Join(dir, "vm", "top.qcow2")
	if name, format := backingOf(t, rtop); name != "base.qcow2" || format != "qcow2" {
		t.Fatalf("restored overlay names %q (%s), want base.qcow2 (qcow2)", name, format)
	}
	sameDisk(t, top, rtop)

	// The same shipment again: nothing differs, nothing is written, and
	// the rewritten header is no reason to rewrite a block.
	res, err := restoreAll(t, sh, blocks, Options{Dir: dir, Update: true})
	if err != nil || res.Written != 0 {
		t.Fatalf("update to the same shipment: %v, %+v", err, res)
	}
	sameDisk(t, top, rtop)

	// The VM ran from the restore (the stamp changed): the overlay is read
	// again; its rewritten header block differs from the shipped one and
	// is written again, then pointed again.
	now := mustStat(t, rtop).ModTime().Add(1e9)
	os.Chtimes(rtop, now, now)
	res, err = restoreAll(t, sh, blocks, Options{Dir: dir, Update: true})
	if err != nil || res.Written == 0 || res.Written > testBS {
		t.Fatalf("update after the overlay changed: %v, %v: want its header block written again", err, res)
	}
	sameDisk(t, top, rtop)

	// The base moves to another folder in the next shipment while the
	// overlay's blocks stay as they were: the overlay is pointed there.
	sh2, blocks2 := chainShipment(t, "20261130T120000Z-00000002", base, top, "vm/images/base.qcow2", "vm/top.qcow2")
	if _, err := restoreAll(t, sh2, blocks2, Options{Dir: dir, Update: true}); err != nil {
		t.Fatal(err)
	}
	if name, _ := backingOf(t, rtop); name != "images/base.qcow2" {
		t.Fatalf("after the base moved, the overlay names %q, want images/base.qcow2", name)
	}
	sameDisk(t, top, rtop)
	if _, err := os.Stat(filepath.Join(dir, "vm", "base.qcow2")); err == nil {
		t.Error("the base's old place is still there")
	}
}

// TestRelinkUnchangedName: an overlay whose relative backing name already
// names where its layer lands is restored byte for byte.
func TestRelinkUnchangedName(t *testing.T) {
	dir := t.TempDir()
	base, top := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	vmtest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "4M")
	vmtest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
	vmtest.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 34 1M 64k", top)
	out := filepath.Join(dir, "out")
	sh, blocks := chainShipment(t, "20261130T120000Z-00000001", base, top, "vm/base.qcow2", "vm/top.qcow2")
	if _, err := restoreAll(t, sh, blocks, Options{Dir: out}); err != nil {
		t.Fatal(err)
	}
	checkImages(t, out, readImage(t, "vm/top.qcow2", top))
}

// TestRelinkRefusesNonQCOW2: a manifest that says a raw file is an overlay
// fails the restore (exit 5), leaving nothing at a final name.
func TestRelinkRefusesNonQCOW2(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	sh, blocks := shipment("20261130T120000Z-00000001", image{"vm/a.img", sparse(3*testBS, 1)}, image{"vm/b.img", sparse(2*testBS, 2)})
	sh.Files[2].Backing = &archive.Backing{Path: "vm/a.img", Format: archive.ImageRaw}
	_, err := restoreAll(t, sh, blocks, Options{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "vm/b.img: point at its backing file") || !strings.Contains(err.Error(), "not a qcow2 image") {
		t.Fatalf("restore of a raw file recorded as an overlay: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "vm", "b.img")); err == nil {
		t.Error("a failed restore left a file at its final name")
	}
}

// TestIncludeBringsLayers: --include of an overlay restores its chain.
func TestIncludeBringsLayers(t *testing.T) {
	base, top := qcow2Chain(t)
	dir := filepath.Join(t.TempDir(), "out")
	sh, blocks := chainShipment(t, "20261130T120000Z-00000001", base, top, "images/base.qcow2", "vm/top.qcow2")
	var log strings.Builder
	_, err := restoreAll(t, sh, blocks, Options{Dir: dir, Include: []string{"vm/top.qcow2"},
		Log: func(f string, a ...any) { fmt.Fprintf(&log, f+"\n", a...) }})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "restoring images/base.qcow2 too") {
		t.Errorf("log %q does not say the base came along", log.String())
	}
	sameDisk(t, top, filepath.Join(dir, "vm", "top.qcow2"))
}

// TestRelinkDevices: a layer written onto a block device is named by the
// device's path; an overlay written onto one is pointed in place, at the
// absolute path of its layer.
func TestRelinkDevices(t *testing.T) {
	base, top := qcow2Chain(t)
	sh, blocks := chainShipment(t, "20261130T120000Z-00000001", base, top, "vm/base.qcow2", "vm/top.qcow2")

	t.Run("layer", func(t *testing.T) {
		dev, _ := vmtest.Loop(t, 8<<20)
		dir := filepath.Join(t.TempDir(), "out")
		if _, err := restoreAll(t, sh, blocks, Options{Dir: dir, Devices: map[string]string{"vm/base.qcow2": dev}}); err != nil {
			t.Fatal(err)
		}
		rtop := filepath.Join(dir, "vm", "top.qcow2")
		if name, _ := backingOf(t, rtop); name != dev {
			t.Fatalf("overlay names %q, want the device %s", name, dev)
		}
		sameDisk(t, top, rtop)
	})
	t.Run("overlay", func(t *testing.T) {
		dev, _ := vmtest.Loop(t, 8<<20)
		dir := filepath.Join(t.TempDir(), "out")
		if _, err := restoreAll(t, sh, blocks, Options{Dir: dir, Devices: map[string]string{"vm/top.qcow2": dev}}); err != nil {
			t.Fatal(err)
		}
		want := filepath.Join(dir, "vm", "base.qcow2")
		if name, _ := backingOf(t, dev); name != want {
			t.Fatalf("overlay on %s names %q, want %s", dev, name, want)
		}
		sameDisk(t, top, dev)
	})
}

func mustStat(t *testing.T, p string) os.FileInfo {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

// TestIncludeBringsDataFiles: --include of a vmdk descriptor restores the
// extent files the manifest lists as its data files, which no pattern
// matched, and says so; the other files stay out.
func TestIncludeBringsDataFiles(t *testing.T) {
	desc := image{"vm/disk.vmdk", []byte("# Disk DescriptorFile\nRW 2048 FLAT \"disk-flat.vmdk\" 0\n")}
	flat := image{"vm/disk-flat.vmdk", bytes.Repeat([]byte{0x5a}, 1<<20)}
	other := image{"vm/other.img", bytes.Repeat([]byte{0x33}, 4096)}
	sh, blocks := shipment("20261130T120000Z-00000001", desc, flat, other)
	sh.Files[1].DataFiles = []string{flat.path}
	dir := filepath.Join(t.TempDir(), "out")
	var log strings.Builder
	w, err := Open(context.Background(), sh, Options{Dir: dir, Include: []string{"vm/disk.vmdk"},
		Log: func(f string, a ...any) { fmt.Fprintf(&log, f+"\n", a...) }})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(false)
	var restored []block // as a receive streams them: the restored files' blocks
	for _, b := range blocks {
		if w.Restored(b.file) {
			restored = append(restored, b)
		}
	}
	if _, err := deliver(t, w, restored, -1); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "restoring vm/disk-flat.vmdk too: it holds the data of vm/disk.vmdk") {
		t.Errorf("log %q does not say the extent came along", log.String())
	}
	checkImages(t, dir, desc, flat)
	if _, err := os.Stat(filepath.Join(dir, other.path)); err == nil {
		t.Errorf("--include vm/disk.vmdk restored %s too", other.path)
	}
}
