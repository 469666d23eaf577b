package shipper_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/shipper"
)

// TestOpenTrusted: OpenShipment with Trusted uses only objects the signed
// statement lists, as they are read: an object swapped after the
// signature was checked is refused as untrusted, even one that the
// key-less bindings would let through or report otherwise.
func TestOpenTrusted(t *testing.T) {
	f := newSigningFixture(t)
	ctx := context.Background()
	now := time.Now()
	id := f.send(t, "", now.Add(-time.Hour))
	f.sign(t, id)
	other := f.send(t, "", now.Add(-time.Minute))
	ids := []age.Identity{f.identity}
	ti, err := shipper.CheckSignature(ctx, f.tr, id, f.trusted, now)
	if err != nil {
		t.Fatal(err)
	}
	sh, err := shipper.OpenShipment(ctx, f.tr, id, ids, shipper.Trusted(ti))
	if err != nil || sh.Trust() != ti {
		t.Fatalf("open with its own trust: %v", err)
	}
	if _, err := shipper.OpenShipment(ctx, f.tr, other, ids, shipper.Trusted(ti)); err == nil {
		t.Fatal("opened a shipment with another shipment's trust")
	}

	// The key slot re-wrapped after the check: the same key, other bytes.
	slot := filepath.Join(f.dest, id, "keys", "0000")
	k, err := cipher.UnwrapKey(mustRead(t, slot), f.identity)
	if err != nil {
		t.Fatal(err)
	}
	rewrapped, _ := k.Wrap(f.rcpt)
	os.WriteFile(slot, rewrapped, 0o644)
	_, err = shipper.OpenShipment(ctx, f.tr, id, ids, shipper.Trusted(ti))
	if !errors.Is(err, shipper.ErrUntrusted) || !strings.Contains(err.Error(), "keys/0000 differs") {
		t.Fatalf("a key slot swapped after the check: %v, want untrusted naming keys/0000", err)
	}
	// And the inventory made to match it: the key-less bindings still
	// catch it (the manifest lists its key objects), as an integrity
	// failure; with trust, the inventory is already not the signed one.
	replaceInInventory(t, f.dest, id, "keys/0000", rewrapped)
	if _, err := shipper.OpenShipment(ctx, f.tr, id, ids, shipper.Trusted(ti)); !errors.Is(err, shipper.ErrUntrusted) {
		t.Fatalf("the inventory swapped after the check: %v", err)
	}
	if _, err := shipper.OpenShipment(ctx, f.tr, id, ids); !errors.Is(err, archive.ErrIntegrity) || errors.Is(err, shipper.ErrUntrusted) {
		t.Fatalf("without trust, the manifest's key binding: %v", err)
	}
}

// replaceInInventory records object name of shipment id with b's size and
// BLAKE3 in its inventory, as an attacker would.
func replaceInInventory(t *testing.T, dest, id, name string, b []byte) {
	t.Helper()
	p := filepath.Join(dest, id, archive.InventoryObject)
	inv, err := archive.ParseInventory(mustRead(t, p))
	if err != nil {
		t.Fatal(err)
	}
	for i := range inv.Objects {
		if inv.Objects[i].Name == name {
			inv.Objects[i].Size, inv.Objects[i].BLAKE3 = int64(len(b)), archive.ObjectDigest(b)
		}
	}
	ib, err := inv.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p, ib, 0o644)
}

func TestCheckNotOlder(t *testing.T) {
	restored := "20261122T010000Z-1f4abcde" // 500 ms past the second
	for next, ok := range map[string]bool{
		restored:                    true,
		"20261122T010000Z-1f4fffff": true,  // the same millisecond
		"20261122T010000Z-1f5aaaaa": true,  // a millisecond later
		"20261122T010001Z-00000000": true,  // a second later
		"20261122T010000Z-1f3fffff": false, // a millisecond earlier
		"20261121T235959Z-3e7fffff": false,
	} {
		err := shipper.CheckNotOlder(restored, next)
		if (err == nil) != ok || err != nil && (!errors.Is(err, shipper.ErrRollback) || !errors.Is(err, archive.ErrIntegrity) ||
			!strings.Contains(err.Error(), next) || !strings.Contains(err.Error(), restored)) {
			t.Errorf("%s after %s: %v, want ok=%v", next, restored, err, ok)
		}
	}
}
