package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coldship/coldship/internal/vmtest"
)

// vmdkDisk makes dir/name, a 64 MiB vmdk of subformat sub, with data
// written by qemu-io at 1 MiB and 40 MiB, and a raw copy of what it reads
// as (ref) to compare the restored disk with once the source is gone.
func vmdkDisk(t *testing.T, dir, name, sub string) (img, ref string) {
	t.Helper()
	img = filepath.Join(dir, name)
	vmtest.Run(t, "qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat="+sub, img, "64M")
	vmtest.Run(t, "qemu-io", "-f", "vmdk", "-c", "write -P 90 1M 2M", "-c", "write -P 17 40M 64k", img)
	ref = filepath.Join(t.TempDir(), name+".raw")
	vmtest.Run(t, "qemu-img", "convert", "-f", "vmdk", "-O", "raw", img, ref)
	return img, ref
}

// compareWithRef checks with qemu-img compare that the vmdk at restored
// reads as the raw image ref.
func compareWithRef(t *testing.T, ref, restored string) {
	t.Helper()
	b, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "vmdk", ref, restored).CombinedOutput()
	if err != nil || !strings.Contains(string(b), "Images are identical") {
		t.Errorf("qemu-img compare %s %s: %v\n%s", ref, restored, err, b)
	}
}

// TestVMDKDescriptorRoundTrip: a vmdk made of a descriptor and extent
// files ships with its extents, named, and restores, with the source gone,
// to a disk that reads as the source did; --include of the descriptor
// brings its extents, and --no-backing-chain still ships them.
func TestVMDKDescriptorRoundTrip(t *testing.T) {
	for _, tc := range []struct{ sub, extent string }{
		{"monolithicFlat", "disk-flat.vmdk"},
		{"twoGbMaxExtentSparse", "disk-s001.vmdk"},
	} {
		t.Run(tc.sub, func(t *testing.T) {
			key, rcpt := keypair(t)
			site := filepath.Join(t.TempDir(), "site-a")
			os.Mkdir(site, 0o755)
			img, ref := vmdkDisk(t, site, "disk.vmdk", tc.sub)
			other := filepath.Join(site, "other.img")
			makeImage(t, other, 64<<10, region{0, 64 << 10, "random"})
			dest := filepath.Join(t.TempDir(), "dest")
			hooked := t.TempDir()
			r := mustRun(t, "send", img, other, "--to", dest, "-r", rcpt, "--json", "--hook", filesHook(hooked, "post-send"))
			if got, want := hookFiles(t, hooked, "post-send"), img+"\n"+other+"\n"+filepath.Join(site, tc.extent); got != want {
				t.Errorf("post-send COLDSHIP_FILES %q, want %q", got, want)
			}
			if n := summaryOf(t, r.stdout)["files"].(float64); n != 3 {
				t.Errorf("shipped %v files, want 3 (the descriptor, its extent, other.img)", n)
			}
			if want := "also shipping " + filepath.Join(site, tc.extent) + ", an extent file of the vmdk descriptor " + img; !strings.Contains(r.stdout, want) {
				t.Errorf("no notice %q:\n%s", want, r.stdout)
			}

			out := filepath.Join(t.TempDir(), "site-b")
			part := filepath.Join(t.TempDir(), "part")
			mustRun(t, "receive", dest, "--out", out, "-i", key, "-q", "--hook", filesHook(hooked, "post-receive"))
			if got := hookFiles(t, hooked, "post-receive"); !strings.Contains(got, filepath.Join(out, tc.extent)) {
				t.Errorf("post-receive COLDSHIP_FILES %q lacks the extent", got)
			}
			r = mustRun(t, "receive", dest, "--out", part, "-i", key, "--include", "disk.vmdk")
			if !strings.Contains(r.stderr, "restoring "+tc.extent+" too: it holds the data of disk.vmdk") {
				t.Errorf("--include of a descriptor: stderr does not say its extent came along: %s", r.stderr)
			}
			if _, err := os.Stat(filepath.Join(part, "other.img")); err == nil {
				t.Error("--include disk.vmdk restored other.img too")
			}
			if err := os.Rename(site, site+".away"); err != nil {
				t.Fatal(err)
			}
			compareWithRef(t, ref, filepath.Join(out, "disk.vmdk"))
			compareWithRef(t, ref, filepath.Join(part, "disk.vmdk"))
			os.Rename(site+".away", site)

			// The extents are the image itself, not a backing chain.
			r = mustRun(t, "send", img, "--to", dest, "-r", rcpt, "--json", "--no-backing-chain")
			if n := summaryOf(t, r.stdout)["files"].(float64); n != 2 {
				t.Errorf("--no-backing-chain: shipped %v files, want the descriptor and its extent", n)
			}
		})
	}
}

