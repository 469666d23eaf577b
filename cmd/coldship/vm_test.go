package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coldship/coldship/internal/vmtest"
)

// qemuImg makes a qcow2 image in dir (backing "": a 8 MiB base) and
// writes pattern pat at off (n bytes) into it.
func qemuImg(t *testing.T, dir, name, backing string, pat byte, off, n int) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if backing == "" {
		vmtest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "8M")
	} else {
		vmtest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2", p)
	}
	vmtest.Run(t, "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P %d %d %d", pat, off, n), p)
	return p
}

// TestSendBackingChain ships two overlays that share a base, one through
// a middle layer: every layer once, identical to its source.
func TestSendBackingChain(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	images := filepath.Join(dir, "images")
	os.Mkdir(images, 0o755)
	base := qemuImg(t, images, "base.qcow2", "", 0x11, 0, 2<<20)
	mid := qemuImg(t, images, "mid.qcow2", "base.qcow2", 0x22, 1<<20, 1<<20)
	top := qemuImg(t, images, "top.qcow2", "mid.qcow2", 0x33, 3<<20, 64<<10)
	other := qemuImg(t, t.TempDir(), "clone.qcow2", base, 0x44, 5<<20, 64<<10) // absolute backing name

	dest := filepath.Join(dir, "dest")
	r := mustRun(t, "send", top, other, "--to", dest, "-r", rcpt, "--json")
	if n := summaryOf(t, r.stdout)["files"].(float64); n != 4 {
		t.Errorf("shipped %v files, want 4 (top, mid, base once, clone)", n)
	}
	out := filepath.Join(dir, "out")
	files := mustRun(t, "receive", dest, "--out", out, "-i", key).stdout
	// The relative chain landed as it was: byte for byte the source's.
	for _, p := range []string{base, mid, top} {
		sameFile(t, p, filepath.Join(out, filepath.Base(p)))
	}
	// The clone named its base by an absolute path: it now names the
	// restored base beside it.
	if b := vmtest.Run(t, "qemu-img", "info", "--output=json", filepath.Join(out, "clone.qcow2")); !strings.Contains(b, `"backing-filename": "base.qcow2"`) {
		t.Errorf("restored clone:\n%s", b)
	}
	compareChain(t, other, filepath.Join(out, "clone.qcow2"))
	if want := strings.Join([]string{"base.qcow2", "clone.qcow2", "mid.qcow2", "top.qcow2"}, "\n"); sortedBase(files) != want {
		t.Errorf("restored %q, want %q", files, want)
	}
	// The relative chain reads the same disk where it landed.
	if b, err := exec.Command("qemu-img", "compare", top, filepath.Join(out, "top.qcow2")).CombinedOutput(); err != nil {
		t.Errorf("qemu-img compare of the restored chain: %v: %s", err, b)
	}

	// --no-backing-chain: the images alone, and a note that they need
	// their bases.
	r = mustRun(t, "send", top, "--to", dest, "-r", rcpt, "--json", "--no-backing-chain")
	if n := summaryOf(t, r.stdout)["files"].(float64); n != 1 || !strings.Contains(r.stderr, top+` ships without its backing file "mid.qcow2"`) {
		t.Errorf("--no-backing-chain: %v files, stderr %s", n, r.stderr)
	}

	// A missing base fails the send, naming it, before anything is shipped.
	os.Rename(base, base+".away")
	dest2 := filepath.Join(dir, "dest2")
	r = run(t, "send", top, "--to", dest2, "-r", rcpt)
	if r.code != exitError || !strings.Contains(r.stderr, "backing file "+images+"/base.qcow2 of "+mid) {
		t.Errorf("send with a missing base: exit %d, %s", r.code, r.stderr)
	}
	if _, err := os.Stat(dest2); err == nil {
		t.Error("a send with a missing base wrote to the destination")
	}
}

