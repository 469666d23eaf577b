package shipper

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/internal/atonce"
)

// drBase is a checked base for an incremental send: its table, and the
// wrapped key objects of every shipment it refers to, read back from the
// destination.
type drBase struct {
	s     *drStore
	t     *drTable
	files map[string]int         // by name in the shipment: index into t.Files
	keys  map[int]map[int][]byte // by shipment index, key slot
}

func (b *drBase) id() string {
	if b == nil {
		return ""
	}
	return b.t.ID
}

// chooseBase picks the table for --base (latest or an id) and checks it,
// and the destination against it. It returns nil and the reason when the
// send must be a full one instead; an error only when the destination
// cannot be asked.
func (s *drStore) chooseBase(ctx context.Context, tr Transport, base string, opts *SendOptions) (*drBase, string, error) {
	ids := s.tables()
	var id string
	switch {
	case base == "latest" && len(ids) == 0:
		return nil, "no DR state for these sources and this destination yet (the first run is always full)", nil
	case base == "latest":
		id = ids[len(ids)-1]
	default:
		id = base
		found := false
		for _, x := range ids {
			found = found || x == id
		}
		if !found {
			return nil, fmt.Sprintf("the DR state knows no shipment %s of these sources to this destination (it keeps the last %d)", id, drKeep), nil
		}
	}
	t, err := s.load(id)
	switch {
	case errors.Is(err, errOlderFormat):
		return nil, fmt.Sprintf("the base %s is of an older format (shipments of format 1 and 2 are not used as bases)", id), nil
	case err != nil:
		return nil, fmt.Sprintf("the DR state of base %s is %v", id, err), nil
	case t.Dest != opts.Dest:
		return nil, fmt.Sprintf("the DR state of base %s is for another destination", id), nil
	case t.Recipients != opts.RecipientsID:
		return nil, fmt.Sprintf("the recipients differ from those of base %s (whose keys are wrapped for its own recipients)", id), nil
	case t.StateKey != s.keys.id:
		return nil, fmt.Sprintf("the DR state key changed since base %s was sent", id), nil
	case t.BlockSize != opts.BlockSize:
		return nil, fmt.Sprintf("--block-size differs from that of base %s (%d bytes)", id, t.BlockSize), nil
	}
	b := &drBase{s: s, t: t, files: map[string]int{}, keys: map[int]map[int][]byte{}}
	for i, f := range t.Files {
		if !f.Dir {
			b.files[f.Name] = i
		}
	}
	used := map[int]map[int]bool{0: {}}
	err = s.readBlocks(t, func(e *archive.TableEntry) error {
		if used[int(e.Base)] == nil {
			used[int(e.Base)] = map[int]bool{}
		}
		used[int(e.Base)][int(e.Segment)] = true
		return nil
	})
	if err != nil {
		return nil, fmt.Sprintf("the DR state of base %s is damaged: %v", id, err), nil
	}
	why, err := b.checkAtDest(ctx, tr, used)
	if why == "" && err == nil && !opts.BaseSizeOnly {
		why, err = b.checkContent(ctx, tr, used, opts)
	}
	if why != "" || err != nil {
		return nil, why, err
	}
	return b, "", nil
}

// checkContent reads back the segments of the base that its blocks are
// in (those the new shipment may refer to) and checks each against what
// was put: its size and CRC32C, as key-less verify does, streams reads at
// once, large segments in pieces (readObjects). It returns why the base
// cannot be used, or "".
func (b *drBase) checkContent(ctx context.Context, tr Transport, used map[int]map[int]bool, opts *SendOptions) (string, error) {
	var refs []objectRef
	var total int64
	for _, si := range slices.Sorted(maps.Keys(used)) {
		ship := &b.t.Shipments[si]
		for _, seg := range slices.Sorted(maps.Keys(used[si])) {
			sg := ship.Segments[seg]
			refs = append(refs, objectRef{ship.ID + "/" + sg.Name, archive.InventoryEntry{Name: sg.Name, Size: sg.Size, BLAKE3: sg.BLAKE3, CRC32C: sg.CRC32C}})
			total += sg.Size
		}
	}
	if len(refs) == 0 {
		return "", nil
	}
	opts.Log("checking the %d base segments (%d bytes) the shipment may refer to: read back, CRC32C", len(refs), total)
	checks, err := readObjects(ctx, tr, refs, opts.Streams, new(Counters))
	if err != nil {
		return "", err
	}
	for i, c := range checks {
		switch {
		case c.err != nil:
			return refs[i].name + " is missing at the destination", nil
		case !c.matches(refs[i].want):
			return refs[i].name + " is not what was sent (its size or CRC32C differs at the destination)", nil
		}
	}
	return "", nil
}

