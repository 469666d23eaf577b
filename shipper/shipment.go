package shipper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"filippo.io/age"
	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/internal/atonce"
)

// listHeadersAtOnce is how many shipment headers List reads at once.
const listHeadersAtOnce = 16

// ShipmentInfo is what `coldship list` shows of a shipment: nothing sealed.
type ShipmentInfo struct {
	ID       string    `json:"id"`
	Created  time.Time `json:"created"`
	Label    string    `json:"label"`
	Bytes    int64     `json:"bytes"`
	Complete bool      `json:"complete"`
	Base     string    `json:"base,omitempty"`  // an incremental shipment's base
	Error    string    `json:"error,omitempty"` // why the header could not be read
}

// List returns the shipments at tr, oldest first.
func List(ctx context.Context, tr Transport) ([]ShipmentInfo, error) {
	return listShipments(ctx, tr, tr.List)
}

// mayBeRunning says whether an object name lies in the folder of a
// shipment that a send may be writing now: one newer than the newest
// complete shipment (newestComplete, an index of ships; -1: none), listed
// or not yet (a send's first uploads may still be going up). Its
// incompleteness is no problem, and its unfinished uploads are the
// send's: verify --all does not report them, prune does not abort them.
func mayBeRunning(ships []ShipmentInfo, newestComplete int) func(name string) bool {
	newest := ""
	if newestComplete >= 0 {
		newest = ships[newestComplete].ID
	}
	return func(name string) bool {
		id, _, ok := strings.Cut(name, "/")
		return ok && archive.ValidID(id) && id > newest
	}
}

// listShipments gathers the shipments from what list lists, oldest first.
// Each shipment's header is read as soon as the shipment is listed.
func listShipments(ctx context.Context, tr Transport, list func(context.Context, string, func(ObjectInfo) error) error) ([]ShipmentInfo, error) {
	type header struct {
		h        *archive.Header
		bad, err error
	}
	byID, headers := map[string]*ShipmentInfo{}, map[string]*header{}
	// The headers are read listHeadersAtOnce at a time: a destination of
	// a year of daily shipments would otherwise cost two round trips per
	// shipment, one after the other.
	var g errgroup.Group
	g.SetLimit(listHeadersAtOnce)
	err := list(ctx, "", func(oi ObjectInfo) error {
		id, rest, ok := strings.Cut(oi.Name, "/")
		if !ok || !archive.ValidID(id) {
			return nil // not ours
		}
		si := byID[id]
		if si == nil {
			si = &ShipmentInfo{ID: id}
			hd := new(header)
			byID[id], headers[id] = si, hd
			g.Go(func() error {
				hd.h, hd.bad, hd.err = readListedHeader(ctx, tr, id)
				return nil
			})
		}
		si.Bytes += oi.Size
		if rest == archive.ManifestObject {
			si.Complete = true
		}
		return nil
	})
	g.Wait()
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", tr, err)
	}
	var out []ShipmentInfo
	for _, si := range byID {
		out = append(out, *si)
	}
	sortShipments(out)
	for i := range out {
		si, hd := &out[i], headers[out[i].ID]
		switch {
		case hd.err != nil:
			return nil, fmt.Errorf("list %s: %w", tr, hd.err)
		case hd.bad != nil:
			si.Error = hd.bad.Error()
		default:
			si.Created, si.Label, si.Base = hd.h.Created, hd.h.Label, hd.h.Base
		}
	}
	return out, nil
}

// sortShipments sorts ships oldest first: by id, which names the
// millisecond a shipment was begun in (archive.NewID), so that of two
// shipments made within one second the later is the newer, whatever
// their kinds: a full one made after an incremental one is the newest.
func sortShipments(ships []ShipmentInfo) {
	slices.SortFunc(ships, func(a, b ShipmentInfo) int { return strings.Compare(a.ID, b.ID) })
}

// errTooLarge is an object longer than the limit it was read with.
var errTooLarge = errors.New("larger than")

// getObject reads a whole small object; limit guards against a hostile size.
func getObject(ctx context.Context, tr Transport, name string, limit int64) ([]byte, error) {
	rc, err := tr.Open(ctx, name, 0, -1)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", name, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", name, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("get %s: %w %d bytes: %w", name, errTooLarge, limit, archive.ErrIntegrity)
	}
	return b, nil
}

