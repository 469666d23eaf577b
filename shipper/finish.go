package shipper

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/internal/atonce"
)

// finish completes the shipment of an attempt whose records are all at
// the destination: the copies of the base's keys, the block table, the
// inventory and, last, the manifest; then the DR table for the next
// incremental send.
func (r *sendRun) finish(ctx context.Context, p *pipeline, key *cipher.Key, wrapped, header []byte) error {
	opts, id := r.opts, p.id
	segs, fromBefore := r.listedSegments(p)
	segIndex := map[int]int{}
	for i, s := range segs {
		n, _ := archive.SegmentNumber(s.Name)
		segIndex[n] = i
	}
	plan := r.base.plan(p.usedBase)
	copies := plan.keyCopies(r.base)
	if err := r.putCopies(ctx, id, copies); err != nil {
		return err
	}
	var drw *drWriter
	if r.dr != nil {
		var err error
		if drw, err = r.dr.newWriter(id); err != nil {
			opts.Log("warning: %v (the next send with --base will not build on this shipment)", err)
		}
	}
	defer drw.abort()
	table, tableLanded, err := r.writeTable(ctx, p, key, segIndex, plan, &drw)
	if err != nil {
		return err
	}
	defer tableLanded() // on an early return: the put has ended before the temporaries go
	keys, err := r.keyObjects(ctx, p.slot, wrapped, segs, copies)
	if err != nil {
		return err
	}
	m := r.manifest(segs, plan, table, keys)
	mb, err := m.Seal(key, p.slot)
	if err != nil {
		return err
	}
	inv := inventoryOf(m, int64(len(header)), keys, mb)
	ib, err := inv.Marshal()
	if err != nil {
		return err
	}
	r.inventory = sha256.Sum256(ib)
	// The inventory goes up while the block table's put ends (its sync
	// and rename: round trips on a long link). The manifest, which makes
	// the shipment complete, is written meanwhile too, but takes its name
	// only once both have landed (and a resumed shipment is checked).
	var landed errgroup.Group
	landed.Go(tableLanded)
	landed.Go(func() error { return r.put(ctx, id+"/"+archive.InventoryObject, ib) })
	if !r.resumed { // its own objects are checked meanwhile, those put here aside
		landed.Go(func() error { return r.checkOwn(ctx, inv, archive.BlocksObject) })
	}
	ready := sync.OnceValue(func() error {
		if err := landed.Wait(); err != nil {
			return err
		}
		if r.resumed {
			return r.checkShipment(ctx, inv)
		}
		return r.checkBases(ctx, inv)
	})
	name := id + "/" + archive.ManifestObject
	err = putGated(ctx, r.tr, name, bytes.NewReader(mb), int64(len(mb)), ready)
	if rerr := ready(); rerr != nil { // the other puts end before finish does, whatever happened
		return rerr
	}
	if err != nil {
		return err // it names the object
	}
	opts.Counters.Shipped.Add(int64(len(mb)))
	opts.Counters.Reused.Add(fromBefore.bytes)
	opts.Counters.SegmentsReused.Add(fromBefore.n)
	if drw != nil {
		if err := r.dr.save(r.newTable(m, keys, plan, ib), drw); err != nil {
			opts.Log("warning: %v (the next send with --base will not build on this shipment)", err)
		} else if opts.CleanLeftovers {
			r.dr.removeStale()
		}
	}
	if r.resumed {
		r.removeStrays(ctx, id, inv)
	}
	return nil
}

type reused struct{ n, bytes int64 }

// listedSegments returns the segments the manifest lists, in ascending
// order of name: those of this attempt, and those of earlier attempts that
// hold records in use; and what of them an earlier run put.
func (r *sendRun) listedSegments(p *pipeline) ([]archive.Segment, reused) {
	p.mu.Lock()
	segs := append([]archive.Segment(nil), p.newSegs...)
	p.mu.Unlock()
	var before reused
	for _, s := range r.j.complete() {
		if p.usedOwn[s.n] {
			segs = append(segs, s.Segment)
			if s.fromBefore {
				before.n++
				before.bytes += s.Size
			}
		}
	}
	sort.Slice(segs, func(a, b int) bool { return segs[a].Name < segs[b].Name })
	return segs, before
}

