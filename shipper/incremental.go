package shipper

import (
	"sort"
	"strconv"
	"strings"

	"github.com/coldship/coldship/archive"
)

// refPlan maps the records of the base that unchanged blocks use to the
// manifest's Bases: only shipments and segments actually used are listed.
type refPlan struct {
	bases  []archive.Base
	ships  []int          // for each entry of bases: its index in the base's table
	baseOf map[int]int    // table shipment index -> 1-based index into bases
	segOf  map[[2]int]int // (table shipment, segment) -> index into its Base.Segments
}

// plan gathers the records that the unchanged blocks of files use. It
// works on a nil base (a full shipment), giving an empty plan.
func (b *drBase) plan(files []*fileState) *refPlan {
	p := &refPlan{baseOf: map[int]int{}, segOf: map[[2]int]int{}}
	if b == nil {
		return p
	}
	used := map[int]map[int]bool{}
	for _, st := range files {
		for i, r := range st.ref {
			if !r {
				continue
			}
			e, _ := st.base.block(int64(i))
			if used[e.ship] == nil {
				used[e.ship] = map[int]bool{}
			}
			used[e.ship][e.seg] = true
		}
	}
	for si := range used {
		p.ships = append(p.ships, si)
	}
	sort.Slice(p.ships, func(i, j int) bool { return b.t.Shipments[p.ships[i]].ID < b.t.Shipments[p.ships[j]].ID })
	for k, si := range p.ships {
		ship := &b.t.Shipments[si]
		p.baseOf[si] = k + 1
		segs := make([]int, 0, len(used[si]))
		for seg := range used[si] {
			segs = append(segs, seg)
		}
		sort.Ints(segs) // a shipment's segments are in ascending order of name
		base := archive.Base{ID: ship.ID}
		for _, seg := range segs {
			p.segOf[[2]int{si, seg}] = len(base.Segments)
			base.Segments = append(base.Segments, ship.Segments[seg])
		}
		p.bases = append(p.bases, base)
	}
	return p
}

// block returns the manifest entry of block i of a file, unchanged since
// the base, that uses the base's record.
func (p *refPlan) block(f *drFile, i int64) archive.Block {
	e, _ := f.block(i)
	return archive.Block{
		Index: i, Base: p.baseOf[e.ship], File: e.file, Segment: p.segOf[[2]int{e.ship, e.seg}],
		Offset: e.off, Length: e.n, Compressed: e.compressed,
	}
}

type keyCopy struct {
	name string // in the new shipment: bases/<id>/keys/NNNN
	b    []byte
}

// keyCopies returns the wrapped keys of the used base segments, as read
// back from the destination when the base was checked.
func (p *refPlan) keyCopies(b *drBase) []keyCopy {
	var out []keyCopy
	for k, si := range p.ships {
		slots := map[int]bool{}
		for _, s := range p.bases[k].Segments {
			slots[s.Key] = true
		}
		sorted := make([]int, 0, len(slots))
		for slot := range slots {
			sorted = append(sorted, slot)
		}
		sort.Ints(sorted)
		for _, slot := range sorted {
			kb := b.keys[si][slot]
			if kb == nil {
				panic("shipper: internal error: key of a used base segment was not read")
			}
			out = append(out, keyCopy{archive.BaseKeyObject(p.bases[k].ID, slot), kb})
		}
	}
	return out
}

// newTable describes the shipment just completed for the next incremental
// send: new records where they were put, unchanged blocks where the base
// said they were.
func (state *sendState) newTable(id string, opts SendOptions, m *archive.Manifest, inv *archive.Inventory, ib []byte,
	files []*fileState, segIndex map[int]int) *drTable {
	t := &drTable{Format: drFormat, Dest: opts.Dest, ID: id, Recipients: opts.RecipientsID, StateKey: state.dr.keyID, BlockSize: opts.BlockSize}
	own := drShipment{ID: id, Inventory: archive.ObjectDigest(ib), Segments: m.Segments}
	slots := map[int]bool{}
	for _, s := range m.Segments {
		slots[s.Key] = true
	}
	for _, o := range inv.Objects {
		if slot, ok := keySlot(o.Name); ok && slots[slot] {
			own.Keys = append(own.Keys, drKey{Slot: slot, BLAKE3: o.BLAKE3})
		}
	}
	t.Shipments = []drShipment{own}
	shipIdx := map[int]int{} // base table index -> index in t
	for fi, st := range files {
		f := drFile{Name: st.src.Name, Dir: st.f == nil, Size: st.size}
		if st.f != nil {
			f.Blocks = make([]byte, len(st.kinds)*drBlockSize)
			for i, k := range st.kinds {
				e := drBlock{kind: k}
				switch {
				case k != kindData:
				case st.ref[i]:
					e, _ = st.base.block(int64(i))
					ni, ok := shipIdx[e.ship]
					if !ok {
						ni = len(t.Shipments)
						t.Shipments = append(t.Shipments, state.base.t.Shipments[e.ship])
						shipIdx[e.ship] = ni
					}
					e.ship = ni
				default:
					b := st.blocks[i]
					e = drBlock{kind: kindData, compressed: b.Compressed, file: fi, seg: segIndex[b.Segment],
						off: b.Offset, n: b.Length, kd: st.kd[i]}
				}
				e.put(f.Blocks[i*drBlockSize:])
			}
		}
		t.Files = append(t.Files, f)
	}
	return t
}

// keySlot returns n for the name of key slot n ("keys/NNNN").
func keySlot(name string) (int, bool) {
	digits, ok := strings.CutPrefix(name, "keys/")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	if err != nil || archive.KeyObject(n) != name {
		return 0, false
	}
	return n, true
}
