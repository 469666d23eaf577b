package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// envHook writes the COLDSHIP_* environment of its phase to DIR/PHASE.env.
func envHook(dir, phase string) string {
	return fmt.Sprintf("%s=env | grep ^COLDSHIP_ | sort > %s/%s.env", phase, dir, phase)
}

func readEnv(t *testing.T, dir, phase string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, phase+".env"))
	if err != nil {
		t.Fatalf("the %s hook did not run: %v", phase, err)
	}
	env := map[string]string{}
	var last string
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && strings.HasPrefix(k, "COLDSHIP_") {
			env[k], last = v, k
		} else if last != "" {
			env[last] += "\n" + l // a multi-line value (COLDSHIP_FILES)
		}
	}
	return env
}

func TestHooksEveryPhaseWithItsEnvironment(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	hk := filepath.Join(dir, "hooks")
	os.MkdirAll(hk, 0o755)
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 256<<10, region{0, 100 << 10, "random"})
	dest := filepath.Join(dir, "dest")
	r := mustRun(t, "send", src, "--to", dest, "-r", rcpt, "-q", "--hook", envHook(hk, "pre-send"), "--hook", envHook(hk, "post-send"))
	id := strings.TrimSpace(r.stdout)
	pre, post := readEnv(t, hk, "pre-send"), readEnv(t, hk, "post-send")
	if pre["COLDSHIP_PHASE"] != "pre-send" || pre["COLDSHIP_DEST"] != dest || pre["COLDSHIP_FILES"] != src {
		t.Errorf("pre-send environment: %v", pre)
	}
	if post["COLDSHIP_PHASE"] != "post-send" || post["COLDSHIP_SHIPMENT"] != id || post["COLDSHIP_DEST"] != dest {
		t.Errorf("post-send environment: %v", post)
	}

	// Hooks from a directory, run-parts style, and receive's phases.
	os.MkdirAll(filepath.Join(hk, "post-receive.d"), 0o755)
	for i, name := range []string{"20-second", "10-first"} {
		script := fmt.Sprintf("#!/bin/sh\necho %s >> %s/order\nenv | grep ^COLDSHIP_ | sort > %s/post-receive-%d.env\n", name, hk, hk, i)
		os.WriteFile(filepath.Join(hk, "post-receive.d", name), []byte(script), 0o755)
	}
	out := filepath.Join(dir, "out")
	r = mustRun(t, "receive", dest, "--out", out, "-i", key, "--hook", envHook(hk, "pre-receive"), "--hooks-dir", hk)
	prer := readEnv(t, hk, "pre-receive")
	if prer["COLDSHIP_SHIPMENT"] != id || prer["COLDSHIP_OUT"] != out || prer["COLDSHIP_DEST"] != dest {
		t.Errorf("pre-receive environment: %v", prer)
	}
	postr := readEnv(t, hk, "post-receive-0")
	if postr["COLDSHIP_PHASE"] != "post-receive" || postr["COLDSHIP_FILES"] != filepath.Join(out, "disk.img") {
		t.Errorf("post-receive environment: %v", postr)
	}
	if b, _ := os.ReadFile(filepath.Join(hk, "order")); string(b) != "10-first\n20-second\n" {
		t.Errorf("hooks-dir order: %q", b)
	}

	// on-failure gets the error; hook output goes to stderr, prefixed.
	r = run(t, "receive", dest, "--out", out, "-i", key, "--hook", envHook(hk, "on-failure"), "--hook", "on-failure=echo cleaning up")
	if r.code != exitError {
		t.Fatalf("receive over existing files: exit %d", r.code)
	}
	onf := readEnv(t, hk, "on-failure")
	if onf["COLDSHIP_PHASE"] != "on-failure" || !strings.Contains(onf["COLDSHIP_ERROR"], "already exists") {
		t.Errorf("on-failure environment: %v", onf)
	}
	if !strings.Contains(r.stderr, "[on-failure] cleaning up") {
		t.Errorf("hook output not on stderr with its phase: %q", r.stderr)
	}
}