// TestVMDKExtentRefused: a descriptor whose extents cannot be shipped so
// that the restored descriptor finds them fails the send, naming it,
// before anything is written to the destination.
func TestVMDKExtentRefused(t *testing.T) {
	_, rcpt := keypair(t)
	for _, tc := range []struct{ name, line, want string }{
		{"missing", `RW 16 FLAT "gone-flat.vmdk" 0`, "gone-flat.vmdk"},
		{"absolute", `RW 16 FLAT "/srv/vmfs/x-flat.vmdk" 0`, "an absolute name, which would not be found at the destination: flatten the disk (qemu-img convert -O qcow2)"},
		{"unparsable", `RW 16 FLAT "x-flat.vmdk 0`, "no closing quote"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			desc := filepath.Join(dir, "x.vmdk")
			if err := os.WriteFile(desc, []byte("# Disk DescriptorFile\nversion=1\nparentCID=ffffffff\n"+tc.line+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			dest := filepath.Join(dir, "dest")
			for _, extra := range [][]string{nil, {"--no-backing-chain"}} {
				r := run(t, append([]string{"send", desc, "--to", dest, "-r", rcpt}, extra...)...)
				if r.code != exitError || !strings.Contains(r.stderr, desc) || !strings.Contains(r.stderr, tc.want) {
					t.Errorf("send %v: exit %d, %s; want exit 1 naming %s and saying %q", extra, r.code, r.stderr, desc, tc.want)
				}
				if _, err := os.Stat(dest); err == nil {
					t.Fatal("a refused send wrote to the destination")
				}
			}
		})
	}
}

// TestVMDKSharedBaseExtents: the extents of a vmdk base shared by linked
// clones are checked as the base is: a running clone reading them does
// not stop the send of another clone, but the same lock on the extent of
// a disk shipped as itself does.
func TestVMDKSharedBaseExtents(t *testing.T) {
	_, rcpt := keypair(t)
	dir := t.TempDir()
	base, _ := vmdkDisk(t, dir, "base.vmdk", "monolithicFlat")
	top := filepath.Join(dir, "top.qcow2")
	vmtest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.vmdk", "-F", "vmdk", top)
	holdQEMULockOn(t, filepath.Join(dir, "base-flat.vmdk"))

	r := mustRun(t, "send", top, "--to", filepath.Join(dir, "dest"), "-r", rcpt, "--json")
	if n := summaryOf(t, r.stdout)["files"].(float64); n != 3 {
		t.Errorf("shipped %v files, want 3 (the overlay, the base and its extent)", n)
	}
	r = run(t, "send", base, "--to", filepath.Join(dir, "dest2"), "-r", rcpt)
	if r.code != exitBusy || !strings.Contains(r.stderr, filepath.Join(dir, "base-flat.vmdk")) {
		t.Errorf("send of a disk whose extent is locked: exit %d, %s; want 6 naming the extent", r.code, r.stderr)
	}
}

// holdQEMULockOn takes, in a child process, the locks a running QEMU
// takes on an image it reads (see holdQEMULock), until the test ends, and
// returns the child's pid.
func holdQEMULockOn(t *testing.T, p string) int {
	t.Helper()
	holder := exec.Command(os.Args[0])
	holder.Env = append(os.Environ(), "COLDSHIP_TEST_QEMU_LOCK="+p)
	stdin, _ := holder.StdinPipe()
	stdout, _ := holder.StdoutPipe()
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); holder.Wait() })
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "locked\n" {
		t.Fatalf("lock holder: %q", line)
	}
	return holder.Process.Pid
}

// TestOverlayHeaderNoRoom: an overlay whose qcow2 header cannot hold the
// backing name a receive would write (a 512-byte header cluster; its base
// shipped in a deep folder, so the restored name is longer than the one it
// holds) is refused by send, naming it, before anything is shipped; every
// receive of it would fail.
func TestOverlayHeaderNoRoom(t *testing.T) {
	_, rcpt := keypair(t)
	dir := t.TempDir()
	deep := filepath.Join(dir, strings.Repeat("a", 200), strings.Repeat("b", 200))
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	base := qemuImg(t, deep, "base.qcow2", "", 0x11, 0, 64<<10)
	if err := os.Symlink(base, filepath.Join(dir, "b")); err != nil {
		t.Fatal(err)
	}
	top := filepath.Join(dir, "top.qcow2")
	vmtest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", "-b", "b", "-F", "qcow2", top)

	dest := filepath.Join(dir, "dest")
	r := run(t, "send", top, filepath.Join(dir, strings.Repeat("a", 200)), "--to", dest, "-r", rcpt)
	for _, want := range []string{top, "does not fit in the 512-byte header cluster", "qemu-img convert -O qcow2 -B"} {
		if r.code != exitError || !strings.Contains(r.stderr, want) {
			t.Errorf("send: exit %d, %s; want exit 1 saying %q", r.code, r.stderr, want)
		}
	}
	if _, err := os.Stat(dest); err == nil {
		t.Error("a refused send wrote to the destination")
	}
	// Shipped beside it, the base gets a name that fits.
	mustRun(t, "send", top, "--to", dest, "-r", rcpt, "-q")
}

