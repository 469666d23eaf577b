package hooks

import (
	"bytes"
	"encoding/xml"
	"reflect"
	"strings"
	"testing"
)

// A domain definition with what a byte-preserving rewrite must keep:
// a declaration, comments, namespaced elements, both quote styles, odd
// spacing and attribute order, entities, and paths that are not disks.
const rewriteInput = `<?xml version="1.0"?>
<!-- written by hand -->
<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>vm1</name>
  <os firmware="efi">
    <type arch='x86_64' machine='q35'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS.fd'>/var/lib/libvirt/qemu/nvram/vm1_VARS.fd</nvram>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source   index="2"  file = "/var/lib/images/vm1.qcow2" >
        <seclabel model='dac' relabel='no'/>
      </source>
      <backingStore type='file'>
        <source file='/var/lib/images/base.qcow2'/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/var/lib/images/a&amp;b &apos;data&apos;.img'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <serial type='file'><source path='/var/lib/images/vm1.qcow2'/></serial>
    <filesystem type='mount'><source dir='/var/lib/images/vm1.qcow2'/><target dir='share'/></filesystem>
  </devices>
  <qemu:commandline><qemu:arg value='-snapshot'/></qemu:commandline>
</domain>
`

// files makes RewriteDisks targets that are files.
func files(m map[string]string) map[string]Target {
	out := map[string]Target{}
	for k, v := range m {
		out[k] = Target{Path: v}
	}
	return out
}

func TestRewriteDisks(t *testing.T) {
	paths := files(map[string]string{
		"/var/lib/images/vm1.qcow2":               "/srv/vms/vm1.qcow2",
		"/var/lib/images/base.qcow2":              "/srv/vms/base.qcow2",
		"/var/lib/images/a&b 'data'.img":          "/srv/vms/a&b \"new\".img",
		"/var/lib/libvirt/qemu/nvram/vm1_VARS.fd": "/srv/vms/vm1_VARS.fd",
	})
	got, err := RewriteDisks([]byte(rewriteInput), paths)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.NewReplacer(
		`file = "/var/lib/images/vm1.qcow2"`, `file = "/srv/vms/vm1.qcow2"`,
		`file='/var/lib/images/base.qcow2'`, `file='/srv/vms/base.qcow2'`,
		`file='/var/lib/images/a&amp;b &apos;data&apos;.img'`, `file='/srv/vms/a&amp;b &#34;new&#34;.img'`,
		`>/var/lib/libvirt/qemu/nvram/vm1_VARS.fd<`, `>/srv/vms/vm1_VARS.fd<`,
	).Replace(rewriteInput)
	if string(got) != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}

	d, err := parseDomain(got)
	if err != nil {
		t.Fatal(err)
	}
	wantDisks := []Disk{
		{Target: "vda", Source: "/srv/vms/vm1.qcow2", Type: "file", Device: "disk", Format: "qcow2",
			BackingStore: []BackingStore{{Type: "file", Source: "/srv/vms/base.qcow2"}}},
		{Target: "vdb", Source: "/srv/vms/a&b \"new\".img", Type: "file", Device: "disk"},
	}
	if !reflect.DeepEqual(d.Disks, wantDisks) || d.NVRAM != "/srv/vms/vm1_VARS.fd" {
		t.Errorf("parsed back: disks %+v, nvram %q", d.Disks, d.NVRAM)
	}

	if same, err := RewriteDisks([]byte(rewriteInput), nil); err != nil || string(same) != rewriteInput {
		t.Errorf("empty map changed the XML (%v)", err)
	}
	if _, err := RewriteDisks([]byte(rewriteInput), files(map[string]string{"/var/lib/images/other.img": "/x"})); err == nil ||
		!strings.Contains(err.Error(), "/var/lib/images/other.img") {
		t.Errorf("unknown source: %v", err)
	}
	if _, err := RewriteDisks([]byte("<domain><devices>"), nil); err == nil {
		t.Error("truncated XML accepted")
	}
}

func TestRewriteDisksNVRAMSource(t *testing.T) {
	// libvirt 8.5 and later may give the NVRAM file as a <source>.
	in := `<domain><name>x</name><os><nvram type='file'><source file='/a/VARS.fd'/></nvram></os></domain>`
	got, err := RewriteDisks([]byte(in), files(map[string]string{"/a/VARS.fd": "/b/VARS.fd"}))
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Replace(in, "/a/", "/b/", 1); string(got) != want {
		t.Errorf("got %s", got)
	}
	if d, err := parseDomain(got); err != nil || d.NVRAM != "/b/VARS.fd" {
		t.Errorf("nvram %q, %v", d.NVRAM, err)
	}
}