func TestFailingPreHooksWriteNothing(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 256<<10, region{0, 100 << 10, "random"})
	dest := filepath.Join(dir, "dest")
	r := run(t, "send", src, "--to", dest, "-r", rcpt, "--hook", "pre-send=exit 7")
	if r.code != exitHook || !strings.Contains(r.stderr, "pre-send") {
		t.Errorf("failing pre-send: exit %d, %s; want 3", r.code, r.stderr)
	}
	if _, err := os.Stat(dest); err == nil {
		t.Error("a failing pre-send hook still wrote to the destination")
	}
	// A mistyped --hooks-dir is a usage error, before anything runs.
	for _, hd := range []string{filepath.Join(dir, "no-such-hooks"), src} {
		r := run(t, "send", src, "--to", dest, "-r", rcpt, "--hooks-dir", hd)
		if r.code != exitUsage || !strings.Contains(r.stderr, "--hooks-dir") {
			t.Errorf("send --hooks-dir %s: exit %d, %s; want 2", hd, r.code, r.stderr)
		}
	}
	if _, err := os.Stat(dest); err == nil {
		t.Error("a send with a missing --hooks-dir wrote to the destination")
	}
	id := strings.TrimSpace(mustRun(t, "send", src, "--to", dest, "-r", rcpt, "-q").stdout)
	out := filepath.Join(dir, "out")
	r = run(t, "receive", dest, id, "--out", out, "-i", key, "--hook", "pre-receive=false")
	if r.code != exitHook {
		t.Errorf("failing pre-receive: exit %d, want 3", r.code)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("a failing pre-receive hook still wrote the output directory")
	}

	// A failing post-receive hook keeps the restored files, and says so.
	r = run(t, "receive", dest, id, "--out", out, "-i", key, "--hook", "post-receive=exit 2")
	if r.code != exitHook || !strings.Contains(r.stderr, "kept") {
		t.Errorf("failing post-receive: exit %d, %s; want 3 saying the files are kept", r.code, r.stderr)
	}
	sameFile(t, src, filepath.Join(out, "disk.img"))
}

func TestHungHookIsKilled(t *testing.T) {
	_, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 64<<10, region{0, 100, "random"})
	start := time.Now()
	r := run(t, "send", src, "--to", filepath.Join(dir, "dest"), "-r", rcpt, "--hook", "pre-send=sleep 1000", "--hook-timeout", "1s")
	if r.code != exitHook || !strings.Contains(r.stderr, "killed") {
		t.Errorf("hung hook: exit %d, %s; want 3 saying it was killed", r.code, r.stderr)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("a 1s hook timeout took %s", d)
	}
}

// holdQEMULock is the child process of TestLockedImageRefused: it takes the
// OFD locks QEMU takes on a running VM's image and holds them until its
// stdin closes.
func holdQEMULock(path string) int {
	f, err := os.Open(path)
	if err != nil {
		return 1
	}
	for _, off := range []int64{100, 201} {
		lk := unix.Flock_t{Type: unix.F_RDLCK, Start: off, Len: 1}
		if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
			return 1
		}
	}
	fmt.Println("locked")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

func TestLockedImageRefused(t *testing.T) {
	_, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "running.qcow2")
	makeImage(t, src, 1<<20, region{0, 1 << 20, "random"})
	pid := holdQEMULockOn(t, src)
	dest := filepath.Join(dir, "dest")
	r := run(t, "send", src, "--to", dest, "-r", rcpt)
	if r.code != exitBusy || !strings.Contains(r.stderr, src) || !strings.Contains(r.stderr, strconv.Itoa(pid)) {
		t.Errorf("send of a locked image: exit %d, %q; want a refusal naming the file and pid %d", r.code, r.stderr, pid)
	}
	if _, err := os.Stat(dest); err == nil {
		t.Error("a refused send wrote to the destination")
	}
	mustRun(t, "send", src, "--to", dest, "-r", rcpt, "--force", "-q")
}