// TestQcow2DataFile: a qcow2 that keeps its data in an external data file
// is refused; --no-backing-chain ships it alone and says the data file is
// not shipped.
func TestQcow2DataFile(t *testing.T) {
	_, rcpt := keypair(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	vmtest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "disk.raw"), img, "4M")
	dest := filepath.Join(dir, "dest")
	r := run(t, "send", img, "--to", dest, "-r", rcpt)
	if r.code != exitError || !strings.Contains(r.stderr, img+" keeps its data in an external data file") {
		t.Errorf("send: exit %d, %s", r.code, r.stderr)
	}
	r = mustRun(t, "send", img, "--to", dest, "-r", rcpt, "--no-backing-chain", "-q")
	if want := img + " ships without its external data file"; !strings.Contains(r.stderr, want) {
		t.Errorf("--no-backing-chain: stderr %q lacks %q", r.stderr, want)
	}
}

// TestVMDKFlatExtentNotAnImage: a flat extent holds what the guest wrote,
// here a qcow2 header naming a backing file that does not exist; shipped
// in its VM folder, it is neither followed as an overlay nor warned about.
func TestVMDKFlatExtentNotAnImage(t *testing.T) {
	_, rcpt := keypair(t)
	vm := filepath.Join(t.TempDir(), "vm")
	os.Mkdir(vm, 0o755)
	flat := filepath.Join(vm, "disk-flat.vmdk")
	vmtest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/nonexistent/guest.img", "-F", "raw", flat, "1M")
	desc := "# Disk DescriptorFile\nversion=1\nparentCID=ffffffff\nRW 2048 FLAT \"disk-flat.vmdk\" 0\n"
	if err := os.WriteFile(filepath.Join(vm, "disk.vmdk"), []byte(desc), 0o644); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(t.TempDir(), "dest")
	mustRun(t, "send", vm, "--to", dest, "-r", rcpt, "-q")
	r := mustRun(t, "send", vm, "--to", dest, "-r", rcpt, "-q", "--no-backing-chain")
	if strings.Contains(r.stderr, "ships without") {
		t.Errorf("--no-backing-chain warned about a flat extent's content: %s", r.stderr)
	}
}

// TestVMDKDescriptorLive: send --live ships a descriptor's extents too,
// and the receiver's disk reads as the source's.
func TestVMDKDescriptorLive(t *testing.T) {
	_, dir, to, flags := liveEnv(t)
	img, ref := vmdkDisk(t, t.TempDir(), "disk.vmdk", "twoGbMaxExtentSparse")
	mustRun(t, append([]string{"send", img, "--to", to, "-q"}, flags...)...)
	compareWithRef(t, ref, filepath.Join(dir, "disk.vmdk"))
}

// TestShowOverlayAndExtents: show names what an image needs beside it at
// the destination (an overlay's backing file, a vmdk descriptor's extent
// files), so an operator sees before restoring what else a restore of it
// writes (what --include of it brings along).
func TestShowOverlayAndExtents(t *testing.T) {
	key, rcpt := keypair(t)
	vm := filepath.Join(t.TempDir(), "vm")
	os.Mkdir(vm, 0o755)
	qemuImg(t, vm, "base.qcow2", "", 0x11, 0, 64<<10)
	qemuImg(t, vm, "top.qcow2", "base.qcow2", 0x22, 1<<20, 64<<10)
	vmtest.Run(t, "qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", filepath.Join(vm, "d.vmdk"), "1M")
	dest := filepath.Join(t.TempDir(), "dest")
	mustRun(t, "send", vm, "--to", dest, "-r", rcpt, "-q")

	r := mustRun(t, "show", dest, "-i", key)
	for _, want := range []string{"overlay   vm/top.qcow2 on vm/base.qcow2 (qcow2)\n", "extents   vm/d.vmdk in vm/d-flat.vmdk\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("show does not print %q:\n%s", want, r.stdout)
		}
	}
	files := map[string]map[string]any{}
	for _, o := range jsonLines(t, mustRun(t, "show", dest, "-i", key, "--json").stdout) {
		checkSchema(t, o)
		if o["type"] == "file" {
			files[o["path"].(string)] = o
		}
	}
	if top := files["vm/top.qcow2"]; top["backing"] != "vm/base.qcow2" || top["backing_format"] != "qcow2" {
		t.Errorf("show --json of the overlay: %v; want backing vm/base.qcow2, backing_format qcow2", top)
	}
	if d := files["vm/d.vmdk"]; fmt.Sprint(d["data_files"]) != "[vm/d-flat.vmdk]" {
		t.Errorf("show --json of the vmdk descriptor: %v; want data_files [vm/d-flat.vmdk]", d)
	}
	if b := files["vm/base.qcow2"]; b["backing"] != nil || b["data_files"] != nil {
		t.Errorf("show --json of a plain image: %v; want no backing nor data_files", b)
	}
}
