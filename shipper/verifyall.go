package shipper

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"filippo.io/age"
	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/internal/atonce"
)

// Problem is one thing wrong at a destination, found by VerifyAll.
type Problem struct {
	Shipment string `json:"shipment,omitempty"` // the shipment concerned, if any
	Object   string `json:"object,omitempty"`   // the object concerned, relative to the destination
	Problem  string `json:"problem"`
	// Err is the error behind the problem, for callers that classify it
	// (integrity, or an identity that opens nothing).
	Err error `json:"-"`
}

func (p Problem) String() string {
	switch {
	case p.Object != "" && p.Shipment != "" && !strings.HasPrefix(p.Object, p.Shipment+"/"):
		return p.Object + ": " + p.Problem + " (needed by shipment " + p.Shipment + ")"
	case p.Object != "":
		return p.Object + ": " + p.Problem
	case p.Shipment != "":
		return "shipment " + p.Shipment + ": " + p.Problem
	}
	return p.Problem
}

// VerifyAllOptions configure VerifyAll.
type VerifyAllOptions struct {
	// ReadData opens every block of every complete shipment with
	// Identities (Shipment.Verify), on top of the inventory check.
	ReadData   bool
	Identities []age.Identity
	Streams    int
	Jobs       int
	Counters   *Counters
	// Problem, if set, is called for each problem as it is found.
	Problem func(Problem)
}

// VerifyAllResult is what VerifyAll checked and found.
type VerifyAllResult struct {
	Shipments int       // shipments checked
	Problems  []Problem // everything wrong, in the order found
}

// objectCheck is the result of reading and hashing one object once, even
// when several shipments need it (a base's segments).
type objectCheck struct {
	size int64
	crc  bool   // sum is a CRC32C (format 3 segments), else a BLAKE3
	sum  string // as entrySum gives it
	err  error
}

