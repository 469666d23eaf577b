package shipper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"filippo.io/age"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
)

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
	byID := map[string]*ShipmentInfo{}
	err := tr.List(ctx, "", func(oi ObjectInfo) error {
		id, rest, ok := strings.Cut(oi.Name, "/")
		if !ok || !archive.ValidID(id) {
			return nil // not ours
		}
		si := byID[id]
		if si == nil {
			si = &ShipmentInfo{ID: id}
			byID[id] = si
		}
		si.Bytes += oi.Size
		if rest == archive.ManifestObject {
			si.Complete = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", tr, err)
	}
	var out []ShipmentInfo
	for _, si := range byID {
		h, _, err := readHeader(ctx, tr, si.ID)
		if err != nil {
			si.Error = err.Error()
		} else {
			si.Created, si.Label, si.Base = h.Created, h.Label, h.Base
		}
	}
	for _, si := range byID {
		out = append(out, *si)
	}
	// Ids sort by creation time to the second only: within one second, an
	// incremental shipment comes after the chain of its bases.
	depth := map[string]int{}
	for _, si := range out {
		d := 0
		for cur := byID[si.ID]; cur != nil && cur.Base != "" && d <= len(out); cur = byID[cur.Base] {
			d++
		}
		depth[si.ID] = d
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].ID, out[j].ID
		if a[:16] != b[:16] || depth[a] == depth[b] {
			return a < b
		}
		return depth[a] < depth[b]
	})
	return out, nil
}

// Latest returns the id of the newest complete shipment at tr.
func Latest(ctx context.Context, tr Transport) (string, error) {
	ships, err := List(ctx, tr)
	if err != nil {
		return "", err
	}
	for i := len(ships) - 1; i >= 0; i-- {
		if ships[i].Complete {
			return ships[i].ID, nil
		}
	}
	return "", fmt.Errorf("no complete shipment at %s: %w", tr, ErrNotFound)
}

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
		return nil, fmt.Errorf("get %s: larger than %d bytes: %w", name, limit, archive.ErrIntegrity)
	}
	return b, nil
}

func readHeader(ctx context.Context, tr Transport, id string) (*archive.Header, []byte, error) {
	b, err := getObject(ctx, tr, id+"/"+archive.HeaderObject, 64<<10)
	if err != nil {
		return nil, nil, missingIsIntegrity(err)
	}
	h, err := archive.ParseHeader(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s/%s: %w", id, archive.HeaderObject, err)
	}
	if h.ID != id {
		return nil, nil, fmt.Errorf("%s/%s: names shipment %s: %w", id, archive.HeaderObject, h.ID, archive.ErrIntegrity)
	}
	return h, b, nil
}

// missingIsIntegrity turns a missing object of a shipment into an integrity
// error: part of the shipment is gone.
func missingIsIntegrity(err error) error {
	if errors.Is(err, ErrNotFound) && !errors.Is(err, archive.ErrIntegrity) {
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
	tr        Transport
}

// OpenShipment reads the header, the inventory and the manifest of shipment
// id, unwraps its key with identities and authenticates the manifest.
func OpenShipment(ctx context.Context, tr Transport, id string, identities []age.Identity) (*Shipment, error) {
	if !archive.ValidID(id) {
		return nil, fmt.Errorf("%q is not a shipment id", id)
	}
	h, hb, err := readHeader(ctx, tr, id)
	if err != nil {
		return nil, err
	}
	mb, err := getObject(ctx, tr, id+"/"+archive.ManifestObject, 1<<30)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("shipment %s: %w (%w)", id, archive.ErrIncomplete, archive.ErrIntegrity)
		}
		return nil, err
	}
	ib, err := getObject(ctx, tr, id+"/"+archive.InventoryObject, 1<<30)
	if err != nil {
		return nil, missingIsIntegrity(err)
	}
	inv, err := archive.ParseInventory(ib)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", id, archive.InventoryObject, err)
	}
	slot, err := archive.ManifestKeySlot(mb)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", id, archive.ManifestObject, err)
	}
	keyName := archive.KeyObject(slot)
	kb, err := getObject(ctx, tr, id+"/"+keyName, 1<<20)
	if err != nil {
		return nil, missingIsIntegrity(err)
	}
	// The small objects are checked against the inventory before the key is
	// unwrapped, so that a corrupted key object reads as corruption (exit 5)
	// rather than as a wrong identity (exit 4).
	for name, b := range map[string][]byte{archive.HeaderObject: hb, keyName: kb, archive.ManifestObject: mb} {
		if err := inv.Check(name, b); err != nil {
			return nil, fmt.Errorf("%s/%s: %w", id, name, err)
		}
	}
	key, err := cipher.UnwrapKey(kb, identities...)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", id, keyName, err)
	}
	m, err := archive.OpenManifest(mb, key, h, hb)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", id, archive.ManifestObject, err)
	}
	keys := map[int]*cipher.Key{slot: key}
	for _, s := range m.Segments {
		if err := inv.CheckSegment(s); err != nil {
			return nil, fmt.Errorf("%s/%s: %w", id, archive.InventoryObject, err)
		}
		if keys[s.Key] != nil {
			continue
		}
		// A resumed send sealed earlier segments under an earlier key slot,
		// wrapped for the same recipients.
		name := archive.KeyObject(s.Key)
		b, err := getObject(ctx, tr, id+"/"+name, 1<<20)
		if err != nil {
			return nil, missingIsIntegrity(err)
		}
		if err := inv.Check(name, b); err != nil {
			return nil, fmt.Errorf("%s/%s: %w", id, name, err)
		}
		k, err := cipher.UnwrapKey(b, identities...)
		if err != nil {
			return nil, fmt.Errorf("%s/%s: %w", id, name, err)
		}
		keys[s.Key] = k
	}
	// The keys of the bases' records: copies, in this shipment, of the
	// bases' wrapped keys, so that the identities that open this shipment
	// open its bases too.
	baseKeys := make([]map[int]*cipher.Key, len(m.Bases))
	for bi, b := range m.Bases {
		baseKeys[bi] = map[int]*cipher.Key{}
		for _, s := range b.Segments {
			if err := inv.CheckBaseSegment(b.ID, s); err != nil {
				return nil, fmt.Errorf("%s/%s: %w", id, archive.InventoryObject, err)
			}
			if baseKeys[bi][s.Key] != nil {
				continue
			}
			name := archive.BaseKeyObject(b.ID, s.Key)
			kb, err := getObject(ctx, tr, id+"/"+name, 1<<20)
			if err != nil {
				return nil, missingIsIntegrity(err)
			}
			if err := inv.Check(name, kb); err != nil {
				return nil, fmt.Errorf("%s/%s: %w", id, name, err)
			}
			k, err := cipher.UnwrapKey(kb, identities...)
			if err != nil {
				return nil, fmt.Errorf("%s/%s: %w", id, name, err)
			}
			baseKeys[bi][s.Key] = k
		}
	}
	return &Shipment{Header: h, Manifest: m, Inventory: inv, keys: keys, baseKeys: baseKeys, tr: tr}, nil
}