// writeTable streams the block table from the per-block state to the
// blocks object, and the next DR table's block file beside it. It returns
// once every byte is written (a table of up to spoolLimit bytes: held,
// its put started, so that the inventory's put need not wait for the
// table's first round trip), with the table's reference and landed,
// which waits for the put to end (the object synced and in place) and
// reports how it ended.
func (r *sendRun) writeTable(ctx context.Context, p *pipeline, key *cipher.Key, segIndex map[int]int, plan *refPlan, drw **drWriter) (archive.ObjectRef, func() error, error) {
	done := make(chan error, 1)
	name := p.id + "/" + archive.BlocksObject
	pw := &spool{start: func(rd io.Reader, size int64, pr *io.PipeReader) {
		err := r.tr.Put(ctx, name, rd, size) // its error names the object
		if pr != nil {
			pr.CloseWithError(err)
		}
		done <- err
	}}
	tw, err := archive.NewTableWriter(pw, key, p.slot, p.id)
	if err == nil {
		err = r.state.scan(p.entries, func(e *archive.TableEntry, kd *archive.Digest) error {
			te, de := *e, *e
			de.Digest = *kd
			if e.Base == 0 {
				idx, ok := segIndex[int(e.Segment)]
				if !ok {
					panic("shipper: internal error: a record in a segment that is not listed")
				}
				te.Segment, de.Segment, de.BaseFile = uint32(idx), uint32(idx), e.File
			} else {
				ship := int(e.Base) - 1
				te.Base, te.Segment = uint16(plan.baseOf[ship]), uint32(plan.segOf[[2]int{ship, int(e.Segment)}])
				de.Base = te.Base
			}
			if *drw != nil && (*drw).add(&de) != nil {
				r.opts.Log("warning: DR state: cannot write the block file (the next send with --base will not build on this shipment)")
				(*drw).abort()
				*drw = nil
			}
			return tw.Add(te)
		})
	}
	var ref archive.ObjectRef
	if err == nil {
		ref, err = tw.Close()
	}
	if started := pw.CloseWithError(err); err != nil {
		if started {
			<-done
		}
		return ref, nil, err
	}
	landed := sync.OnceValue(func() error {
		err := <-done
		if err == nil {
			r.opts.Counters.Shipped.Add(ref.Size)
		}
		return err
	})
	return ref, landed, nil
}

// keyObjects lists every key object of the shipment: the slot of this
// attempt, the slot of every listed segment (read back, and checked
// against the journal), and the copies of the bases' keys.
func (r *sendRun) keyObjects(ctx context.Context, slot int, wrapped []byte, segs []archive.Segment, copies []keyCopy) ([]archive.ObjectRef, error) {
	slots := map[int]bool{slot: true}
	for _, s := range segs {
		slots[s.Key] = true
	}
	var sorted []int
	for s := range slots {
		sorted = append(sorted, s)
	}
	sort.Ints(sorted)
	var refs []archive.ObjectRef
	for _, s := range sorted {
		b := wrapped
		if s != slot {
			var err error
			if b, err = getObject(ctx, r.tr, r.j.hdr.ID+"/"+archive.KeyObject(s), archive.MaxKeyObject); err != nil {
				return nil, err
			}
			if archive.ObjectDigest(b) != r.j.keyObjs[s] {
				return nil, fmt.Errorf("%s/%s changed at the destination while the send ran: %w", r.j.hdr.ID, archive.KeyObject(s), archive.ErrIntegrity)
			}
		}
		refs = append(refs, archive.ObjectRef{Name: archive.KeyObject(s), Size: int64(len(b)), BLAKE3: archive.ObjectDigest(b)})
	}
	for _, kc := range copies {
		refs = append(refs, archive.ObjectRef{Name: kc.name, Size: int64(len(kc.b)), BLAKE3: archive.ObjectDigest(kc.b)})
	}
	return refs, nil
}

// manifest describes the shipment.
func (r *sendRun) manifest(segs []archive.Segment, plan *refPlan, table archive.ObjectRef, keys []archive.ObjectRef) *archive.Manifest {
	h := &r.j.hdr
	m := &archive.Manifest{
		Format: archive.FormatV3, ID: h.ID, Created: h.Created, Label: h.Label, HeaderDigest: h.HeaderDigest,
		BlockSize: h.BlockSize, Compression: h.Compression, Segments: segs, Bases: plan.bases, Table: &table, Keys: keys,
	}
	if m.Segments == nil {
		m.Segments = []archive.Segment{}
	}
	for _, sf := range r.files {
		m.Files = append(m.Files, sf.manifestFile())
	}
	return m
}

