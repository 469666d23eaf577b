package archive

import (
	"errors"
	"strings"
	"testing"
)

// TestInventoryIndex: the index answers as the inventory's list does: a
// segment agrees, differs (size, digest or checksum) or is missing; a base
// segment of a base not listed is refused; of repeated names, the first
// counts.
func TestInventoryIndex(t *testing.T) {
	seg := func(n int, size int64, crc string) Segment {
		return Segment{Name: SegmentObject(n), Size: size, CRC32C: crc}
	}
	inv := &Inventory{
		Objects: []InventoryEntry{SegmentEntry(seg(1, 10, "00000001")), SegmentEntry(seg(2, 20, "00000002")), SegmentEntry(seg(2, 99, "00000002"))},
		Bases:   []InventoryBase{{ID: "20261201T000000Z-00000001", Objects: []InventoryEntry{SegmentEntry(seg(7, 70, "00000007"))}}},
	}
	x := inv.Index()
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"agrees", x.CheckSegment(seg(1, 10, "00000001")), ""},
		{"first of a repeated name", x.CheckSegment(seg(2, 20, "00000002")), ""},
		{"second of a repeated name", x.CheckSegment(seg(2, 99, "00000002")), "differs"},
		{"size differs", x.CheckSegment(seg(1, 11, "00000001")), "differs"},
		{"checksum differs", x.CheckSegment(seg(1, 10, "00000009")), "differs"},
		{"missing", x.CheckSegment(seg(3, 10, "00000001")), "missing"},
		{"base segment agrees", x.CheckBaseSegment("20261201T000000Z-00000001", seg(7, 70, "00000007")), ""},
		{"base segment differs", x.CheckBaseSegment("20261201T000000Z-00000001", seg(7, 71, "00000007")), "differs"},
		{"base segment missing", x.CheckBaseSegment("20261201T000000Z-00000001", seg(1, 10, "00000001")), "missing"},
		{"base not listed", x.CheckBaseSegment("20261201T000000Z-00000002", seg(7, 70, "00000007")), "not listed"},
	}
	for _, c := range cases {
		switch {
		case c.want == "" && c.err != nil:
			t.Errorf("%s: %v", c.name, c.err)
		case c.want != "" && (c.err == nil || !errors.Is(c.err, ErrIntegrity) || !strings.Contains(c.err.Error(), c.want)):
			t.Errorf("%s: %v, want an integrity error saying %q", c.name, c.err, c.want)
		}
	}
}
