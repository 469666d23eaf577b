package hooks

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coldship/coldship/internal/vmtest"
)

// These tests drive libvirt's test driver: virsh -c test:///PATH/node.xml
// builds a fake hypervisor from the domains in node.xml. It keeps its state
// per connection, and every virsh run is a new connection that starts
// afresh from the file: whatever a test must see changed (a domain
// defined, started, shut down) has to be seen within the same virsh run,
// which is why Libvirt chains dependent commands in one.

func needVirsh(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("virsh"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("virsh not found (apt-get install libvirt-clients)")
		}
		t.Skip("virsh not found (apt-get install libvirt-clients)")
	}
}

// testDomainXML is a test-driver domain; runstate 5 is VIR_DOMAIN_SHUTOFF,
// and without it the driver starts the domain running.
func testDomainXML(name string, shutOff bool, disks ...string) string {
	var b strings.Builder
	b.WriteString("<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>\n")
	b.WriteString("  <name>" + name + "</name>\n  <memory>65536</memory>\n  <os><type>hvm</type></os>\n  <devices>\n")
	b.WriteString(strings.Join(disks, "\n"))
	b.WriteString("\n  </devices>\n")
	if shutOff {
		b.WriteString("  <test:runstate>5</test:runstate>\n")
	}
	b.WriteString("</domain>\n")
	return b.String()
}

func fileDisk(device, path, target string) string {
	return "    <disk type='file' device='" + device + "'>\n      <driver name='qemu' type='raw'/>\n" +
		"      <source file='" + path + "'/>\n      <target dev='" + target + "' bus='virtio'/>\n    </disk>"
}