func readHeader(ctx context.Context, tr Transport, id string) (*archive.Header, []byte, error) {
	b, err := getObject(ctx, tr, id+"/"+archive.HeaderObject, 64<<10)
	if err != nil {
		return nil, nil, missingIsIntegrity(err)
	}
	h, err := parseHeader(id, b)
	if err != nil {
		return nil, nil, err
	}
	return h, b, nil
}

func parseHeader(id string, b []byte) (*archive.Header, error) {
	h, err := archive.ParseHeader(b)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", id, archive.HeaderObject, err)
	}
	if h.ID != id {
		return nil, fmt.Errorf("%s/%s: names shipment %s: %w", id, archive.HeaderObject, h.ID, archive.ErrIntegrity)
	}
	return h, nil
}

// readListedHeader is readHeader for choosing among shipments (list,
// latest, prune): bad says why a header that is missing, damaged or not
// one this coldship reads is no use (the shipment is shown unreadable,
// passed over by latest, left alone by prune), while err is a failure to
// read it at all (a dropped connection, permission denied, an
// interrupt), which must stop the caller: a shipment passed over for what
// was not read would have latest restore an older one, and prune delete
// the base it needs.
func readListedHeader(ctx context.Context, tr Transport, id string) (h *archive.Header, bad, err error) {
	b, err := getObject(ctx, tr, id+"/"+archive.HeaderObject, 64<<10)
	if err != nil {
		if err = missingIsIntegrity(err); errors.Is(err, archive.ErrIntegrity) {
			return nil, err, nil
		}
		return nil, nil, err
	}
	h, bad = parseHeader(id, b)
	return h, bad, nil
}

// missingIsIntegrity turns a missing object of a shipment, or something
// other than an object in its place (a folder), into an integrity error:
// part of the shipment is gone.
func missingIsIntegrity(err error) error {
	if (errors.Is(err, ErrNotFound) || errors.Is(err, ErrNotRegular)) && !errors.Is(err, archive.ErrIntegrity) {
		return fmt.Errorf("%w (%w)", err, archive.ErrIntegrity)
	}
	return err
}

// Shipment is an opened shipment: header, key and manifest authenticated.
type Shipment struct {
	Header    *archive.Header
	Manifest  *archive.Manifest
	Inventory *archive.Inventory
	keys      map[int]*cipher.Key   // by key slot
	baseKeys  []map[int]*cipher.Key // per entry of Manifest.Bases, by key slot
	slot      int                   // the manifest's key slot (and the block table's)
	tr        Transport
	trust     *TrustInfo // its checked signature, if opened with Trusted
	ahead     *readAhead // objects read before they were needed
	pre       *prefetch  // reads begun while the shipment was chosen (Latest)
}

// OpenOption configures OpenShipment.
type OpenOption func(*Shipment)

// Trusted makes OpenShipment use only objects that ti, the checked
// signature of the shipment (CheckSignature, LatestTrusted), vouches for:
// the header, the inventory, the manifest and every key object are
// checked against its statement as they are read, so that an object
// swapped after the signature was checked is refused (ErrUntrusted).
func Trusted(ti *TrustInfo) OpenOption { return func(sh *Shipment) { sh.trust = ti } }

// Trust returns the checked signature the shipment was opened with, or
// nil.
func (sh *Shipment) Trust() *TrustInfo { return sh.trust }

// Limits on the small objects of a shipment, so that a forged one cannot
// make a receiver allocate what it claims. A format 3 manifest holds no
// per-block data.
const (
	maxLegacyObject = 1 << 30
	maxV3Manifest   = 64<<20 + 64<<10
	maxV3Inventory  = 64 << 20
)

