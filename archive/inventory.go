package archive

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
)

// Inventory is the plaintext list of a shipment's objects with their sizes
// and BLAKE3 digests. It lets `coldship verify` check a shipment without
// any key; it reveals object names and sizes, nothing else.
type Inventory struct {
	Format  int              `json:"format"`
	ID      string           `json:"id"`
	Objects []InventoryEntry `json:"objects"`
}

// InventoryEntry is one line of an Inventory.
type InventoryEntry struct {
	Name   string `json:"name"` // relative to the shipment folder
	Size   int64  `json:"size"`
	BLAKE3 Digest `json:"blake3"`
}

// Marshal encodes the inventory object.
func (inv *Inventory) Marshal() ([]byte, error) {
	j, err := json.MarshalIndent(inv, "", " ")
	if err != nil {
		return nil, err
	}
	return append(append([]byte(inventoryMagic), j...), '\n'), nil
}

// ParseInventory decodes an inventory object.
func ParseInventory(b []byte) (*Inventory, error) {
	rest, ok := bytes.CutPrefix(b, []byte(inventoryMagic))
	if !ok {
		return nil, fmt.Errorf("inventory: not a coldship inventory: %w", ErrIntegrity)
	}
	var inv Inventory
	dec := json.NewDecoder(bytes.NewReader(rest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&inv); err != nil {
		return nil, fmt.Errorf("inventory: %v: %w", err, ErrIntegrity)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("inventory: trailing data: %w", ErrIntegrity)
	}
	if inv.Format != FormatVersion || !ValidID(inv.ID) {
		return nil, fmt.Errorf("inventory: bad format or id: %w", ErrIntegrity)
	}
	for _, o := range inv.Objects {
		if o.Size < 0 || o.Name == "" || o.Name == InventoryObject {
			return nil, fmt.Errorf("inventory: bad entry %q: %w", o.Name, ErrIntegrity)
		}
	}
	return &inv, nil
}

// Check reports whether object name with content b matches its entry.
func (inv *Inventory) Check(name string, b []byte) error {
	for _, o := range inv.Objects {
		if o.Name == name {
			if o.Size != int64(len(b)) || o.BLAKE3 != ObjectDigest(b) {
				return fmt.Errorf("content does not match the inventory: %w", ErrIntegrity)
			}
			return nil
		}
	}
	return fmt.Errorf("not in the inventory: %w", ErrIntegrity)
}

// CheckSegment reports whether the inventory agrees with a manifest's
// record of a segment.
func (inv *Inventory) CheckSegment(s Segment) error {
	for _, o := range inv.Objects {
		if o.Name == s.Name {
			if o.Size != s.Size || o.BLAKE3 != s.BLAKE3 {
				return fmt.Errorf("entry of %s differs from the manifest: %w", s.Name, ErrIntegrity)
			}
			return nil
		}
	}
	return fmt.Errorf("%s is missing: %w", s.Name, ErrIntegrity)
}
