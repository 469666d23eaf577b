package shipper_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"filippo.io/age"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper"
)

// deleteLog records the objects deleted, in order.
type deleteLog struct {
	shipper.Transport
	mu      sync.Mutex
	deleted []string
}

func (d *deleteLog) Delete(ctx context.Context, name string) error {
	d.mu.Lock()
	d.deleted = append(d.deleted, name)
	d.mu.Unlock()
	return d.Transport.Delete(ctx, name)
}

// TestDeleteShipmentOrder: a shipment's manifest goes first and its
// inventory second (what is left is never taken for complete), its header
// last, and everything of it goes (the segments and keys in between, many
// at once); nothing of another shipment is touched.
func TestDeleteShipmentOrder(t *testing.T) {
	s := newSetup(t, 40*64<<10)
	var ids []string
	for range 2 {
		res, err := shipper.Send(context.Background(), s.base, s.sources, shipper.SendOptions{
			Recipients: []age.Recipient{s.rcpt}, BlockSize: 64 << 10, SegmentSize: 128 << 10, Streams: 2,
		})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.ID)
	}
	count := func(id string) int {
		n := 0
		s.base.List(context.Background(), id+"/", func(shipper.ObjectInfo) error { n++; return nil })
		return n
	}
	before := count(ids[0])
	if before < 10 {
		t.Fatalf("the shipment has %d objects, want many segments", before)
	}
	dl := &deleteLog{Transport: s.base}
	if err := shipper.DeleteShipment(context.Background(), dl, ids[0]); err != nil {
		t.Fatal(err)
	}
	d := dl.deleted
	if len(d) != before || d[0] != ids[0]+"/"+archive.ManifestObject || d[1] != ids[0]+"/"+archive.InventoryObject || d[len(d)-1] != ids[0]+"/"+archive.HeaderObject {
		t.Errorf("deleted %d of %d objects, in the order %q", len(d), before, d)
	}
	if n := count(ids[0]); n != 0 {
		t.Errorf("%d objects of the deleted shipment are left", n)
	}
	if _, err := shipper.OpenShipment(context.Background(), s.base, ids[1], []age.Identity{s.id}); err != nil {
		t.Errorf("the other shipment: %v", err)
	}
}

// TestInventoryLost: a complete incremental shipment whose inventory is
// gone is damage: prune, which cannot tell which shipments it needs,
// deletes nothing and says so as an integrity error (as verify and
// receive do), and key-less verify names the inventory, not a missing
// manifest.
func TestInventoryLost(t *testing.T) {
	c := newDRChain(t)
	c.send(t)
	c.rewrite(t, 2)
	inc, _ := c.send(t)
	inv := inc.ID + "/" + archive.InventoryObject
	if err := c.tr.Delete(context.Background(), inv); err != nil {
		t.Fatal(err)
	}
	plan, err := shipper.PlanPrune(context.Background(), c.tr, shipper.PrunePolicy{KeepLast: 1})
	if !errors.Is(err, archive.ErrIntegrity) || !strings.Contains(fmt.Sprint(err), inv) {
		t.Errorf("prune: %v, %v; want an integrity error naming %s", plan, err, inv)
	}
	err = shipper.VerifyInventory(context.Background(), c.tr, inc.ID, 0, nil)
	if !errors.Is(err, archive.ErrIntegrity) || !strings.Contains(fmt.Sprint(err), inv) || errors.Is(err, archive.ErrIncomplete) {
		t.Errorf("verify: %v; want an integrity error naming %s", err, inv)
	}
}