// OpenShipment reads the header, the inventory and the manifest of shipment
// id, unwraps its key with identities and authenticates the manifest. In
// format 3 every key object is checked against the manifest's list before
// it is unwrapped (the manifest's own slot right after the manifest
// opens), so that a key object swapped or re-wrapped is an integrity
// failure whoever re-sealed the records. With Trusted, every object it
// reads is also checked against the signed statement.
func OpenShipment(ctx context.Context, tr Transport, id string, identities []age.Identity, opts ...OpenOption) (*Shipment, error) {
	if !archive.ValidID(id) {
		return nil, fmt.Errorf("%q is not a shipment id", id)
	}
	sh := &Shipment{keys: map[int]*cipher.Key{}, tr: tr}
	for _, o := range opts {
		o(sh)
	}
	if sh.trust != nil && sh.trust.Statement.ID != id {
		return nil, fmt.Errorf("open shipment %s: its trust is that of shipment %s", id, sh.trust.Statement.ID)
	}
	md, ahead, ok := sh.pre.take(id)
	sh.pre = nil
	if ok {
		sh.ahead = ahead
	} else {
		sh.ahead = new(readAhead)
		sh.ahead.start(ctx, tr, id)
		var err error
		if md.h, md.hb, md.mb, md.ib, err = readMetadata(ctx, tr, id); err != nil {
			return nil, err
		}
	}
	h, hb, mb, ib := md.h, md.hb, md.mb, md.ib
	inv, err := archive.ParseInventory(ib)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", id, archive.InventoryObject, err)
	}
	slot, err := archive.ManifestKeySlot(mb)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", id, archive.ManifestObject, err)
	}
	sh.Header, sh.Inventory, sh.slot = h, inv, slot
	if err := sh.checkTrusted(map[string][]byte{archive.HeaderObject: hb, archive.InventoryObject: ib, archive.ManifestObject: mb}); err != nil {
		return nil, err
	}
	for name, b := range map[string][]byte{archive.HeaderObject: hb, archive.ManifestObject: mb} {
		if err := inv.Check(name, b); err != nil {
			return nil, fmt.Errorf("%s/%s: %w", id, name, err)
		}
	}
	keyName := archive.KeyObject(slot)
	kb, err := sh.keyObject(ctx, keyName)
	if err != nil {
		return nil, err
	}
	key, err := cipher.UnwrapKey(kb, identities...)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", id, keyName, err)
	}
	if sh.Manifest, err = archive.OpenManifest(mb, key, h, hb); err != nil {
		return nil, fmt.Errorf("%s/%s: %w", id, archive.ManifestObject, err)
	}
	if err := sh.checkKeyObject(keyName, kb); err != nil {
		return nil, err
	}
	sh.keys[slot] = key
	if err := sh.unwrapKeys(ctx, identities); err != nil {
		return nil, err
	}
	return sh, nil
}

// readMetadata reads the header, the manifest and the inventory of
// shipment id together (one round of requests rather than three on a long
// link), each within the limit of format 3; those of an older format,
// whose limits are higher, are read again with them when they need it.
// Errors come in the order of a reader that reads them one after the
// other: the header's first.
func readMetadata(ctx context.Context, tr Transport, id string) (h *archive.Header, hb, mb, ib []byte, err error) {
	var g errgroup.Group
	var herr, merr, ierr error
	g.Go(func() error { h, hb, herr = readHeader(ctx, tr, id); return nil })
	g.Go(func() error { mb, merr = getObject(ctx, tr, id+"/"+archive.ManifestObject, maxV3Manifest); return nil })
	g.Go(func() error {
		ib, ierr = getObject(ctx, tr, id+"/"+archive.InventoryObject, maxV3Inventory)
		return nil
	})
	g.Wait()
	if herr != nil {
		if errors.Is(herr, ErrNotFound) && absent(ctx, tr, id) {
			return nil, nil, nil, nil, fmt.Errorf("no shipment %s at %s: %w", id, tr, ErrNotFound)
		}
		return nil, nil, nil, nil, herr
	}
	if h.Format < archive.FormatV3 {
		if errors.Is(merr, errTooLarge) {
			mb, merr = getObject(ctx, tr, id+"/"+archive.ManifestObject, maxLegacyObject)
		}
		if merr == nil && errors.Is(ierr, errTooLarge) {
			ib, ierr = getObject(ctx, tr, id+"/"+archive.InventoryObject, maxLegacyObject)
		}
	}
	if merr != nil {
		if errors.Is(merr, ErrNotFound) {
			return nil, nil, nil, nil, fmt.Errorf("shipment %s: %w (%w)", id, archive.ErrIncomplete, archive.ErrIntegrity)
		}
		return nil, nil, nil, nil, merr
	}
	if ierr != nil {
		return nil, nil, nil, nil, missingIsIntegrity(ierr)
	}
	return h, hb, mb, ib, nil
}

// absent reports whether the destination holds nothing of shipment id.
func absent(ctx context.Context, tr Transport, id string) bool {
	found := errors.New("found")
	err := tr.List(ctx, id+"/", func(ObjectInfo) error { return found })
	return err == nil
}