func TestParseDomain(t *testing.T) {
	tests := []struct {
		name  string
		xml   string
		disks []Disk
		err   string
	}{
		{"file disks, empty drive skipped", rewriteInput, []Disk{
			{Target: "vda", Source: "/var/lib/images/vm1.qcow2", Type: "file", Device: "disk", Format: "qcow2",
				BackingStore: []BackingStore{{Type: "file", Source: "/var/lib/images/base.qcow2"}}},
			{Target: "vdb", Source: "/var/lib/images/a&b 'data'.img", Type: "file", Device: "disk"},
		}, ""},
		{"device defaults to disk", `<domain><name>x</name><devices><disk type='file'><source file='/a.img'/><target dev='hda'/></disk></devices></domain>`,
			[]Disk{{Target: "hda", Source: "/a.img", Type: "file", Device: "disk"}}, ""},
		{"empty block cdrom skipped", `<domain><name>x</name><devices><disk type='block' device='cdrom'><target dev='hdc'/></disk></devices></domain>`, nil, ""},
		{"block disk", `<domain><name>x</name><devices><disk type='block' device='disk'><driver type='raw'/><source dev='/dev/vg/vm1'/><target dev='vda'/></disk></devices></domain>`,
			[]Disk{{Target: "vda", Source: "/dev/vg/vm1", Type: "block", Device: "disk", Format: "raw"}}, ""},
		{"backing chain", `<domain><name>x</name><devices><disk type='file'><driver type='qcow2'/><source file='/top'/>
			<backingStore type='file'><format type='qcow2'/><source file='/mid'/>
			<backingStore type='block'><format type='raw'/><source dev='/dev/vg/base'/><backingStore/></backingStore></backingStore>
			<target dev='vda'/></disk></devices></domain>`,
			[]Disk{{Target: "vda", Source: "/top", Type: "file", Device: "disk", Format: "qcow2", BackingStore: []BackingStore{
				{Type: "file", Format: "qcow2", Source: "/mid"}, {Type: "block", Format: "raw", Source: "/dev/vg/base"}}}}, ""},
		{"network disk", `<domain><name>x</name><devices><disk type='network' device='disk'><source protocol='rbd' name='pool/vm1'/><target dev='vda'/></disk></devices></domain>`,
			nil, `disk vda (pool/vm1): only file and block disks can be shipped, not type "network"`},
		{"network backing store", `<domain><name>x</name><devices><disk type='file'><source file='/top'/>
			<backingStore type='network'><source protocol='nbd' name='x'/></backingStore><target dev='vda'/></disk></devices></domain>`,
			nil, `disk vda: backing store 1 is of type "network"`},
		{"no name", `<domain><devices/></domain>`, nil, "no <name>"},
		{"not XML", `{"name": "vm1"}`, nil, "parse domain XML"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := parseDomain([]byte(tt.xml))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(d.Disks, tt.disks) {
				t.Errorf("disks %+v\nwant %+v", d.Disks, tt.disks)
			}
		})
	}
}

func FuzzRewriteDisks(f *testing.F) {
	f.Add([]byte(rewriteInput), "/var/lib/images/vm1.qcow2", "/new/<&>'\".img")
	f.Add([]byte(`<domain><os><nvram> /a </nvram></os></domain>`), "/a", "/b")
	f.Add([]byte(`<disk><source file='x' file='x'/></disk>`), "x", "y")
	f.Fuzz(func(t *testing.T, data []byte, from, to string) {
		out, err := RewriteDisks(data, map[string]Target{from: {Path: to, Device: len(to)%2 == 1}})
		if err != nil {
			return
		}
		// A rewrite of well-formed XML is well-formed.
		if wellFormed(data) && !wellFormed(out) {
			t.Fatalf("rewrite broke the XML:\n%q\n->\n%q", data, out)
		}
	})
}

func wellFormed(data []byte) bool {
	dec := xml.NewDecoder(bytes.NewReader(data))
	for {
		_, err := dec.Token()
		if err != nil {
			return err.Error() == "EOF"
		}
	}
}

func TestRewriteDisksBlock(t *testing.T) {
	in := `<domain><name>x</name><devices>
  <disk type="block" device="disk"><source dev="/dev/vg/vm1" index='1'/><target dev='vda'/></disk>
  <disk device='disk' type = 'file'><source file='/img/data.img'/><target dev='vdb'/></disk>
  <disk type='block' device='lun'><source dev='/dev/sdz'/><target dev='sda'/></disk>
</devices><os><nvram>/n/VARS.fd</nvram></os></domain>`
	got, err := RewriteDisks([]byte(in), map[string]Target{
		"/dev/vg/vm1":   {Path: "/srv/vm1.img"},
		"/img/data.img": {Path: "/dev/vg/data", Device: true},
		"/dev/sdz":      {Path: "/dev/sdy", Device: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := strings.NewReplacer(
		`<disk type="block" device="disk"><source dev="/dev/vg/vm1"`, `<disk type="file" device="disk"><source file="/srv/vm1.img"`,
		`type = 'file'><source file='/img/data.img'`, `type = 'block'><source dev='/dev/vg/data'`,
		`/dev/sdz`, `/dev/sdy`,
	).Replace(in)
	if string(got) != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	for _, tt := range []struct {
		to  map[string]Target
		err string
	}{
		{map[string]Target{"/dev/sdz": {Path: "/srv/lun.img"}}, "passthrough LUN"},
		{map[string]Target{"/n/VARS.fd": {Path: "/dev/x", Device: true}}, "NVRAM file /n/VARS.fd cannot become a block device"},
	} {
		if _, err := RewriteDisks([]byte(in), tt.to); err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%v: %v, want %q", tt.to, err, tt.err)
		}
	}
}