// inventoryOf lists every object of the shipment with its size and
// checksum (segments: CRC32C), and the base segments it needs.
func inventoryOf(m *archive.Manifest, headerSize int64, keys []archive.ObjectRef, mb []byte) *archive.Inventory {
	inv := &archive.Inventory{Format: m.Format, ID: m.ID}
	add := func(name string, size int64, d archive.Digest) {
		inv.Objects = append(inv.Objects, archive.InventoryEntry{Name: name, Size: size, BLAKE3: d})
	}
	add(archive.HeaderObject, headerSize, m.HeaderDigest)
	for _, k := range keys {
		add(k.Name, k.Size, k.BLAKE3)
	}
	for _, s := range m.Segments {
		inv.Objects = append(inv.Objects, archive.SegmentEntry(s))
	}
	add(archive.BlocksObject, m.Table.Size, m.Table.BLAKE3)
	add(archive.ManifestObject, int64(len(mb)), archive.ObjectDigest(mb))
	for _, b := range m.Bases {
		ib := archive.InventoryBase{ID: b.ID}
		for _, s := range b.Segments {
			ib.Objects = append(ib.Objects, archive.SegmentEntry(s))
		}
		inv.Bases = append(inv.Bases, ib)
	}
	return inv
}

// checkShipment checks a shipment without a key before its manifest is
// put: its own objects (checkOwn) and its bases' segments (checkBases),
// side by side. The segments' content was read back and checked when the
// attempt started (those of earlier runs) or summed as they were written
// (those of this run).
func (r *sendRun) checkShipment(ctx context.Context, inv *archive.Inventory) error {
	var g errgroup.Group
	g.Go(func() error { return r.checkOwn(ctx, inv, "") })
	g.Go(func() error { return r.checkBases(ctx, inv) })
	return g.Wait()
}

// checkOwn checks, before the manifest is put, that every other object
// the inventory lists is at the destination at its size: a segment put
// and then deleted (a prune run from another host takes a shipment
// without a manifest, older than a newer complete one, for a failed
// send's leftovers) would give a shipment that exits 0 and cannot be
// restored. A resumed shipment's objects other than segments, put by an
// earlier run, are also read back against their digests. The object
// named putting, whose put is under way, is not looked for.
func (r *sendRun) checkOwn(ctx context.Context, inv *archive.Inventory, putting string) error {
	what := "shipment " + inv.ID
	if r.resumed {
		what = "resumed " + what
	}
	var names []string
	for _, o := range inv.Objects {
		if o.Name != archive.ManifestObject && o.Name != putting {
			names = append(names, inv.ID+"/"+o.Name)
		}
	}
	sizes, err := objectSizes(ctx, r.tr, names)
	if err != nil {
		return fmt.Errorf("list %s: %w", inv.ID, err)
	}
	for _, o := range inv.Objects {
		name := inv.ID + "/" + o.Name
		if o.Name == archive.ManifestObject || o.Name == putting {
			continue
		}
		if size, ok := sizes[name]; !ok || size != o.Size {
			return fmt.Errorf("%s: %s is missing or of the wrong size at the destination: %w", what, name, archive.ErrIntegrity)
		}
		if _, seg := archive.SegmentNumber(o.Name); seg || !r.resumed {
			continue
		}
		b, err := getObject(ctx, r.tr, name, o.Size)
		if err != nil {
			return err
		}
		if archive.ObjectDigest(b) != o.BLAKE3 {
			return fmt.Errorf("%s: %s does not match what was put: %w", what, name, archive.ErrIntegrity)
		}
	}
	return nil
}

// objectSizes returns the sizes of those of the named objects that are at
// the destination: each folder that holds more than lookupsPerFolder of
// them is listed, and each other object looked up, listsAtOnce at once.
// (A listing of their common folder would read the folders below it only
// after it, and reading a folder takes four round trips on SFTP: a few
// lookups sent together take one.)
func objectSizes(ctx context.Context, tr Transport, names []string) (map[string]int64, error) {
	want := map[string]bool{}
	inFolder := map[string]int{}
	for _, name := range names {
		want[name] = true
		inFolder[path.Dir(name)]++
	}
	list := map[string]bool{}
	for dir, n := range inFolder {
		list[dir] = n > lookupsPerFolder
	}
	// A folder with others below it would be walked down to them: its own
	// objects are looked up instead (a shipment's header, beside its
	// segment and key folders).
	for dir := range inFolder {
		for d := path.Dir(dir); d != "." && d != "/"; d = path.Dir(d) {
			list[d] = false
		}
	}
	var folders, alone []string
	for dir := range inFolder {
		if list[dir] {
			folders = append(folders, dir+"/")
		}
	}
	for _, name := range names {
		if !list[path.Dir(name)] {
			alone = append(alone, name)
		}
	}
	var mu sync.Mutex
	sizes := map[string]int64{}
	found := func(oi ObjectInfo) error {
		if want[oi.Name] {
			mu.Lock()
			sizes[oi.Name] = oi.Size
			mu.Unlock()
		}
		return nil
	}
	return sizes, atonce.Each(len(folders)+len(alone), listsAtOnce, func(i int) error {
		if i < len(folders) {
			return tr.List(ctx, folders[i], found)
		}
		oi, err := tr.Stat(ctx, alone[i-len(folders)])
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrNotRegular) {
			return nil // missing
		}
		if err != nil {
			return err
		}
		return found(oi)
	})
}