// keyObject reads a key object of the shipment and checks it against the
// inventory (so that a damaged key object reads as damage, exit 5, rather
// than as a wrong identity) and, once the manifest is open, against the
// manifest's list (format 3).
func (sh *Shipment) keyObject(ctx context.Context, name string) ([]byte, error) {
	id := sh.Header.ID
	kb, ok := sh.ahead.keyObject(name)
	if !ok {
		var err error
		if kb, err = getObject(ctx, sh.tr, id+"/"+name, archive.MaxKeyObject); err != nil {
			return nil, missingIsIntegrity(err)
		}
	}
	if err := sh.checkTrusted(map[string][]byte{name: kb}); err != nil {
		return nil, err
	}
	if err := sh.Inventory.Check(name, kb); err != nil {
		return nil, fmt.Errorf("%s/%s: %w", id, name, err)
	}
	if sh.Manifest != nil {
		if err := sh.checkKeyObject(name, kb); err != nil {
			return nil, err
		}
	}
	return kb, nil
}

// checkTrusted checks objects just read (by name) against the signed
// statement, when the shipment was opened with Trusted.
func (sh *Shipment) checkTrusted(objects map[string][]byte) error {
	if sh.trust == nil {
		return nil
	}
	for name, b := range objects {
		if err := sh.trust.Check(name, b); err != nil {
			return err
		}
	}
	return nil
}

// checkKeyObject checks a key object against the manifest's list of key
// objects (format 3; earlier formats have none).
func (sh *Shipment) checkKeyObject(name string, b []byte) error {
	m := sh.Manifest
	if m.Format < archive.FormatV3 {
		return nil
	}
	ref, ok := m.KeyObjectRef(name)
	if !ok || ref.Size != int64(len(b)) || ref.BLAKE3 != archive.ObjectDigest(b) {
		return fmt.Errorf("%s/%s: the key object is not the one the manifest lists (swapped or re-wrapped): %w", sh.Header.ID, name, archive.ErrIntegrity)
	}
	return nil
}

// unwrapKeys unwraps the key of every other slot the shipment's segments
// name (a resumed send sealed earlier segments under an earlier slot,
// wrapped for the same recipients) and of every base slot, from this
// shipment's copies of the bases' wrapped keys. The key objects are read
// keysAtOnce at a time (an incremental shipment at the end of a month of
// daily ones has thirty), and unwrapped one after the other.
func (sh *Shipment) unwrapKeys(ctx context.Context, identities []age.Identity) error {
	m, id, inv := sh.Manifest, sh.Header.ID, sh.Inventory.Index()
	var names []string
	var sets []func(*cipher.Key)
	seen := map[int]bool{}
	for _, s := range m.Segments {
		if err := inv.CheckSegment(s); err != nil {
			return fmt.Errorf("%s/%s: %w", id, archive.InventoryObject, err)
		}
		if sh.keys[s.Key] == nil && !seen[s.Key] {
			seen[s.Key] = true
			names = append(names, archive.KeyObject(s.Key))
			sets = append(sets, func(k *cipher.Key) { sh.keys[s.Key] = k })
		}
	}
	sh.baseKeys = make([]map[int]*cipher.Key, len(m.Bases))
	for bi, b := range m.Bases {
		sh.baseKeys[bi] = map[int]*cipher.Key{}
		seen := map[int]bool{}
		for _, s := range b.Segments {
			if err := inv.CheckBaseSegment(b.ID, s); err != nil {
				return fmt.Errorf("%s/%s: %w", id, archive.InventoryObject, err)
			}
			if !seen[s.Key] {
				seen[s.Key] = true
				names = append(names, archive.BaseKeyObject(b.ID, s.Key))
				sets = append(sets, func(k *cipher.Key) { sh.baseKeys[bi][s.Key] = k })
			}
		}
	}
	for len(names) > 0 {
		n := min(keysAtOnce, len(names))
		objs, errs := make([][]byte, n), make([]error, n)
		atonce.Each(n, n, func(i int) error {
			objs[i], errs[i] = sh.keyObject(ctx, names[i])
			return nil
		})
		for i, name := range names[:n] {
			if errs[i] != nil {
				return errs[i]
			}
			k, err := cipher.UnwrapKey(objs[i], identities...)
			if err != nil {
				return fmt.Errorf("%s/%s: %w", id, name, err)
			}
			sets[i](k)
		}
		names, sets = names[n:], sets[n:]
	}
	return nil
}

// keysAtOnce is how many key objects unwrapKeys reads at once.
const keysAtOnce = 16
