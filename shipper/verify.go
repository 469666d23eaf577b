package shipper

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/zeebo/blake3"

	"github.com/coldship/coldship/archive"
)

// VerifyInventory checks, without any key, that every object listed in the
// shipment's inventory is present with its recorded size and BLAKE3 digest, and
// that the manifest is there. For an incremental shipment that includes the
// objects of its bases that it needs.
func VerifyInventory(ctx context.Context, tr Transport, id string, cnt *Counters) error {
	if cnt == nil {
		cnt = new(Counters)
	}
	if _, _, err := readHeader(ctx, tr, id); err != nil {
		return err
	}
	ib, err := getObject(ctx, tr, id+"/"+archive.InventoryObject, 1<<30)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("shipment %s: %w (%w)", id, archive.ErrIncomplete, archive.ErrIntegrity)
		}
		return err
	}
	inv, err := archive.ParseInventory(ib)
	if err != nil {
		return fmt.Errorf("%s/%s: %w", id, archive.InventoryObject, err)
	}
	hasManifest := false
	for _, o := range inv.Objects {
		cnt.Total.Add(o.Size)
		if o.Name == archive.ManifestObject {
			hasManifest = true
		}
	}
	if !hasManifest {
		return fmt.Errorf("%s/%s: does not list the manifest: %w", id, archive.InventoryObject, archive.ErrIntegrity)
	}
	// The objects of the shipment, then those of its bases that it needs.
	type object struct {
		name string
		archive.InventoryEntry
	}
	var objects []object
	for _, o := range inv.Objects {
		objects = append(objects, object{id + "/" + o.Name, o})
	}
	for _, b := range inv.Bases {
		for _, o := range b.Objects {
			cnt.Total.Add(o.Size)
			objects = append(objects, object{b.ID + "/" + o.Name, o})
		}
	}
	for _, o := range objects {
		name := o.name
		if err := CheckName(name); err != nil {
			return fmt.Errorf("%s/%s: %v: %w", id, archive.InventoryObject, err, archive.ErrIntegrity)
		}
		rc, err := tr.Open(ctx, name, 0, -1)
		if err != nil {
			if errors.Is(err, ErrNotFound) && o.Name == archive.ManifestObject {
				return fmt.Errorf("shipment %s: %w (%w)", id, archive.ErrIncomplete, archive.ErrIntegrity)
			}
			return missingIsIntegrity(err)
		}
		h := blake3.New()
		n, err := io.Copy(h, rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
		cnt.Done.Add(n)
		cnt.Shipped.Add(n)
		var d archive.Digest
		h.Sum(d[:0])
		if n != o.Size || d != o.BLAKE3 {
			return fmt.Errorf("%s: size or digest does not match the inventory: %w", name, archive.ErrIntegrity)
		}
	}
	return nil
}