func sortedBase(lines string) string {
	var out []string
	for _, l := range strings.Fields(lines) {
		out = append(out, filepath.Base(l))
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return strings.Join(out, "\n")
}

// TestSendBlockDevice ships a loop device: a raw image of its size,
// restored as a sparse file, zero blocks not shipped.
func TestSendBlockDevice(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	backing := filepath.Join(dir, "lv.img")
	makeImage(t, backing, 16<<20, region{0, 1 << 20, "random"}, region{9 << 20, 1 << 20, "text"})
	dev := vmtest.LoopFile(t, backing)
	dest := filepath.Join(dir, "dest")
	r := mustRun(t, "send", dev, "--to", dest, "-r", rcpt, "--json", "--block-size", "64K")
	sum := summaryOf(t, r.stdout)
	if sum["bytes_total"].(float64) != 16<<20 || sum["bytes_zero"].(float64) < 13<<20 || sum["bytes_hole"].(float64) != 0 {
		t.Errorf("summary %v: want the whole 16 MiB read, its zeros not shipped, no holes", sum)
	}
	out := filepath.Join(dir, "out")
	mustRun(t, "receive", dest, "--out", out, "-i", key, "-q")
	restored := filepath.Join(out, filepath.Base(dev))
	sameFile(t, backing, restored)
	if a := allocated(t, restored); a > 4<<20 {
		t.Errorf("restored device image allocates %d bytes: not sparse", a)
	}
}

// TestExitBusy: every source in use exits 6, naming what holds it. (An
// image under QEMU's OFD locks: TestLockedImageRefused; one that changes
// while it is read: TestImageWrittenDuringSend.)
func TestExitBusy(t *testing.T) {
	_, rcpt := keypair(t)
	dir := t.TempDir()
	dest := filepath.Join(dir, "dest")
	busy := func(t *testing.T, want []string, args ...string) {
		t.Helper()
		r := run(t, append(args, "--to", dest, "-r", rcpt)...)
		if r.code != exitBusy {
			t.Errorf("exit %d, want 6: %s", r.code, r.stderr)
		}
		for _, w := range want {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("stderr %q lacks %q", r.stderr, w)
			}
		}
		if _, err := os.Stat(dest); err == nil {
			t.Error("a refused send wrote to the destination")
		}
	}

	t.Run("open for writing", func(t *testing.T) {
		img := filepath.Join(t.TempDir(), "disk.img")
		makeImage(t, img, 1<<20, region{0, 1 << 20, "random"})
		pid := holdInShell(t, `exec 3<>"$1"; echo ready; exec sleep 1000`, img)
		busy(t, []string{"refusing to read " + img, "open for writing", fmt.Sprintf("(pid %d, sleep)", pid)}, "send", img)
	})
	t.Run("flock", func(t *testing.T) {
		requireTool(t, "flock")
		img := filepath.Join(t.TempDir(), "disk.img")
		makeImage(t, img, 1<<20, region{0, 1 << 20, "random"})
		pid := holdInShell(t, `exec 3<"$1"; flock -x 3; echo ready; exec sleep 1000`, img)
		busy(t, []string{"refusing to read " + img, "flock(2) write lock", fmt.Sprintf("(pid %d, sleep)", pid)}, "send", img)
	})
	t.Run("block device", func(t *testing.T) {
		dev, _ := vmtest.Loop(t, 8<<20)
		pid := holdInShell(t, `exec 3<>"$1"; echo ready; exec sleep 1000`, dev)
		busy(t, []string{"refusing to read " + dev, fmt.Sprintf("open for writing (pid %d, sleep)", pid)}, "send", dev)
	})
	t.Run("mounted block device", func(t *testing.T) {
		dev, _ := vmtest.Loop(t, 16<<20)
		vmtest.Run(t, "mkfs.ext4", "-q", dev)
		mnt := t.TempDir()
		vmtest.Run(t, "mount", dev, mnt)
		defer vmtest.Run(t, "umount", mnt)
		busy(t, []string{"refusing to read " + dev, "mounted on " + mnt}, "send", dev)
	})
	t.Run("running libvirt domain", func(t *testing.T) {
		requireTool(t, "virsh")
		img := filepath.Join(t.TempDir(), "web01.img")
		makeImage(t, img, 1<<20, region{0, 1 << 20, "random"})
		uri := testDriver(t, domainXML("db01", false, fileDiskXML(img, "raw", "vda")))
		busy(t, []string{"libvirt domain db01 is running: shut it down first, or pass --shutdown"},
			"send", "--libvirt-domain", "db01", "--libvirt-uri", uri)
	})
}