func TestImageWrittenDuringSend(t *testing.T) {
	_, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 64<<20, region{0, 64 << 20, "random"})
	var stop atomic.Bool
	done := make(chan struct{})
	go func() { // a guest still writing to its disk
		defer close(done)
		f, _ := os.OpenFile(src, os.O_WRONLY, 0)
		defer f.Close()
		for i := 0; !stop.Load(); i++ {
			f.WriteAt([]byte{byte(i)}, int64(i%64)<<20)
			time.Sleep(time.Millisecond)
		}
	}()
	dest := filepath.Join(dir, "dest")
	r := runCtx(t, context.Background(), nil, "send", src, "--to", dest, "-r", rcpt, "--force", "-j", "1", "--streams", "1", "--retries", "0")
	stop.Store(true)
	<-done
	if r.code != exitBusy || !strings.Contains(r.stderr, "source changed while shipping: is the VM still running?") {
		t.Errorf("send of an image being written: exit %d, %q", r.code, r.stderr)
	}
	if m, _ := filepath.Glob(filepath.Join(dest, "*", "manifest")); len(m) != 0 {
		t.Errorf("a complete shipment of a changing image: %v", m)
	}
}

func TestLibvirtFlow(t *testing.T) {
	requireTool(t, "virsh")
	key, rcpt := keypair(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "images", "web01.img")
	data := filepath.Join(dir, "images", "web01-data.img")
	os.MkdirAll(filepath.Dir(disk), 0o755)
	makeImage(t, disk, 8<<20, region{0, 1 << 20, "random"})
	makeImage(t, data, 4<<20, region{1 << 20, 1 << 20, "text"})
	domain := func(name string, shutOff bool) string {
		state := ""
		if shutOff {
			state = "<test:runstate>5</test:runstate>"
		}
		return fmt.Sprintf(`<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
  <name>%s</name><memory>65536</memory><os><type>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s'/><target dev='vdb' bus='virtio'/></disk>
  </devices>%s
</domain>
`, name, disk, data, state)
	}
	node := filepath.Join(dir, "node.xml")
	os.WriteFile(node, []byte("<node>\n"+domain("web01", true)+domain("db01", false)+"</node>\n"), 0o644)
	uri := "test://" + node
	dest := filepath.Join(dir, "dest")

	// A running domain is refused without --shutdown.
	if r := run(t, "send", "--libvirt-domain", "db01", "--libvirt-uri", uri, "--to", dest, "-r", rcpt); r.code != exitBusy || !strings.Contains(r.stderr, "running") {
		t.Errorf("send of a running domain: exit %d, %s", r.code, r.stderr)
	}
	id := strings.TrimSpace(mustRun(t, "send", "--libvirt-domain", "web01", "--libvirt-uri", uri, "--to", dest, "-r", rcpt, "-q").stdout)

	out := filepath.Join(dir, "site-b")
	r := mustRun(t, "receive", dest, id, "--out", out, "-i", key, "--libvirt-define", "--libvirt-start", "--libvirt-uri", "test:///default")
	sameFile(t, disk, filepath.Join(out, "web01", "web01.img"))
	sameFile(t, data, filepath.Join(out, "web01", "web01-data.img"))
	if !strings.Contains(r.stderr, "libvirt domain web01 defined and started") {
		t.Errorf("receive did not define and start the domain: %s", r.stderr)
	}
	// The definition that was defined points at the restored images.
	xml, err := os.ReadFile(filepath.Join(out, "web01", "web01.xml"))
	if err != nil || strings.Contains(string(xml), disk) || !strings.Contains(string(xml), filepath.Join(out, "web01", "web01.img")) ||
		!strings.Contains(string(xml), filepath.Join(out, "web01", "web01-data.img")) {
		t.Errorf("defined definition does not point at the restored disks: %v\n%s", err, xml)
	}
	// And libvirt accepts it: define and start it in one test-driver connection.
	b, err := exec.Command("virsh", "-c", "test:///default", "define "+filepath.Join(out, "web01", "web01.xml")+" ; start web01 ; domstate web01").CombinedOutput()
	if err != nil || !strings.Contains(string(b), "running") {
		t.Errorf("virsh define/start of the rewritten definition: %v\n%s", err, b)
	}
}