// checkBases checks, before the manifest of an incremental shipment is
// put, that every base segment its inventory lists is still at the
// destination at its size. The base was checked when the send started,
// but a base deleted since (a prune run elsewhere, a lifecycle rule)
// would give a shipment that exits 0 and cannot be restored. The segments
// are found as the shipment's own objects are (objectSizes).
func (r *sendRun) checkBases(ctx context.Context, inv *archive.Inventory) error {
	var names []string
	for _, b := range inv.Bases {
		for _, o := range b.Objects {
			names = append(names, b.ID+"/"+o.Name)
		}
	}
	sizes, err := objectSizes(ctx, r.tr, names)
	if err != nil {
		return fmt.Errorf("list the bases of %s: %w", inv.ID, err)
	}
	for _, b := range inv.Bases {
		for _, o := range b.Objects {
			if size, ok := sizes[b.ID+"/"+o.Name]; !ok || size != o.Size {
				return fmt.Errorf("%s/%s, a segment of base %s that shipment %s refers to, is missing or of the wrong size at the destination (the next send with --base will be a full one): %w",
					b.ID, o.Name, b.ID, inv.ID, archive.ErrIntegrity)
			}
		}
	}
	return nil
}

// removeStrays deletes, once a resumed shipment is complete, what earlier
// attempts left that it does not list (best effort): segments that never
// completed or failed their check, unused key slots, temporaries.
func (r *sendRun) removeStrays(ctx context.Context, id string, inv *archive.Inventory) {
	listed := map[string]bool{id + "/" + archive.InventoryObject: true}
	for _, o := range inv.Objects {
		listed[id+"/"+o.Name] = true
	}
	var stray []string
	r.tr.List(ctx, id+"/", func(oi ObjectInfo) error {
		if !listed[oi.Name] {
			stray = append(stray, oi.Name)
		}
		return nil
	})
	for _, name := range stray {
		r.tr.Delete(ctx, name)
	}
	if tc, ok := r.tr.(TemporaryRemover); ok {
		tc.RemoveTemporaries(ctx, id)
	}
}

// newTable describes the shipment just completed for the next
// incremental send: new records where they were put, unchanged blocks
// where the base said they were.
func (r *sendRun) newTable(m *archive.Manifest, keys []archive.ObjectRef, plan *refPlan, ib []byte) *drTable {
	t := &drTable{Format: drFormat, Dest: r.opts.Dest, ID: m.ID, Recipients: r.opts.RecipientsID, StateKey: r.keys.id, BlockSize: m.BlockSize}
	own := drShipment{ID: m.ID, Inventory: archive.ObjectDigest(ib), Segments: m.Segments}
	slots := map[int]bool{}
	for _, s := range m.Segments {
		slots[s.Key] = true
	}
	for _, k := range keys {
		if slot, ok := archive.KeySlot(k.Name); ok && slots[slot] {
			own.Keys = append(own.Keys, drKey{Slot: slot, BLAKE3: k.BLAKE3})
		}
	}
	t.Shipments = []drShipment{own}
	for _, si := range plan.ships {
		t.Shipments = append(t.Shipments, r.base.t.Shipments[si])
	}
	for _, sf := range r.files {
		f := drFile{Name: sf.src.Name, Dir: sf.f == nil, Size: sf.stamp.Size}
		if f.Dir {
			f.Size = 0
		}
		if sf.dataBlocks > 0 {
			f.First, f.Count = sf.firstEntry, sf.dataBlocks
		}
		t.Files = append(t.Files, f)
	}
	return t
}

// putCopies puts the copies of the bases' keys into shipment id,
// copiesAtOnce at a time: a put into a new folder is eight round trips on
// a long link (its folders made first), and a base of thirty shipments
// has thirty copies or more.
func (r *sendRun) putCopies(ctx context.Context, id string, copies []keyCopy) error {
	return atonce.Each(len(copies), copiesAtOnce, func(i int) error {
		return r.put(ctx, id+"/"+copies[i].name, copies[i].b)
	})
}

// copiesAtOnce is how many base key copies putCopies puts at once.
const copiesAtOnce = 32

// listsAtOnce bounds the listings and lookups objectSizes runs at once,
// and lookupsPerFolder the objects of one folder it looks up rather than
// list the folder.
const (
	listsAtOnce      = 32
	lookupsPerFolder = 32
)