func TestExitBusyDocumented(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"send", "--help"}} {
		if r := run(t, args...); !strings.Contains(r.stdout, "6    busy: a source image") {
			t.Errorf("coldship %s does not document exit status 6:\n%s", strings.Join(args, " "), r.stdout)
		}
	}
}

// holdInShell runs script with sh -c, waits for it to print "ready" and
// returns its pid; it is killed when the test ends.
func holdInShell(t *testing.T, script string, args ...string) int {
	t.Helper()
	cmd := exec.Command("/bin/sh", append([]string{"-c", script, "sh"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("shell: %q, %v", line, err)
	}
	// The script says ready just before it execs the program that holds
	// the file: wait until the process is no longer the shell.
	pid := cmd.Process.Pid
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err != nil || string(comm) != "sh\n" {
			break
		}
	}
	return pid
}

// domainXML is a libvirt test-driver domain; runstate 5 is shut off.
func domainXML(name string, shutOff bool, disks ...string) string {
	state := ""
	if shutOff {
		state = "<test:runstate>5</test:runstate>"
	}
	return fmt.Sprintf(`<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
  <name>%s</name><memory>65536</memory><os><type>hvm</type></os>
  <devices>
%s
  </devices>%s
</domain>
`, name, strings.Join(disks, "\n"), state)
}

func fileDiskXML(path, format, target string) string {
	return fmt.Sprintf("    <disk type='file' device='disk'><driver name='qemu' type='%s'/><source file='%s'/><target dev='%s' bus='virtio'/></disk>",
		format, path, target)
}

// testDriver writes a test-driver node holding domains and returns its URI.
func testDriver(t *testing.T, domains ...string) string {
	t.Helper()
	node := filepath.Join(t.TempDir(), "node.xml")
	if err := os.WriteFile(node, []byte("<node>\n"+strings.Join(domains, "")+"</node>\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return "test://" + node
}

// TestLibvirtChainAndBlockDisk: a domain whose first disk is a qcow2
// overlay (its <backingStore> given in the definition, a further layer
// only in the headers) and whose second is a block device. The hooks see
// the files in every phase; the destination gets every layer and the
// device's image, and --libvirt-define points the definition at them.
func TestLibvirtChainAndBlockDisk(t *testing.T) {
	requireTool(t, "virsh")
	key, rcpt := keypair(t)
	dir := t.TempDir()
	images := filepath.Join(dir, "images")
	os.Mkdir(images, 0o755)
	base := qemuImg(t, images, "base.qcow2", "", 0x11, 0, 1<<20)
	mid := qemuImg(t, images, "mid.qcow2", "base.qcow2", 0x22, 1<<20, 1<<20)
	top := qemuImg(t, images, "web01.qcow2", mid, 0x33, 2<<20, 1<<20) // by its absolute path, as libvirt names layers
	lv := filepath.Join(dir, "lv.img")
	makeImage(t, lv, 8<<20, region{1 << 20, 1 << 20, "random"})
	dev := vmtest.LoopFile(t, lv)

	chain := fmt.Sprintf(`    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/>
      <backingStore type='file'><format type='qcow2'/><source file='%s'/></backingStore>
      <target dev='vda' bus='virtio'/></disk>`, top, mid)
	block := fmt.Sprintf("    <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='%s'/><target dev='vdb' bus='virtio'/></disk>", dev)
	uri := testDriver(t, domainXML("web01", true, chain, block))

	hk := t.TempDir()
	dest := filepath.Join(dir, "dest")
	r := mustRun(t, "send", "--libvirt-domain", "web01", "--libvirt-uri", uri, "--to", dest, "-r", rcpt, "--json",
		"--hook", filesHook(hk, "pre-send"), "--hook", filesHook(hk, "post-send"))
	if n := summaryOf(t, r.stdout)["files"].(float64); n != 7 {
		t.Errorf("shipped %v files, want 7: three layers, the device, definition, sidecar and their folder", n)
	}
	if got, want := hookFiles(t, hk, "pre-send"), strings.Join([]string{top, mid, dev}, "\n"); got != want {
		t.Errorf("pre-send COLDSHIP_FILES %q, want %q", got, want)
	}
	if got, want := hookFiles(t, hk, "post-send"), strings.Join([]string{top, mid, dev, images + "/base.qcow2"}, "\n"); got != want {
		t.Errorf("post-send COLDSHIP_FILES %q, want %q", got, want)
	}

	out := filepath.Join(dir, "site-b")
	os.Rename(images, images+".away") // no source path may be needed
	mustRun(t, "receive", dest, "--out", out, "-i", key, "-q", "--libvirt-define", "--libvirt-uri", "test:///default")
	restored := filepath.Join(out, "web01")
	checkRestoredChain(t, images, out, filepath.Join(restored, "web01.qcow2"), 3)
	os.Rename(images+".away", images)
	for _, p := range []string{base, mid} {
		sameFile(t, p, filepath.Join(restored, filepath.Base(p)))
	}
	compareChain(t, top, filepath.Join(restored, "web01.qcow2"))
	sameFile(t, lv, filepath.Join(restored, filepath.Base(dev)))

	// The definition points at the restored layer and at the device's
	// image, now a file.
	xml, err := os.ReadFile(filepath.Join(restored, "web01.xml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"<source file='" + restored + "/web01.qcow2'/>",
		"<source file='" + restored + "/mid.qcow2'/>",
		"<source file='" + restored + "/" + filepath.Base(dev) + "'/>",
	} {
		if !strings.Contains(string(xml), want) {
			t.Errorf("defined definition lacks %s:\n%s", want, xml)
		}
	}
	if strings.Contains(string(xml), images) || strings.Contains(string(xml), dev) || strings.Contains(string(xml), "type='block'") {
		t.Errorf("defined definition still names a source path:\n%s", xml)
	}
	b, err := exec.Command("virsh", "-c", "test:///default", "define "+filepath.Join(restored, "web01.xml")+" ; dumpxml web01").CombinedOutput()
	if err != nil || !strings.Contains(string(b), restored+"/mid.qcow2") {
		t.Errorf("virsh define of the rewritten definition: %v\n%s", err, b)
	}

	// The block disk onto a block device at the destination: the
	// definition keeps it a block disk, on that device.
	target, _ := vmtest.Loop(t, 8<<20)
	out2 := filepath.Join(dir, "site-c")
	mustRun(t, "receive", dest, "--out", out2, "-i", key, "-q", "--out-device", "web01/"+filepath.Base(dev)+"="+target,
		"--libvirt-define", "--libvirt-uri", "test:///default")
	sameDevice(t, lv, target)
	xml, err = os.ReadFile(filepath.Join(out2, "web01", "web01.xml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"<disk type='block' device='disk'>", "<source dev='" + target + "'/>",
		"<source file='" + out2 + "/web01/web01.qcow2'/>",
		"<source file='" + out2 + "/web01/mid.qcow2'/>",
	} {
		if !strings.Contains(string(xml), want) {
			t.Errorf("definition defined with --out-device lacks %s:\n%s", want, xml)
		}
	}
	if strings.Contains(string(xml), "'"+dev+"'") || strings.Contains(string(xml), images) {
		t.Errorf("definition defined with --out-device still names a source path:\n%s", xml)
	}

	// --include that leaves out the domain's files says so, rather than
	// that the shipment holds no domain.
	for i, pats := range [][]string{{"web01/base.qcow2"}, {"web01/web01.xml", "web01/" + libvirtSidecar}} {
		args := []string{"receive", dest, "--out", filepath.Join(dir, fmt.Sprint("site-d", i)), "-i", key, "-q",
			"--libvirt-define", "--libvirt-uri", "test:///default"}
		for _, p := range pats {
			args = append(args, "--include", p)
		}
		r := run(t, args...)
		if r.code == 0 || !strings.Contains(r.stderr, "--include left it out") || !strings.Contains(r.stderr, "was not restored") {
			t.Errorf("receive --include %s --libvirt-define: exit %d, %q", pats, r.code, r.stderr)
		}
	}

	// A definition whose <backingStore> is not what the headers say is
	// refused before anything is shipped; the on-failure hook sees the
	// files too.
	wrong := strings.Replace(chain, mid, base, 1)
	uri = testDriver(t, domainXML("web01", true, wrong))
	r = run(t, "send", "--libvirt-domain", "web01", "--libvirt-uri", uri, "--to", filepath.Join(dir, "dest2"), "-r", rcpt,
		"--hook", filesHook(hk, "on-failure"))
	if r.code != exitError || !strings.Contains(r.stderr, "<backingStore> 1 is "+base) {
		t.Errorf("mismatched backingStore: exit %d, %s", r.code, r.stderr)
	}
	if f := hookFiles(t, hk, "on-failure"); f != top+"\n"+base {
		t.Errorf("on-failure COLDSHIP_FILES %q", f)
	}
}

// sameDevice checks that the device holds the file's bytes at its start.
func sameDevice(t *testing.T, file, dev string) {
	t.Helper()
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(f, got); err != nil || !bytes.Equal(got, want) {
		t.Errorf("%s does not hold %s: %v", dev, file, err)
	}
}

// filesHook writes COLDSHIP_FILES, as it is, to DIR/PHASE.files.
func filesHook(dir, phase string) string {
	return fmt.Sprintf(`%s=printf '%%s' "$COLDSHIP_FILES" > %s/%s.files`, phase, dir, phase)
}

func hookFiles(t *testing.T, dir, phase string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, phase+".files"))
	if err != nil {
		t.Fatalf("the %s hook did not run: %v", phase, err)
	}
	return string(b)
}

// TestOutDeviceInUse: receive --out-device refuses, before anything is
// written, a device that another process has open for writing (a running
// VM's QEMU opens its disks so, without O_EXCL), exit 6 naming it; the
// device keeps its bytes.
func TestOutDeviceInUse(t *testing.T) {
	dest, key, id, _ := sendSample(t)
	target, _ := vmtest.Loop(t, 8<<20)
	fill := bytes.Repeat([]byte{0xab}, 8<<20)
	if err := os.WriteFile(target, fill, 0o600); err != nil {
		t.Fatal(err)
	}
	holder := exec.Command("sh", "-c", "exec 3<>"+target+"; exec sleep 60")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { holder.Process.Kill(); holder.Wait() }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", holder.Process.Pid)); len(fds) > 3 || time.Now().After(deadline) {
			break
		}
	}
	r := run(t, "receive", dest, id, "-i", key, "--out", t.TempDir(), "--out-device", "vm/disk.img="+target)
	if r.code != exitBusy || !strings.Contains(r.stderr, target) || !strings.Contains(r.stderr, "open for writing") {
		t.Errorf("receive --out-device onto a device held open for writing: exit %d, want 6 naming it: %s", r.code, r.stderr)
	}
	if got, _ := os.ReadFile(target); !bytes.Equal(got, fill) {
		t.Error("the device was written")
	}
}

// TestRestoredNamesRelativeOut: --libvirt-define finds the restored files
// when --out was given relative to the working directory (--out .), as
// the restored paths are absolute.
func TestRestoredNamesRelativeOut(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	files := []string{filepath.Join(dir, "out", "web01", "web01.qcow2"), filepath.Join(dir, "out", "web01", "coldship-libvirt.json")}
	got := restoredNames("out", files, nil)
	if got["web01/web01.qcow2"] != files[0] || got["web01/coldship-libvirt.json"] != files[1] {
		t.Errorf("restoredNames with a relative --out: %v", got)
	}
}

// TestSpecialBitsNoticed: a source with setuid, setgid or sticky bits is
// shipped with its permission bits only, and send says so.
func TestSpecialBitsNoticed(t *testing.T) {
	_, rcpt := keypair(t)
	vm := filepath.Join(t.TempDir(), "vm")
	shared := filepath.Join(vm, "shared")
	os.MkdirAll(shared, 0o770)
	os.Chmod(shared, 0o770|os.ModeSetgid)
	os.WriteFile(filepath.Join(vm, "plain.img"), []byte("data"), 0o640)
	r := mustRun(t, "send", vm, "--to", t.TempDir(), "-r", rcpt)
	if !strings.Contains(r.stderr, shared+": its setgid bit is not shipped") || strings.Contains(r.stderr, "plain.img: its") {
		t.Errorf("send of a setgid folder: stderr %q", r.stderr)
	}
}

// TestParseDevices: one device per file and one file per device.
func TestParseDevices(t *testing.T) {
	if _, err := parseDevices([]string{"a.img=/dev/vg/a", "b.img=/dev/vg/a"}); err == nil || !strings.Contains(err.Error(), "would both be written onto /dev/vg/a") {
		t.Errorf("two files onto one device: %v", err)
	}
	if _, err := parseDevices([]string{"a.img=/dev/vg/a", "a.img=/dev/vg/b"}); err == nil || !strings.Contains(err.Error(), "given twice") {
		t.Errorf("one file onto two devices: %v", err)
	}
	if got, err := parseDevices([]string{"a.img=/dev/vg/a", "b.img=/dev/vg/b"}); err != nil || len(got) != 2 {
		t.Errorf("two files onto two devices: %v, %v", got, err)
	}
}

// TestOutDeviceOverwritesOldData: a device holding an old filesystem gets
// the image exactly, its holes and zero blocks written as zeros (a device
// has no holes), and the bytes past the image's size kept; a device smaller
// than the image is refused, naming it, with nothing written.
func TestOutDeviceOverwritesOldData(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	img, dest := filepath.Join(dir, "vm", "disk.img"), filepath.Join(dir, "dest")
	os.Mkdir(filepath.Dir(img), 0o755)
	// A block of data pages and zero pages, a zero block, holes.
	makeImage(t, img, 4<<20, region{0, 8 << 10, "random"}, region{48 << 10, 4 << 10, "random"},
		region{1 << 20, 128 << 10, "zero"}, region{2 << 20, 64 << 10, "random"})
	id, _ := summaryOf(t, mustRun(t, "send", filepath.Dir(img), "--to", dest, "-r", rcpt, "--block-size", "64K", "--json").stdout)["shipment"].(string)
	want, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	old := bytes.Repeat([]byte{0xab}, 8<<20)
	target, _ := vmtest.Loop(t, int64(len(old)))
	small, _ := vmtest.Loop(t, int64(len(want))/2)
	for dev, n := range map[string]int{target: len(old), small: len(want) / 2} {
		if err := os.WriteFile(dev, old[:n], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mustRun(t, "receive", dest, id, "-i", key, "-q", "--out", t.TempDir(), "--out-device", "vm/disk.img="+target)
	got, err := os.ReadFile(target)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(want)], want) {
		t.Error("the device does not hold the image: old data left where the image has holes or zero blocks")
	}
	if !bytes.Equal(got[len(want):], old[len(want):]) {
		t.Error("bytes past the image's size were changed")
	}
	r := run(t, "receive", dest, id, "-i", key, "--out", t.TempDir(), "--out-device", "vm/disk.img="+small)
	if r.code == 0 || !strings.Contains(r.stderr, small) || !strings.Contains(r.stderr, "device holds") {
		t.Errorf("receive onto a device smaller than the image: exit %d, want a refusal naming %s: %s", r.code, small, r.stderr)
	}
	if got, _ := os.ReadFile(small); !bytes.Equal(got, old[:len(want)/2]) {
		t.Error("the smaller device was written")
	}
}

// TestUnshippableNamesRefused: a file whose name a receive refuses (a
// backslash) or cannot keep (bytes that are not UTF-8, which the JSON
// manifest turns into U+FFFD) fails the send, exit 1, naming it, before
// anything is shipped; a send that exited 0 made a shipment every receive
// refused as damaged (exit 5) or restored under another name.
func TestUnshippableNamesRefused(t *testing.T) {
	_, rcpt := keypair(t)
	for _, name := range []string{`a\b.img`, "disk-\xff.img"} {
		vm := filepath.Join(t.TempDir(), "vm")
		os.MkdirAll(vm, 0o755)
		os.WriteFile(filepath.Join(vm, "ok.img"), []byte("data"), 0o640)
		if err := os.WriteFile(filepath.Join(vm, name), []byte("data"), 0o640); err != nil {
			t.Fatal(err)
		}
		dest := filepath.Join(t.TempDir(), "dest")
		os.MkdirAll(dest, 0o755)
		r := run(t, "send", vm, "--to", dest, "-r", rcpt, "--state-dir", t.TempDir())
		if r.code != 1 || !strings.Contains(r.stderr, filepath.Join(vm, name)) {
			t.Errorf("send of %q: exit %d, stderr %q; want 1 naming the file", name, r.code, r.stderr)
		}
		if left, _ := os.ReadDir(dest); len(left) != 0 {
			t.Errorf("send of %q left %d objects at the destination", name, len(left))
		}
	}
}

// TestDestInsideSourceRefused: a local DEST or a --state-dir inside a
// SOURCE folder is a usage error (exit 2) before anything is written: each
// send shipped every earlier shipment again, inside the new one.
func TestDestInsideSourceRefused(t *testing.T) {
	_, rcpt := keypair(t)
	vm := filepath.Join(t.TempDir(), "vm")
	os.MkdirAll(filepath.Join(vm, "sub"), 0o755)
	os.WriteFile(filepath.Join(vm, "disk.img"), []byte("data"), 0o640)
	link := filepath.Join(t.TempDir(), "link")
	os.Symlink(vm, link)
	for _, tc := range []struct{ name, dest, state string }{
		{"dest", filepath.Join(vm, "dest"), t.TempDir()},
		{"dest file://", "file://" + filepath.Join(vm, "sub", "dest"), t.TempDir()},
		{"dest through a link", filepath.Join(link, "dest"), t.TempDir()},
		{"state", filepath.Join(t.TempDir(), "dest"), filepath.Join(vm, "state")},
	} {
		r := run(t, "send", vm, "--to", tc.dest, "-r", rcpt, "--state-dir", tc.state)
		if r.code != 2 || !strings.Contains(r.stderr, "inside SOURCE "+vm) {
			t.Errorf("%s: exit %d, stderr %q; want 2, saying it is inside the source", tc.name, r.code, r.stderr)
		}
		for _, p := range []string{filepath.Join(vm, "dest"), filepath.Join(vm, "sub", "dest"), filepath.Join(vm, "state")} {
			if _, err := os.Stat(p); err == nil {
				t.Errorf("%s: %s was created", tc.name, p)
				os.RemoveAll(p)
			}
		}
	}
}
