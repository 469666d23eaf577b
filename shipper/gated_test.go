package shipper_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"filippo.io/age"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/local"
)

// gating is a Transport with PutGated, as SFTP has: it reads the object
// first, as SFTP writes and syncs its temporary, and records when each
// object landed. failInventory fails the inventory's put.
type gating struct {
	shipper.Transport
	failInventory bool
	mu            sync.Mutex
	landed        []string // base names, in the order they landed
	gated         []string // what had landed when PutGated's ready was asked
}

func (g *gating) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if g.failInventory && strings.HasSuffix(name, "/"+archive.InventoryObject) {
		io.Copy(io.Discard, r)
		return errDropped
	}
	if err := g.Transport.Put(ctx, name, r, size); err != nil {
		return err
	}
	g.mu.Lock()
	g.landed = append(g.landed, filepath.Base(name))
	g.mu.Unlock()
	return nil
}

func (g *gating) PutGated(ctx context.Context, name string, r io.Reader, size int64, ready func() error) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if err := ready(); err != nil {
		return err
	}
	g.mu.Lock()
	g.gated = append([]string(nil), g.landed...)
	g.mu.Unlock()
	return g.Put(ctx, name, bytes.NewReader(b), int64(len(b)))
}

// TestManifestGated sends through a transport that writes the manifest
// ahead and names it only once ready: ready is asked once the block table
// and the inventory have landed, and the manifest lands last; when the
// inventory's put fails, the send fails and no manifest appears.
func TestManifestGated(t *testing.T) {
	s := newSetup(t, 10*64<<10)
	dir, data, sources, id, base := s.dir, s.data, s.sources, s.id, s.base
	opts := shipper.SendOptions{Recipients: []age.Recipient{s.rcpt}, BlockSize: 64 << 10, SegmentSize: 128 << 10, Streams: 2}

	g := &gating{Transport: base}
	res, err := shipper.Send(context.Background(), g, sources, opts)
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	has := func(names []string, n string) bool {
		for _, x := range names {
			if x == n {
				return true
			}
		}
		return false
	}
	if !has(g.gated, archive.BlocksObject) || !has(g.gated, archive.InventoryObject) || has(g.gated, archive.ManifestObject) {
		t.Errorf("when the manifest asked to be named, these had landed: %v; want the block table and the inventory", g.gated)
	}
	if last := g.landed[len(g.landed)-1]; last != archive.ManifestObject {
		t.Errorf("landed in the order %v: want the manifest last", g.landed)
	}
	restore(t, base, res.ID, id, data)

	base2, _ := local.New(filepath.Join(dir, "dest2"))
	g2 := &gating{Transport: base2, failInventory: true}
	opts.Retries = 0
	res2, err := shipper.Send(context.Background(), g2, sources, opts)
	if !errors.Is(err, errDropped) {
		t.Fatalf("send with the inventory's put failing: %v, %v; want the put's error", res2, err)
	}
	base2.List(context.Background(), "", func(o shipper.ObjectInfo) error {
		if filepath.Base(o.Name) == archive.ManifestObject {
			t.Errorf("a manifest landed although the inventory did not: %s", o.Name)
		}
		return nil
	})
}