// checkAtDest checks that every shipment the base uses is complete at the
// destination with the very inventory it was sent with, that the segments
// holding its blocks are there at their size, and reads the wrapped keys
// those segments need (checking them against the state). The shipments
// are checked basesAtOnce at a time (a base at the end of a month of daily
// incremental sends uses thirty: checked one after the other, each cost a
// second at 200 ms); what fails is reported in the shipments' order.
func (b *drBase) checkAtDest(ctx context.Context, tr Transport, used map[int]map[int]bool) (string, error) {
	order := make([]int, 0, len(used))
	for si := range used {
		order = append(order, si)
	}
	sort.Ints(order)
	whys, errs := make([]string, len(order)), make([]error, len(order))
	keys := make([]map[int][]byte, len(order))
	atonce.Each(len(order), basesAtOnce, func(i int) error {
		keys[i], whys[i], errs[i] = b.checkShipment(ctx, tr, order[i], used[order[i]])
		return nil
	})
	for i, si := range order {
		if whys[i] != "" || errs[i] != nil {
			return whys[i], errs[i]
		}
		b.keys[si] = keys[i]
	}
	return "", nil
}

// basesAtOnce is how many of a base's shipments checkAtDest checks at once.
const basesAtOnce = 8

// checkShipment is checkAtDest's check of shipment si, whose segments segs
// hold blocks of the base: whether its manifest is there, its segments'
// sizes (only their folder is listed: a shipment's keys and base key
// copies are folders of folders, each a round trip or more), its
// inventory and its key objects (the slots come from the state), all read
// at once. It returns the key objects by slot.
func (b *drBase) checkShipment(ctx context.Context, tr Transport, si int, segs map[int]bool) (map[int][]byte, string, error) {
	ship := &b.t.Shipments[si]
	var slots []int
	for seg := range segs {
		if s := ship.Segments[seg]; !slices.Contains(slots, s.Key) {
			slots = append(slots, s.Key)
		}
	}
	sort.Ints(slots)
	sizes := map[string]int64{}
	var ib []byte
	var serr, lerr, ierr error
	kbs, whys, errs := make([][]byte, len(slots)), make([]string, len(slots)), make([]error, len(slots))
	var g errgroup.Group
	g.Go(func() error { _, serr = tr.Stat(ctx, ship.ID+"/"+archive.ManifestObject); return nil })
	g.Go(func() error {
		lerr = tr.List(ctx, ship.ID+"/"+archive.SegmentFolder+"/", func(oi ObjectInfo) error {
			sizes[strings.TrimPrefix(oi.Name, ship.ID+"/")] = oi.Size
			return nil
		})
		return nil
	})
	g.Go(func() error { ib, ierr = getObject(ctx, tr, ship.ID+"/"+archive.InventoryObject, 1<<30); return nil })
	for i, slot := range slots {
		g.Go(func() error { kbs[i], whys[i], errs[i] = b.readKey(ctx, tr, si, slot); return nil })
	}
	g.Wait()
	what := "base " + ship.ID
	if si > 0 {
		what = fmt.Sprintf("shipment %s (which base %s refers to)", ship.ID, b.t.ID)
	}
	switch {
	case lerr != nil:
		return nil, "", fmt.Errorf("list %s: %w", ship.ID, lerr)
	case serr != nil && !errors.Is(serr, ErrNotFound) && !errors.Is(serr, ErrNotRegular):
		return nil, "", serr
	case serr != nil && errors.Is(ierr, ErrNotFound) && len(sizes) == 0:
		return nil, what + " is missing at the destination", nil
	case serr != nil, errors.Is(ierr, ErrNotFound):
		return nil, what + " is incomplete at the destination", nil
	case ierr != nil:
		return nil, "", ierr
	case archive.ObjectDigest(ib) != ship.Inventory:
		return nil, what + " is listed differently at the destination than when it was sent", nil
	}
	for seg := range segs {
		s := ship.Segments[seg]
		if size, ok := sizes[s.Name]; !ok || size != s.Size {
			return nil, fmt.Sprintf("%s/%s is missing or of the wrong size at the destination", ship.ID, s.Name), nil
		}
	}
	keys := map[int][]byte{}
	for i, slot := range slots {
		if whys[i] != "" || errs[i] != nil {
			return nil, whys[i], errs[i]
		}
		keys[slot] = kbs[i]
	}
	return keys, "", nil
}