// testNode writes node.xml holding domains and returns its test:/// URI.
func testNode(t *testing.T, domains ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "node.xml")
	if err := os.WriteFile(path, []byte("<node>\n"+strings.Join(domains, "")+"</node>\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return "test://" + path
}

// vmImages creates two disk images for a domain.
func vmImages(t *testing.T) (string, string) {
	t.Helper()
	dir := t.TempDir()
	a, b := filepath.Join(dir, "vm1-root.img"), filepath.Join(dir, "vm1 data.img")
	for _, p := range []string{a, b} {
		if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return a, b
}

func TestLibvirtDomain(t *testing.T) {
	needVirsh(t)
	root, data := vmImages(t)
	emptyCD := "    <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>"
	uri := testNode(t,
		testDomainXML("vm1", true, fileDisk("disk", root, "vda"), fileDisk("disk", data, "vdb"), emptyCD),
		testDomainXML("vm2", false),
	)
	l := &Libvirt{URI: uri}
	ctx := context.Background()

	d, err := l.Domain(ctx, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	want := []Disk{
		{Target: "vda", Source: root, Type: "file", Device: "disk", Format: "raw"},
		{Target: "vdb", Source: data, Type: "file", Device: "disk", Format: "raw"},
	}
	if d.Name != "vm1" || !reflect.DeepEqual(d.Disks, want) {
		t.Errorf("domain %q, disks %+v\nwant %+v", d.Name, d.Disks, want)
	}
	if !strings.Contains(string(d.XML), "<uuid>") {
		t.Errorf("XML is not virsh's dump:\n%s", d.XML)
	}

	for name, state := range map[string]string{"vm1": StateShutOff, "vm2": StateRunning} {
		if got, err := l.State(ctx, name); err != nil || got != state {
			t.Errorf("State(%s) = %q, %v; want %q", name, got, err, state)
		}
	}

	if _, err := l.Domain(ctx, "nope"); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("Domain(nope): %v", err)
	}
	if _, err := l.State(ctx, "nope"); err == nil || !strings.Contains(err.Error(), "failed to get domain") {
		t.Errorf("State(nope): %v", err)
	}
}

// TestLibvirtDomainChainAndBlockDisk: a domain with a qcow2 disk whose
// definition gives its backing chain, and a block disk on a loop device;
// its definition rewritten for the destination (the block disk restored as
// a file, the backing files moved, a file made a device) is one that
// libvirt accepts, pointing where it should.
func TestLibvirtDomainChainAndBlockDisk(t *testing.T) {
	needVirsh(t)
	dev, _ := vmtest.Loop(t, 4<<20)
	dir := t.TempDir()
	top, mid, base := filepath.Join(dir, "top.qcow2"), filepath.Join(dir, "mid.qcow2"), filepath.Join(dir, "base.qcow2")
	chain := "    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='" + top + "'/>\n" +
		"      <backingStore type='file'><format type='qcow2'/><source file='" + mid + "'/>\n" +
		"        <backingStore type='file'><format type='qcow2'/><source file='" + base + "'/><backingStore/></backingStore>\n" +
		"      </backingStore><target dev='vda' bus='virtio'/></disk>"
	block := "    <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='" + dev + "'/><target dev='vdb' bus='virtio'/></disk>"
	l := &Libvirt{URI: testNode(t, testDomainXML("vm1", true, chain, block))}
	ctx := context.Background()
	d, err := l.Domain(ctx, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	want := []Disk{
		{Target: "vda", Source: top, Type: "file", Device: "disk", Format: "qcow2", BackingStore: []BackingStore{
			{Type: "file", Format: "qcow2", Source: mid}, {Type: "file", Format: "qcow2", Source: base}}},
		{Target: "vdb", Source: dev, Type: "block", Device: "disk", Format: "raw"},
	}
	if !reflect.DeepEqual(d.Disks, want) {
		t.Fatalf("disks %+v\nwant %+v", d.Disks, want)
	}
	if got := d.Files(); !reflect.DeepEqual(got, []string{top, mid, base, dev}) {
		t.Errorf("Files() = %v", got)
	}

	out := t.TempDir()
	to := map[string]Target{
		top:  {Path: filepath.Join(out, "top.qcow2")},
		mid:  {Path: filepath.Join(out, "mid.qcow2")},
		base: {Path: "/dev/vg/base", Device: true},
		dev:  {Path: filepath.Join(out, "vdb.img")},
	}
	xml, err := RewriteDisks(d.XML, to)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "vm1.xml")
	if err := os.WriteFile(f, xml, 0o600); err != nil {
		t.Fatal(err)
	}
	dst := &Libvirt{URI: testNode(t)}
	dumped, err := dst.virsh(ctx, []string{"define", "--file", f}, []string{"dumpxml", "--inactive", "--domain", "vm1"})
	if err != nil {
		t.Fatalf("libvirt refuses the rewritten definition: %v\n%s", err, xml)
	}
	defined, err := parseDomain(dumped)
	if err != nil {
		t.Fatal(err)
	}
	want = []Disk{
		{Target: "vda", Source: to[top].Path, Type: "file", Device: "disk", Format: "qcow2", BackingStore: []BackingStore{
			{Type: "file", Format: "qcow2", Source: to[mid].Path}, {Type: "block", Format: "qcow2", Source: "/dev/vg/base"}}},
		{Target: "vdb", Source: to[dev].Path, Type: "file", Device: "disk", Format: "raw"},
	}
	if !reflect.DeepEqual(defined.Disks, want) {
		t.Errorf("defined disks %+v\nwant %+v\n%s", defined.Disks, want, dumped)
	}
}

func TestLibvirtShutdown(t *testing.T) {
	needVirsh(t)
	uri := testNode(t, testDomainXML("on", false), testDomainXML("off", true))
	var log strings.Builder
	l := &Libvirt{URI: uri, Stderr: &log}
	ctx := context.Background()
	// The test driver shuts a domain off at once, and Shutdown sees that
	// in the same virsh run. That it polls a slower real domain across
	// runs cannot be seen here (each run starts from the file again):
	// TestLibvirtShutdownTimeout covers the wait with a fake virsh.
	if err := l.Shutdown(ctx, "on", time.Minute); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "shutting down domain on") {
		t.Errorf("no progress note: %q", log.String())
	}
	if err := l.Shutdown(ctx, "off", time.Minute); err != nil {
		t.Errorf("Shutdown of a shut-off domain: %v", err)
	}
	if err := l.Shutdown(ctx, "nope", time.Minute); err == nil {
		t.Error("Shutdown of a missing domain succeeded")
	}
}

func TestLibvirtShutdownTimeout(t *testing.T) {
	// A guest that ignores ACPI: virsh keeps saying "running".
	fake := filepath.Join(t.TempDir(), "virsh")
	writeExec(t, fake, "echo running", 0o755)
	l := &Libvirt{URI: "qemu:///system", Virsh: fake}
	err := l.Shutdown(context.Background(), "vm1", 200*time.Millisecond)
	t.Log(err)
	if err == nil || !strings.Contains(err.Error(), "domain vm1 is still running 200ms after asking it to shut down") {
		t.Errorf("Shutdown: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Shutdown(ctx, "vm1", time.Minute); !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown with a canceled context: %v", err)
	}
}

func TestLibvirtDefineAndStart(t *testing.T) {
	needVirsh(t)
	ctx := context.Background()
	root, data := vmImages(t)
	src := &Libvirt{URI: testNode(t, testDomainXML("vm1", true, fileDisk("disk", root, "vda"), fileDisk("disk", data, "vdb")))}
	d, err := src.Domain(ctx, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	newRoot, newData := vmImages(t)
	xml, err := RewriteDisks(d.XML, map[string]Target{root: {Path: newRoot}, data: {Path: newData}})
	if err != nil {
		t.Fatal(err)
	}

	// The destination knows another domain, not vm1.
	dst := &Libvirt{URI: testNode(t, testDomainXML("other", false))}
	for _, start := range []bool{false, true} {
		name, err := dst.DefineAndStart(ctx, xml, start)
		if err != nil || name != "vm1" {
			t.Fatalf("DefineAndStart(start=%v) = %q, %v", start, name, err)
		}
	}
	if name, err := dst.Define(ctx, xml); err != nil || name != "vm1" {
		t.Fatalf("Define = %q, %v", name, err)
	}

	// What got defined points at the new images: check within one run.
	f := filepath.Join(t.TempDir(), "vm1.xml")
	if err := os.WriteFile(f, xml, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := dst.virsh(ctx, []string{"define", "--file", f}, []string{"dumpxml", "--inactive", "--domain", "vm1"})
	if err != nil {
		t.Fatal(err)
	}
	defined, err := parseDomain(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(defined.Disks) != 2 || defined.Disks[0].Source != newRoot || defined.Disks[1].Source != newData {
		t.Errorf("defined disks %+v", defined.Disks)
	}

	// A definition libvirt refuses fails, though virsh then exits 0 if a
	// later command in the run succeeds.
	bad := []byte(strings.Replace(string(xml), "<memory", "<vcpu>0</vcpu><memory", 1))
	if _, err := dst.DefineAndStart(ctx, bad, true); err == nil {
		t.Error("DefineAndStart of a bad definition succeeded")
	} else if t.Log(err); !strings.Contains(err.Error(), "virsh define; start; domstate") {
		t.Errorf("error does not name the virsh commands: %v", err)
	}
}

func TestLibvirtStart(t *testing.T) {
	needVirsh(t)
	l := &Libvirt{URI: testNode(t, testDomainXML("off", true), testDomainXML("on", false))}
	ctx := context.Background()
	if err := l.Start(ctx, "off"); err != nil {
		t.Errorf("Start(off): %v", err)
	}
	if err := l.Start(ctx, "on"); err == nil || !strings.Contains(err.Error(), "already active") {
		t.Errorf("Start of a running domain: %v", err)
	}
}

func TestLibvirtQuoting(t *testing.T) {
	needVirsh(t)
	// virsh reparses the command line: names and paths with quotes,
	// spaces and ';' must reach it intact.
	name := `we'ird; "name" \ #1`
	xml := strings.Replace(testDomainXML("NAME", true), "NAME", escape(name), 1)
	dir := filepath.Join(t.TempDir(), "it's; a dir")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", dir)
	l := &Libvirt{URI: testNode(t)}
	got, err := l.DefineAndStart(context.Background(), []byte(xml), true)
	if err != nil || got != name {
		t.Errorf("DefineAndStart = %q, %v; want %q", got, err, name)
	}
}

// TestLibvirtHungVirsh: a virsh that never answers (libvirtd hung) is
// killed after Timeout, and the error says so.
func TestLibvirtHungVirsh(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "virsh")
	writeExec(t, fake, "exec sleep 1000", 0o755)
	l := &Libvirt{URI: "qemu:///system", Virsh: fake, Timeout: 300 * time.Millisecond}
	done := make(chan error, 1)
	go func() {
		_, err := l.State(context.Background(), "vm1")
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "virsh domstate: no answer after 300ms, killed") {
			t.Errorf("State with a hung virsh: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("State still waits for a hung virsh after 20 s")
	}
}

func TestLibvirtMissingVirsh(t *testing.T) {
	l := &Libvirt{Virsh: "coldship-no-such-virsh"}
	if _, err := l.State(context.Background(), "vm1"); err == nil || !strings.Contains(err.Error(), "libvirt-clients") {
		t.Errorf("State without virsh: %v", err)
	}
}