// VerifyAll checks everything at tr, like restic's check: every complete
// shipment's objects against its plaintext inventory (present, with the
// recorded size and BLAKE3 digest), every base that a complete shipment
// needs, and objects that belong to no shipment: objects outside any
// shipment's folder, objects inside one that its inventory does not list,
// incomplete shipments older than the newest complete one (failed sends
// that were not resumed) and unfinished uploads but those of a newer one
// (a send may be running). Every problem is
// reported, not only the first. An error is returned only when the check
// itself cannot go on (the destination cannot be listed).
func VerifyAll(ctx context.Context, tr Transport, opts VerifyAllOptions) (*VerifyAllResult, error) {
	if opts.Counters == nil {
		opts.Counters = new(Counters)
	}
	res := &VerifyAllResult{}
	report := func(p Problem) {
		res.Problems = append(res.Problems, p)
		if opts.Problem != nil {
			opts.Problem(p)
		}
	}
	objects := map[string]int64{}
	err := tr.List(ctx, "", func(oi ObjectInfo) error {
		objects[oi.Name] = oi.Size
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", tr, err)
	}
	names := make([]string, 0, len(objects))
	for n := range objects {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		id, _, ok := strings.Cut(n, "/")
		if !ok || !archive.ValidID(id) {
			report(Problem{Object: n, Problem: "belongs to no shipment (a stray object)", Err: archive.ErrIntegrity})
		}
	}
	ships, err := List(ctx, tr)
	if err != nil {
		return nil, err
	}
	sending, runningAfter := seriesSending(ships)
	v := &allVerifier{tr: tr, objects: objects, checked: map[string]*objectCheck{}, streams: opts.Streams, cnt: opts.Counters, report: report}
	for start := 0; start < len(ships); start += verifyWindow {
		end := min(start+verifyWindow, len(ships))
		if err := v.window(ctx, ships[start:end], sending[start:end], opts, res); err != nil {
			return nil, err
		}
	}
	if ua, ok := tr.(UploadAborter); ok {
		running := mayBeRunning(ships, runningAfter)
		err := ua.Uploads(ctx, "", func(u Upload) error {
			if running(u.Name) {
				return nil
			}
			report(Problem{Object: u.Name, Problem: fmt.Sprintf("an unfinished upload (started %s) costs storage; prune or a rerun of the send aborts it",
				u.Initiated.Format("2006-01-02 15:04")), Err: archive.ErrIntegrity})
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list unfinished uploads at %s: %w", tr, err)
		}
	}
	return res, nil
}

// allVerifier checks shipments against their inventories, reading each
// object once.
type allVerifier struct {
	tr      Transport
	objects map[string]int64 // every object at the destination, with its size
	checked map[string]*objectCheck
	streams int // objects, or pieces, read at once
	cnt     *Counters
	report  func(Problem)
}

// verifyWindow is how many shipments VerifyAll reads at once: their
// headers and inventories, then the objects of all of them (verifyAtOnce
// at a time), before it checks them one after the other.
const verifyWindow = 4

// seriesSending marks the incomplete shipments newer than the newest
// complete one of their label's series (as prune counts them): a send may
// be writing them. runningAfter is as seriesNewest says.
func seriesSending(ships []ShipmentInfo) (sending []bool, runningAfter int) {
	newest, runningAfter := seriesNewest(ships, func(int) bool { return true }, func(i int) bool { return ships[i].Complete })
	sending = make([]bool, len(ships))
	for i, si := range ships {
		sending[i] = !si.Complete && i > newest[si.Label]
	}
	return sending, runningAfter
}

// window checks the shipments of ships (sending: those a send may be
// writing), as VerifyAll does, reporting in their order.
func (v *allVerifier) window(ctx context.Context, ships []ShipmentInfo, sending []bool, opts VerifyAllOptions, res *VerifyAllResult) error {
	loaded := make([]*loadedShipment, len(ships))
	err := atonce.Each(len(ships), len(ships), func(k int) error {
		if !ships[k].Complete {
			return nil
		}
		var err error
		loaded[k], err = v.load(ctx, ships[k].ID)
		return err
	})
	if err != nil {
		return err
	}
	if err := v.prefetch(ctx, loaded); err != nil {
		return err
	}
	for k, si := range ships {
		if err := ctx.Err(); err != nil {
			return err
		}
		res.Shipments++
		switch {
		case sending[k]:
			continue // a send may be running
		case !si.Complete && si.Error != "":
			// Prune deletes only what it can tell is a shipment.
			v.report(Problem{Shipment: si.ID, Problem: "incomplete, and its header is unreadable (" + si.Error +
				"): prune leaves it alone; remove it by hand if it is not yours", Err: archive.ErrIntegrity})
			continue
		case !si.Complete:
			v.report(Problem{Shipment: si.ID, Problem: "incomplete: a send that failed and was not resumed (prune deletes it)", Err: archive.ErrIntegrity})
			continue
		}
		if err := v.shipment(ctx, loaded[k]); err != nil {
			return err
		}
		if opts.ReadData {
			if err := readData(ctx, v.tr, si.ID, opts, v.report); err != nil {
				return err
			}
		}
	}
	return nil
}

// loadedShipment is a complete shipment's header and inventory as read,
// with what is wrong with them.
type loadedShipment struct {
	id         string
	header     error              // the header's integrity failure, if any
	inv        *archive.Inventory // nil: invProblem says why
	invProblem string
	statement  error // a signed shipment's: its objects do not match it
}

// load reads shipment id's header and inventory and, if it is signed,
// checks it against its statement, all at once; an error is one that
// stops the check (not an integrity failure).
func (v *allVerifier) load(ctx context.Context, id string) (*loadedShipment, error) {
	l := &loadedShipment{id: id}
	var ib []byte
	var ierr error
	var g errgroup.Group
	g.Go(func() error { _, _, l.header = readHeader(ctx, v.tr, id); return nil })
	g.Go(func() error { ib, ierr = getObject(ctx, v.tr, id+"/"+archive.InventoryObject, 1<<30); return nil })
	if _, signed := v.objects[id+"/"+archive.SignedObject]; signed {
		g.Go(func() error { _, l.statement = CheckStatement(ctx, v.tr, id); return nil })
	}
	g.Wait()
	if l.header != nil && !errors.Is(l.header, archive.ErrIntegrity) {
		return nil, l.header
	}
	if l.statement != nil && !errors.Is(l.statement, archive.ErrIntegrity) {
		return nil, l.statement
	}
	if ierr != nil {
		if !errors.Is(ierr, ErrNotFound) && !errors.Is(ierr, archive.ErrIntegrity) {
			return nil, ierr
		}
		l.invProblem = "the inventory is missing or unreadable: nothing of this shipment can be checked without a key"
		return l, nil
	}
	inv, err := archive.ParseInventory(ib)
	if err != nil {
		l.invProblem = err.Error()
		return l, nil
	}
	l.inv = inv
	return l, nil
}

// shipment checks one complete shipment's objects and those of its bases
// that it needs, and reports objects in its folder that it does not list.
func (v *allVerifier) shipment(ctx context.Context, l *loadedShipment) error {
	id, inv := l.id, l.inv
	if l.header != nil {
		v.report(Problem{Shipment: id, Object: id + "/" + archive.HeaderObject, Problem: l.header.Error(), Err: l.header})
	}
	if inv == nil {
		v.report(Problem{Shipment: id, Object: id + "/" + archive.InventoryObject, Problem: l.invProblem, Err: archive.ErrIntegrity})
		return nil
	}
	listed := map[string]bool{id + "/" + archive.InventoryObject: true}
	for _, o := range inv.Objects {
		name := id + "/" + o.Name
		listed[name] = true
		if err := v.object(ctx, id, name, o); err != nil {
			return err
		}
	}
	for _, b := range inv.Bases {
		if !archive.ValidID(b.ID) {
			v.report(Problem{Shipment: id, Object: id + "/" + archive.InventoryObject, Problem: fmt.Sprintf("names an invalid base %q", b.ID), Err: archive.ErrIntegrity})
			continue
		}
		if _, ok := v.objects[b.ID+"/"+archive.HeaderObject]; !ok {
			v.report(Problem{Shipment: id, Problem: fmt.Sprintf("needs base %s, which is missing: it cannot be restored", b.ID), Err: archive.ErrIntegrity})
			continue
		}
		for _, o := range b.Objects {
			if err := v.object(ctx, id, b.ID+"/"+o.Name, o); err != nil {
				return err
			}
		}
	}
	for name := range v.objects {
		rel, ok := strings.CutPrefix(name, id+"/")
		// A signed shipment's statement and signature come after its
		// inventory, which the statement lists.
		if ok && !listed[name] && rel != archive.SignedObject && rel != archive.SignatureObject {
			v.report(Problem{Shipment: id, Object: name, Problem: "not listed in the shipment's inventory (a leftover)", Err: archive.ErrIntegrity})
		}
	}
	if l.statement != nil {
		v.report(Problem{Shipment: id, Object: id + "/" + archive.SignedObject, Problem: l.statement.Error(), Err: l.statement})
	}
	return nil
}

// prefetch reads, all at once (readObjects), the objects of the shipments
// loaded and of their bases that their inventories list, are at the
// destination and have not been read yet (one after the other, each object
// cost round trips and moved one window per round trip); object then
// finds them read.
func (v *allVerifier) prefetch(ctx context.Context, loaded []*loadedShipment) error {
	var todo []objectRef
	seen := map[string]bool{}
	add := func(name string, want archive.InventoryEntry) {
		if _, present := v.objects[name]; present && !seen[name] && v.checked[name] == nil && CheckName(name) == nil {
			seen[name] = true
			todo = append(todo, objectRef{name, want})
			v.cnt.Total.Add(v.objects[name])
		}
	}
	for _, l := range loaded {
		if l == nil || l.inv == nil {
			continue
		}
		for _, o := range l.inv.Objects {
			add(l.id+"/"+o.Name, o)
		}
		for _, b := range l.inv.Bases {
			if _, ok := v.objects[b.ID+"/"+archive.HeaderObject]; ok && archive.ValidID(b.ID) {
				for _, o := range b.Objects {
					add(b.ID+"/"+o.Name, o)
				}
			}
		}
	}
	checks, err := readObjects(ctx, v.tr, todo, v.streams, v.cnt)
	if err != nil {
		return err
	}
	for i, c := range checks {
		v.checked[todo[i].name] = c
	}
	return nil
}

// verifyAtOnce is how many objects, or pieces of large segments, the
// key-less checks read at once when not told (see readObjects).
const verifyAtOnce = 8

// object checks that name is present with the inventory's size and
// digest, reading it only the first time.
func (v *allVerifier) object(ctx context.Context, id, name string, want archive.InventoryEntry) error {
	if err := CheckName(name); err != nil {
		v.report(Problem{Shipment: id, Object: id + "/" + archive.InventoryObject, Problem: err.Error(), Err: archive.ErrIntegrity})
		return nil
	}
	size, ok := v.objects[name]
	if !ok {
		v.report(Problem{Shipment: id, Object: name, Problem: "missing", Err: archive.ErrIntegrity})
		return nil
	}
	c := v.checked[name]
	if c == nil {
		v.cnt.Total.Add(size)
		checks, err := readObjects(ctx, v.tr, []objectRef{{name, want}}, v.streams, v.cnt)
		if err != nil {
			return err
		}
		c = checks[0]
		v.checked[name] = c
	}
	switch {
	case c.err != nil:
		v.report(Problem{Shipment: id, Object: name, Problem: "missing", Err: archive.ErrIntegrity})
	case c.size != want.Size:
		v.report(Problem{Shipment: id, Object: name, Problem: fmt.Sprintf("%d bytes, the inventory says %d (truncated or replaced)", c.size, want.Size), Err: archive.ErrIntegrity})
	case !c.matches(want):
		crc, _ := entrySum(want)
		what := map[bool]string{false: "BLAKE3 digest", true: "CRC32C"}[crc]
		v.report(Problem{Shipment: id, Object: name, Problem: "its " + what + " differs from the inventory's (corrupted or tampered)", Err: archive.ErrIntegrity})
	}
	return nil
}

// readData opens shipment id with the identities and authenticates every
// block of it; what fails is a problem of that shipment.
func readData(ctx context.Context, tr Transport, id string, opts VerifyAllOptions, report func(Problem)) error {
	sh, err := OpenShipment(ctx, tr, id, opts.Identities)
	if err == nil {
		err = sh.Verify(ctx, opts.Streams, opts.Jobs, nil)
	}
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	report(Problem{Shipment: id, Problem: "reading its data: " + err.Error(), Err: err})
	return nil
}
