package shipper_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/local"
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

// withUploads is a transport with unfinished uploads (as S3's multipart
// uploads), recording those aborted.
type withUploads struct {
	shipper.Transport
	uploads []shipper.Upload
	aborted []string
}

func (w *withUploads) Uploads(ctx context.Context, prefix string, fn func(shipper.Upload) error) error {
	for _, u := range w.uploads {
		if strings.HasPrefix(u.Name, prefix) {
			if err := fn(u); err != nil {
				return err
			}
		}
	}
	return nil
}

func (w *withUploads) AbortUpload(ctx context.Context, u shipper.Upload) error {
	w.aborted = append(w.aborted, u.Name)
	return nil
}

// TestPruneLeavesOtherLabelsUploads: prune --name LABEL leaves the
// shipments of other labels alone, but aborted the unfinished uploads of
// one older than the label's newest complete shipment: another series'
// send still running at the destination (begun before the label's last
// send ended), which then failed. Those of the label's own abandoned
// sends are still aborted.
func TestPruneLeavesOtherLabelsUploads(t *testing.T) {
	ctx := context.Background()
	ident, _ := age.GenerateX25519Identity()
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	os.WriteFile(src, []byte("a small image"), 0o644)
	sources, _ := archive.CollectSources([]string{src})
	base, err := local.New(filepath.Join(dir, "dest"))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 22, 1, 0, 0, 0, time.UTC)
	send := func(label string, h int) string {
		res, err := shipper.Send(ctx, base, sources, shipper.SendOptions{
			Recipients: []age.Recipient{ident.Recipient()}, Label: label, NoResume: true,
			Now: func() time.Time { return at.Add(time.Duration(h) * time.Hour) },
		})
		if err != nil {
			t.Fatal(err)
		}
		return res.ID
	}
	web1, db, abandoned, web2 := send("web01", 0), send("db01", 1), send("web01", 2), send("web01", 3)
	// db01's send, still running: its header is there, its manifest not
	// yet, a segment is going up. web01's abandoned send: the same.
	for _, id := range []string{db, abandoned} {
		if err := base.Delete(ctx, id+"/"+archive.ManifestObject); err != nil {
			t.Fatal(err)
		}
	}
	started := at.Add(4 * time.Hour)
	tr := &withUploads{Transport: base, uploads: []shipper.Upload{
		{Name: db + "/segments/00000099", ID: "db", Initiated: started.Add(-time.Hour)},
		{Name: abandoned + "/segments/00000099", ID: "abandoned", Initiated: started.Add(-time.Hour)},
	}}
	plan, err := shipper.PlanPrune(ctx, tr, shipper.PrunePolicy{KeepLast: 1, Label: "web01", Now: started})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range plan.Decisions {
		if d.Delete != (d.ID == web1 || d.ID == abandoned) {
			t.Errorf("%s: delete=%v (%v)", d.ID, d.Delete, d.Reasons)
		}
	}
	if d := plan.Decisions[slices.IndexFunc(plan.Decisions, func(d shipper.PruneDecision) bool { return d.ID == web2 })]; d.Delete {
		t.Errorf("the newest %s is deleted", web2)
	}
	if _, err := plan.AbortLeftoverUploads(ctx, tr, started, nil); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(tr.aborted, db+"/segments/00000099") {
		t.Errorf("prune --name web01 aborted the upload of a db01 send into %s", db)
	}
	if !slices.Contains(tr.aborted, abandoned+"/segments/00000099") {
		t.Errorf("prune --name web01 left the upload of its abandoned send into %s: aborted %v", abandoned, tr.aborted)
	}
}
