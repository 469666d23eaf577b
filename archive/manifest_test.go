package archive

import (
	"strings"
	"testing"
	"time"
)

func validManifest() *Manifest {
	return &Manifest{
		Format: 1, ID: "20261121T233000Z-3f9a1c2e", Created: time.Unix(1e9, 0).UTC(), BlockSize: 1 << 20, Compression: "none",
		Segments: []Segment{{Name: SegmentObject(1), Size: 3000}},
		Files: []File{
			{Path: "vm", Type: TypeDir, Mode: 0o755},
			{Path: "vm/disk.img", Type: TypeFile, Size: 3 << 20, Mode: 0o644,
				Extents: []Extent{{KindData, 0, 1 << 20}, {KindHole, 1 << 20, 1 << 20}, {KindZero, 2 << 20, 1 << 20}},
				Blocks:  []Block{{Index: 0, Segment: 0, Offset: 0, Length: 1500}}},
		},
	}
}

func TestManifestCheck(t *testing.T) {
	if err := validManifest().check(); err != nil {
		t.Fatalf("valid manifest rejected: %v", err)
	}
	tests := []struct {
		name   string
		mutate func(m *Manifest)
		want   string
	}{
		{"absolute path", func(m *Manifest) { m.Files[1].Path = "/etc/passwd" }, "unsafe path"},
		{"dot-dot path", func(m *Manifest) { m.Files[1].Path = "../x" }, "unsafe path"},
		{"inner dot-dot", func(m *Manifest) { m.Files[1].Path = "vm/../../x" }, "unsafe path"},
		{"duplicate path", func(m *Manifest) { m.Files[0].Path = "vm/disk.img"; m.Files[0].Type = TypeFile }, "twice"},
		{"file inside file", func(m *Manifest) {
			m.Files = append(m.Files, File{Path: "vm/disk.img/x", Type: TypeDir})
		}, "inside file"},
		{"block past end", func(m *Manifest) { m.Files[1].Blocks[0].Index = 3 }, "out of order or range"},
		{"block outside segment", func(m *Manifest) { m.Files[1].Blocks[0].Offset = 2000 }, "outside segment"},
		{"missing segment", func(m *Manifest) { m.Files[1].Blocks[0].Segment = 1 }, "missing segment"},
		{"extents short", func(m *Manifest) { m.Files[1].Extents = m.Files[1].Extents[:2] }, "extents cover"},
		{"extents gap", func(m *Manifest) { m.Files[1].Extents[1].Offset++ }, "tile"},
		{"setuid mode", func(m *Manifest) { m.Files[1].Mode |= 1 << 23 }, "permission bits"},
		{"segment misnamed", func(m *Manifest) { m.Segments[0].Name = "../x" }, "not a segment name"},
		{"segments out of order", func(m *Manifest) {
			m.Segments = []Segment{{Name: SegmentObject(3), Size: 3000}, {Name: SegmentObject(2), Size: 10}}
		}, "ascending"},
		{"block size", func(m *Manifest) { m.BlockSize = 1 }, "block size"},
		{"bases in format 1", func(m *Manifest) { m.Bases = []Base{{ID: "20261120T233000Z-3f9a1c2e"}} }, "bases in a format 1"},
		{"missing base", func(m *Manifest) { m.Format = 2; m.Files[1].Blocks[0].Base = 1 }, "missing base"},
		{"base file without base", func(m *Manifest) { m.Files[1].Blocks[0].File = 2 }, "without a base"},
		{"base is itself", func(m *Manifest) { m.Format = 2; m.Bases = []Base{{ID: m.ID}} }, "repeated id"},
		{"base repeated", func(m *Manifest) {
			m.Format = 2
			m.Bases = []Base{{ID: "20261120T233000Z-3f9a1c2e"}, {ID: "20261120T233000Z-3f9a1c2e"}}
		}, "repeated id"},
		{"base segment missing", func(m *Manifest) {
			m.Format = 2
			m.Bases = []Base{{ID: "20261120T233000Z-3f9a1c2e", Segments: []Segment{{Name: SegmentObject(1), Size: 1000}}}}
			m.Files[1].Blocks[0].Base, m.Files[1].Blocks[0].Segment = 1, 1
		}, "missing segment"},
		{"outside base segment", func(m *Manifest) {
			m.Format = 2
			m.Bases = []Base{{ID: "20261120T233000Z-3f9a1c2e", Segments: []Segment{{Name: SegmentObject(1), Size: 1000}}}}
			m.Files[1].Blocks[0].Base = 1
		}, "outside segment"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := validManifest()
			tc.mutate(m)
			err := m.check()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("check() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestManifestWithBases(t *testing.T) {
	m := validManifest()
	m.Format = FormatIncremental
	m.Bases = []Base{{ID: "20261120T233000Z-00000001", Segments: []Segment{{Name: SegmentObject(4), Size: 5000, Key: 1}}}}
	f := &m.Files[1]
	f.Size = 4 << 20
	f.Extents = append(f.Extents, Extent{KindData, 3 << 20, 1 << 20})
	f.Blocks = append(f.Blocks, Block{Index: 3, Base: 1, File: 7, Segment: 0, Offset: 3000, Length: 1500})
	if err := m.check(); err != nil {
		t.Fatalf("valid incremental manifest rejected: %v", err)
	}
	if got := m.BaseIDs(); len(got) != 1 || got[0] != "20261120T233000Z-00000001" {
		t.Errorf("BaseIDs() = %v", got)
	}
}

func TestHeaderFormats(t *testing.T) {
	h := Header{Format: 1, ID: "20261121T233000Z-3f9a1c2e", BlockSize: 1 << 20, Cipher: CipherName, Compression: "zstd"}
	for _, tc := range []struct {
		name   string
		format int
		base   string
		ok     bool
	}{
		{"full", 1, "", true},
		{"incremental", 2, "20261120T233000Z-3f9a1c2e", true},
		{"full with base", 1, "20261120T233000Z-3f9a1c2e", false},
		{"incremental without base", 2, "", false},
		{"base is itself", 2, h.ID, false},
		{"bad base", 2, "../x", false},
		{"format 3 full", 3, "", true},
		{"format 3 incremental", 3, "20261120T233000Z-3f9a1c2e", true},
		{"format 3 base is itself", 3, h.ID, false},
		{"future format", 4, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := h
			h.Format, h.Base = tc.format, tc.base
			b, _ := h.Marshal()
			_, err := ParseHeader(b)
			if (err == nil) != tc.ok {
				t.Errorf("ParseHeader: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestFileDigestCoversEveryBlock(t *testing.T) {
	a := []Digest{{1}, {2}, {3}}
	base := FileDigest(3<<20, 1<<20, a)
	for i := range a {
		b := append([]Digest(nil), a...)
		b[i][5] ^= 1
		if FileDigest(3<<20, 1<<20, b) == base {
			t.Errorf("changing block %d does not change the file digest", i)
		}
	}
	if FileDigest(3<<20-1, 1<<20, a) == base || FileDigest(3<<20, 1<<19, a) == base {
		t.Error("size and block size are not bound")
	}
}

func TestBlockContextBindsPlace(t *testing.T) {
	id := "20261121T233000Z-3f9a1c2e"
	ctxs := map[string]bool{}
	for _, c := range [][]byte{
		BlockContext(id, 0, 0), BlockContext(id, 0, 1), BlockContext(id, 1, 0),
		BlockContext("20261121T233000Z-3f9a1c2f", 0, 0), ManifestContext(id),
	} {
		if ctxs[string(c)] {
			t.Fatalf("context %q repeats", c)
		}
		ctxs[string(c)] = true
	}
}
