package restore

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/internal/vmtest"
)

// TestUpdateRefusesDeviceRestore: a folder whose restore wrote a file onto
// a block device (--out-device) cannot be updated by --into, which only
// updates files in the folder: it would write that file into the folder
// as a new full file and leave the device at the old shipment, exit 0.
// It is refused, naming the device, and nothing is written.
func TestUpdateRefusesDeviceRestore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	disk := image{"vm/disk.img", sparse(8*testBS, 3)}
	conf := image{"vm/conf.img", sparse(2*testBS, 4)}
	sh, blocks := shipment("20261130T120000Z-00000001", disk, conf)
	dev, _ := vmtest.Loop(t, int64(len(disk.data)))
	if _, err := restoreAll(t, sh, blocks, Options{Dir: dir, Devices: map[string]string{disk.path: dev}}); err != nil {
		t.Fatal(err)
	}
	disk2 := image{disk.path, append([]byte(nil), disk.data...)}
	disk2.data[3*testBS] ^= 0x55
	sh2, blocks2 := shipment("20261130T120000Z-00000002", disk2, conf)
	_, err := restoreAll(t, sh2, blocks2, Options{Dir: dir, Update: true})
	if err == nil || !strings.Contains(err.Error(), disk.path) || !strings.Contains(err.Error(), dev) || !strings.Contains(err.Error(), "--out-device") {
		t.Fatalf("update of a restore with a file on %s: %v, want a refusal naming the device", dev, err)
	}
	if _, err := os.Stat(filepath.Join(dir, disk.path)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused update wrote %s into the folder (%v)", disk.path, err)
	}
}

// TestDeviceReadOnly: a read-only device (losetup -r, a write-protected
// disk, BLKROSET) opens for writing all the same; it is refused when the
// devices are opened, saying why, not at the first write once blocks are
// being fetched ("operation not permitted").
func TestDeviceReadOnly(t *testing.T) {
	vmtest.Tool(t, "losetup")
	_, file := vmtest.Loop(t, 1<<20)
	out, err := exec.Command("losetup", "--find", "--show", "--read-only", file).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup --read-only: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "--detach", dev).Run() })
	disk := image{"vm/disk.img", sparse(4*testBS, 5)}
	sh, _ := shipment("20261130T120000Z-00000001", disk)
	w, err := Open(context.Background(), sh, Options{Dir: filepath.Join(t.TempDir(), "out"), Devices: map[string]string{disk.path: dev}})
	if err == nil {
		w.Close(false)
	}
	if err == nil || !strings.Contains(err.Error(), dev) || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("Open onto the read-only %s: %v, want a refusal saying it is read-only", dev, err)
	}
}

// TestDeviceNotBlockNeverOpened: an --out-device that is not a block
// device is refused without being opened: opening a character device
// has effects of its own (a watchdog starts counting down, a serial line
// waits for its carrier: the receive would hang).
func TestDeviceNotBlockNeverOpened(t *testing.T) {
	node := filepath.Join(t.TempDir(), "chr")
	if err := unix.Mknod(node, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil { // as /dev/null
		t.Skipf("mknod: %v", err)
	}
	in, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(in)
	if _, err := unix.InotifyAddWatch(in, node, unix.IN_OPEN); err != nil {
		t.Fatal(err)
	}
	disk := image{"vm/disk.img", sparse(2*testBS, 6)}
	sh, _ := shipment("20261130T120000Z-00000001", disk)
	w, err := Open(context.Background(), sh, Options{Dir: filepath.Join(t.TempDir(), "out"), Devices: map[string]string{disk.path: node}})
	if err == nil {
		w.Close(false)
	}
	if err == nil || !strings.Contains(err.Error(), "not a block device") {
		t.Fatalf("Open onto a character device: %v, want a refusal", err)
	}
	var buf [4096]byte
	if n, _ := unix.Read(in, buf[:]); n > 0 {
		t.Errorf("the character device %s was opened", node)
	}
}

// TestDevicePartitionsReread: a whole-disk image restored onto a disk
// brings its own partition table; the kernel must see it, not keep the
// disk's old partitions, through which a mount or an fsck would read and
// write the restored disk at the old offsets.
func TestDevicePartitionsReread(t *testing.T) {
	vmtest.Tool(t, "losetup")
	file := filepath.Join(t.TempDir(), "disk")
	old := make([]byte, 4<<20)
	mbr(old, [2]uint32{128, 1024}, [2]uint32{2048, 2048})
	if err := os.WriteFile(file, old, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", "--partscan", file).CombinedOutput()
	if err != nil {
		vmtest.Unavailable(t, "losetup --partscan: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "--detach", dev).Run() })
	sys := filepath.Join("/sys/block", filepath.Base(dev))
	part := func(n int) string { return filepath.Join(sys, filepath.Base(dev)+"p"+string(rune('0'+n)), "start") }
	if _, err := os.Stat(part(2)); err != nil {
		// A kernel without the MBR parser: partx adds them (BLKPG).
		vmtest.Run(t, "partx", "--add", dev)
	}
	if fh, err := os.Open(dev); err != nil || !hasPartitions(fh) {
		t.Errorf("hasPartitions(%s) is false (%v), with two partitions", dev, err)
	} else {
		fh.Close()
	}

	disk := image{"vm/disk.img", sparse(16*testBS, 7)}
	mbr(disk.data, [2]uint32{64, 512})
	sh, blocks := shipment("20261130T120000Z-00000001", disk)
	if _, err := restoreAll(t, sh, blocks, Options{Dir: filepath.Join(t.TempDir(), "out"), Devices: map[string]string{disk.path: dev}}); err != nil {
		t.Fatal(err)
	}
	// The first partition is the restored table's, or none where the
	// kernel cannot parse the table (the old one is gone all the same).
	if start, err := os.ReadFile(part(1)); err == nil && strings.TrimSpace(string(start)) != "64" {
		t.Errorf("%s's first partition starts at sector %s, want the restored table's 64", dev, start)
	}
	if _, err := os.Stat(part(2)); err == nil {
		t.Errorf("%s keeps the old second partition, which the restored table does not have", dev)
	}
}

// mbr writes an MBR partition table of Linux partitions {start, sectors}.
func mbr(b []byte, parts ...[2]uint32) {
	clear(b[446:512])
	for i, p := range parts {
		e := b[446+16*i:]
		e[4] = 0x83
		binary.LittleEndian.PutUint32(e[8:], p[0])
		binary.LittleEndian.PutUint32(e[12:], p[1])
	}
	b[510], b[511] = 0x55, 0xaa
}