// readKey reads back key slot slot of shipment si and checks it against
// the state.
func (b *drBase) readKey(ctx context.Context, tr Transport, si, slot int) ([]byte, string, error) {
	ship := &b.t.Shipments[si]
	var want *drKey
	for i := range ship.Keys {
		if ship.Keys[i].Slot == slot {
			want = &ship.Keys[i]
		}
	}
	name := ship.ID + "/" + archive.KeyObject(slot)
	kb, err := getObject(ctx, tr, name, archive.MaxKeyObject)
	if errors.Is(err, ErrNotFound) {
		return nil, name + " is missing at the destination", nil
	}
	if err != nil {
		return nil, "", err
	}
	if want == nil || archive.ObjectDigest(kb) != want.BLAKE3 {
		return nil, name + " differs from the key object that was sent", nil
	}
	return kb, "", nil
}

// baseCursor reads the base's block file in the order of the new
// shipment's files, for the block reader's Prior: the entries of the
// base's file of the same name.
type baseCursor struct {
	b     *drBase
	f     *os.File
	names []string // of the new shipment's files
	file  int      // the new file being read; -1 before the first
	r     *bufio.Reader
	left  int64
	head  archive.TableEntry
	ok    bool
	buf   [archive.TableEntrySize]byte
}

func (b *drBase) cursor(files []*sendFile) (*baseCursor, error) {
	f, err := os.Open(b.s.blocksPath(b.t.ID))
	if err != nil {
		return nil, fmt.Errorf("DR state of base %s: %w", b.t.ID, err)
	}
	c := &baseCursor{b: b, f: f, file: -1}
	for _, sf := range files {
		c.names = append(c.names, sf.src.Name)
	}
	return c, nil
}

func (c *baseCursor) close() { c.f.Close() }

// lookup returns the base's entry for block block of new file file, if
// the base has one; calls come in (file, block) order. The entry's Base is
// its shipment's index in the base's table plus 1.
func (c *baseCursor) lookup(file int, block int64) (archive.TableEntry, bool, error) {
	if file != c.file {
		c.open(file)
	}
	for c.ok && int64(c.head.Block) < block {
		if err := c.advance(); err != nil {
			return archive.TableEntry{}, false, err
		}
	}
	if !c.ok || int64(c.head.Block) != block {
		return archive.TableEntry{}, false, nil
	}
	e := c.head
	e.Base++
	return e, true, nil
}

// open positions the cursor at the entries of the base's file named as
// new file file.
func (c *baseCursor) open(file int) {
	c.file, c.ok, c.left = file, false, 0
	bi, found := c.b.files[c.names[file]]
	if !found {
		return
	}
	bf := &c.b.t.Files[bi]
	sr := io.NewSectionReader(c.f, bf.First*archive.TableEntrySize, bf.Count*archive.TableEntrySize)
	if c.r == nil {
		c.r = bufio.NewReaderSize(sr, 64<<10)
	} else {
		c.r.Reset(sr)
	}
	c.left = bf.Count
	c.advance()
}

func (c *baseCursor) advance() error {
	if c.left == 0 {
		c.ok = false
		return nil
	}
	c.left--
	if _, err := io.ReadFull(c.r, c.buf[:]); err != nil {
		return fmt.Errorf("DR state of base %s: %w", c.b.t.ID, err)
	}
	e, err := archive.DecodeTableEntry(c.buf[:])
	if err != nil || (c.ok && e.Block <= c.head.Block) {
		return fmt.Errorf("DR state of base %s changed while in use", c.b.t.ID)
	}
	c.head, c.ok = e, true
	return nil
}

// refPlan maps the records of the base that unchanged blocks use to the
// manifest's Bases: only shipments and segments actually used are listed.
type refPlan struct {
	bases  []archive.Base
	ships  []int          // for each entry of bases: its index in the base's table
	baseOf map[int]int    // table shipment index -> 1-based index into bases
	segOf  map[[2]int]int // (table shipment, segment) -> index into its Base.Segments
}

// plan lists the base records in use (table shipment, segment). It works
// on a nil base (a full shipment), giving an empty plan.
func (b *drBase) plan(used map[[2]int]bool) *refPlan {
	p := &refPlan{baseOf: map[int]int{}, segOf: map[[2]int]int{}}
	if b == nil {
		return p
	}
	segs := map[int][]int{}
	for k := range used {
		segs[k[0]] = append(segs[k[0]], k[1])
	}
	for si := range segs {
		p.ships = append(p.ships, si)
	}
	sort.Slice(p.ships, func(i, j int) bool { return b.t.Shipments[p.ships[i]].ID < b.t.Shipments[p.ships[j]].ID })
	for k, si := range p.ships {
		ship := &b.t.Shipments[si]
		p.baseOf[si] = k + 1
		sort.Ints(segs[si]) // a shipment's segments are in ascending order of name
		base := archive.Base{ID: ship.ID}
		for _, seg := range segs[si] {
			p.segOf[[2]int{si, seg}] = len(base.Segments)
			base.Segments = append(base.Segments, ship.Segments[seg])
		}
		p.bases = append(p.bases, base)
	}
	return p
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
