package archive

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func FuzzParseHeader(f *testing.F) {
	h := Header{Format: 1, ID: "20261121T233000Z-3f9a1c2e", BlockSize: 1 << 20, Cipher: CipherName, Compression: "zstd"}
	b, _ := h.Marshal()
	f.Add(b)
	f.Add([]byte(headerMagic + "{}\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err != nil {
			return
		}
		// Whatever parses must re-encode to something that parses the same.
		b2, err := h.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		h2, err := ParseHeader(b2)
		if err != nil || *h2 != *h {
			t.Fatalf("header does not round-trip: %v", err)
		}
	})
}

func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(`{"format":1,"id":"20261121T233000Z-3f9a1c2e","created":"2026-11-21T23:30:00Z","header_sha256":"` +
		"00000000000000000000000000000000000000000000000000000000000000aa" + `","block_size":1048576,"compression":"none",` +
		`"segments":[{"name":"segments/00000001","size":2000,"sha256":"` + "0000000000000000000000000000000000000000000000000000000000000000" + `","key":0}],` +
		`"files":[{"path":"vm","type":"dir","mode":493,"mtime":"2026-11-21T23:30:00Z","blake3":"` + "0000000000000000000000000000000000000000000000000000000000000000" + `"},` +
		`{"path":"vm/disk.img","type":"file","size":2097152,"mode":420,"mtime":"2026-11-21T23:30:00Z","blake3":"` + "0000000000000000000000000000000000000000000000000000000000000000" + `",` +
		`"extents":[{"kind":"data","offset":0,"length":1048576},{"kind":"hole","offset":1048576,"length":1048576}],` +
		`"blocks":[{"i":0,"s":0,"o":0,"n":1500,"h":"` + "0000000000000000000000000000000000000000000000000000000000000000" + `"}]}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		// Invariants the receiver relies on.
		for _, fl := range m.Files {
			if checkPath(fl.Path) != nil {
				t.Fatalf("unsafe path %q accepted", fl.Path)
			}
			for _, bl := range fl.Blocks {
				segs := m.Segments
				if bl.Base < 0 || bl.Base > len(m.Bases) {
					t.Fatalf("block of a missing base accepted: %+v", bl)
				}
				if bl.Base > 0 {
					segs = m.Bases[bl.Base-1].Segments
				}
				if bl.Segment < 0 || bl.Segment >= len(segs) || bl.Index < 0 || bl.Index >= m.NumBlocks(fl.Size) {
					t.Fatalf("block out of range accepted: %+v", bl)
				}
				if bl.Offset < 0 || bl.Offset+bl.Length > segs[bl.Segment].Size {
					t.Fatalf("block outside its segment accepted: %+v", bl)
				}
			}
		}
	})
}

func FuzzParseInventory(f *testing.F) {
	inv := Inventory{Format: 1, ID: "20261121T233000Z-3f9a1c2e", Objects: []InventoryEntry{{Name: "header", Size: 10}}}
	b, _ := inv.Marshal()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		inv, err := ParseInventory(b)
		if err != nil {
			return
		}
		for _, o := range inv.Objects {
			if o.Size < 0 {
				t.Fatalf("negative size accepted")
			}
		}
	})
}

func FuzzManifestKeySlot(f *testing.F) {
	f.Add([]byte("coldship-manifest-v1 key=0000\nxxxx"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if slot, err := ManifestKeySlot(b); err == nil && (slot < 0 || slot > 9999) {
			t.Fatalf("slot %d accepted", slot)
		}
	})
}

// FuzzReadImageInfo: an image header, as the guest's hypervisor (or a
// guest writing a raw disk) made it, never panics the probe, and a
// backing name it reports is one the file holds.
func FuzzReadImageInfo(f *testing.F) {
	for _, name := range []string{"qcow2-v2-overlay", "qcow2-v3-base", "qcow2-v3-overlay", "vmdk-child"} {
		b, err := os.ReadFile(filepath.Join("testdata", "images", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b[:min(len(b), 8192)])
	}
	f.Add([]byte("QFI\xfb\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x18\x00\x00\x00\x04base"))
	f.Add(append([]byte("QED\x00"), make([]byte, 60)...))
	f.Add([]byte("# Disk DescriptorFile\nparentCID=1\nparentFileNameHint=\"p.vmdk\"\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := ReadImageInfo(bytes.NewReader(b), int64(len(b)))
		if err == nil && img.Backing != "" && !bytes.Contains(b, []byte(img.Backing)) {
			t.Fatalf("backing name %q is not in the file", img.Backing)
		}
	})
}
