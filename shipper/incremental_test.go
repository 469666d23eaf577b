package shipper_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"filippo.io/age"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/local"
)

// drChain sends a 32-block image of 64 KiB blocks with --base latest.
type drChain struct {
	dir, src string
	data     []byte
	id       age.Identity
	tr       *local.Transport
	opts     shipper.SendOptions
	logs     bytes.Buffer
}

func newDRChain(t *testing.T) *drChain {
	c := &drChain{dir: t.TempDir()}
	c.src = filepath.Join(c.dir, "disk.img")
	c.data = make([]byte, 32*64<<10)
	for i := range 32 {
		if i%4 != 3 { // every fourth block stays a hole
			rand.Read(c.data[i*64<<10 : i*64<<10+(i%5+1)*4096])
		}
	}
	f, _ := os.Create(c.src)
	f.Truncate(int64(len(c.data)))
	for i := range 32 {
		if i%4 != 3 {
			f.WriteAt(c.data[i*64<<10:(i+1)*64<<10], int64(i)*64<<10)
		}
	}
	f.Close()
	var rcpt age.Recipient
	c.id, rcpt = newIdentity(t)
	c.tr, _ = local.New(filepath.Join(c.dir, "dest"))
	c.opts = shipper.SendOptions{Recipients: []age.Recipient{rcpt}, BlockSize: 64 << 10, SegmentSize: 256 << 10, Jobs: 2, Streams: 2,
		Compress: true, StateDir: filepath.Join(c.dir, "state"), Dest: "dr", RecipientsID: "r", Base: "latest",
		Log: func(f string, a ...any) { c.logs.WriteString(f + "\n") }}
	return c
}

// rewrite gives blocks new random content in their first page.
func (c *drChain) rewrite(t *testing.T, blocks ...int) {
	f, _ := os.OpenFile(c.src, os.O_WRONLY, 0)
	defer f.Close()
	for _, b := range blocks {
		rand.Read(c.data[b*64<<10 : b*64<<10+4096])
		f.WriteAt(c.data[b*64<<10:b*64<<10+4096], int64(b)*64<<10)
	}
}

func (c *drChain) send(t *testing.T) (*shipper.SendResult, *shipper.Counters) {
	t.Helper()
	c.logs.Reset()
	sources, _ := archive.CollectSources([]string{c.src})
	cnt := new(shipper.Counters)
	c.opts.Counters = cnt
	res, err := shipper.Send(context.Background(), c.tr, sources, c.opts)
	if err != nil {
		t.Fatal(err)
	}
	restore(t, c.tr, res.ID, c.id, c.data)
	return res, cnt
}

func TestIncrementalChainV3(t *testing.T) {
	c := newDRChain(t)
	full, cnt := c.send(t)
	if full.Base != "" || !strings.Contains(full.FullReason, "first run is always full") {
		t.Fatalf("first send: base %q, reason %q", full.Base, full.FullReason)
	}
	allData := cnt.Data.Load()

	c.rewrite(t, 1, 3, 17) // 3 was a hole
	inc, cnt := c.send(t)
	// Blocks 1 and 17 hold 2 and 3 pages, block 3 now one.
	if inc.Base != full.ID || cnt.Data.Load() != 6*4096 || cnt.Unchanged.Load() != allData-5*4096 {
		t.Errorf("incremental: base %q, data %d, unchanged %d (all %d)\n%s", inc.Base, cnt.Data.Load(), cnt.Unchanged.Load(), allData, c.logs.String())
	}

	// Nothing changed: no segment, no data, only the small objects.
	same, cnt := c.send(t)
	if same.Base != inc.ID || cnt.Segments.Load() != 0 || cnt.Data.Load() != 0 || cnt.Shipped.Load() > 8<<10 {
		t.Errorf("unchanged: base %q, %d segments, data %d, shipped %d", same.Base, cnt.Segments.Load(), cnt.Data.Load(), cnt.Shipped.Load())
	}
	bases := 0
	c.tr.List(context.Background(), same.ID+"/bases/", func(oi shipper.ObjectInfo) error { bases++; return nil })
	if bases != 2 {
		t.Errorf("the unchanged shipment copies %d base keys, want those of both earlier shipments", bases)
	}
}

// TestIncrementalFallsBack: a base the DR state cannot vouch for makes a
// full shipment, saying why.
func TestIncrementalFallsBack(t *testing.T) {
	for _, tc := range []struct {
		name, why string
		break_    func(t *testing.T, c *drChain, base string)
	}{
		{"older format", "of an older format", func(t *testing.T, c *drChain, base string) {
			hdrs, _ := filepath.Glob(filepath.Join(c.opts.StateDir, "dr", "*", base+".json"))
			os.WriteFile(hdrs[0], []byte(`{"format":1,"id":"`+base+`","files":[{"name":"disk.img","blocks":"AAAA"}]}`), 0o600)
		}},
		{"block file damaged", "damaged", func(t *testing.T, c *drChain, base string) {
			bl, _ := filepath.Glob(filepath.Join(c.opts.StateDir, "dr", "*", base+".blocks"))
			b, _ := os.ReadFile(bl[0])
			b[40] ^= 1
			os.WriteFile(bl[0], b, 0o600)
		}},
		{"block file gone", "damaged", func(t *testing.T, c *drChain, base string) {
			bl, _ := filepath.Glob(filepath.Join(c.opts.StateDir, "dr", "*", base+".blocks"))
			os.Remove(bl[0])
		}},
		{"segment gone", "missing or of the wrong size", func(t *testing.T, c *drChain, base string) {
			os.Remove(filepath.Join(c.dir, "dest", base, "segments", "00000001"))
		}},
		{"segment damaged, same size", "is not what was sent", func(t *testing.T, c *drChain, base string) {
			flipByte(t, filepath.Join(c.dir, "dest", base, "segments", "00000001"), 300)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newDRChain(t)
			full, _ := c.send(t)
			tc.break_(t, c, full.ID)
			c.rewrite(t, 2)
			res, cnt := c.send(t)
			if res.Base != "" || !strings.Contains(res.FullReason, tc.why) || cnt.Unchanged.Load() != 0 {
				t.Errorf("base %q, reason %q, unchanged %d; want a full shipment because %q", res.Base, res.FullReason, cnt.Unchanged.Load(), tc.why)
			}
			c.rewrite(t, 5)
			if res, _ := c.send(t); res.Base == "" {
				t.Errorf("the send after the fallback is not incremental: %s", res.FullReason)
			}
		})
	}
}

// TestStateSegmentsOutOfOrder: a DR table whose base segments are each
// still the one the destination holds, but listed in another order (which
// the block file's entries index), is not used: the shipment would refer
// to the wrong records and could not be restored.
func TestStateSegmentsOutOfOrder(t *testing.T) {
	c := newDRChain(t)
	rand.Read(c.data) // records of one length: segments of one size
	if err := os.WriteFile(c.src, c.data, 0o600); err != nil {
		t.Fatal(err)
	}
	full, _ := c.send(t)
	hdrs, _ := filepath.Glob(filepath.Join(c.opts.StateDir, "dr", "*", full.ID+".json"))
	if len(hdrs) != 1 {
		t.Fatalf("DR table headers of %s: %v", full.ID, hdrs)
	}
	editJSON(t, hdrs[0], func(tb map[string]any) {
		segs := tb["shipments"].([]any)[0].(map[string]any)["segments"].([]any)
		if len(segs) < 3 || segs[0].(map[string]any)["size"] != segs[1].(map[string]any)["size"] {
			t.Fatalf("the base's segments %v: want several of one size", segs)
		}
		segs[0], segs[1] = segs[1], segs[0]
	})
	c.rewrite(t, 2)
	res, _ := c.send(t) // restores it
	if res.Base != "" || !strings.Contains(res.FullReason, "damaged") {
		t.Errorf("base %q, reason %q; want a full shipment because the DR state is damaged", res.Base, res.FullReason)
	}
}

// TestBaseGoneNamed: receiving or verifying an incremental shipment whose
// base was deleted fails as an integrity error that names the base
// shipment, not only one of its segments.
func TestBaseGoneNamed(t *testing.T) {
	c := newDRChain(t)
	full, _ := c.send(t)
	c.rewrite(t, 2)
	inc, _ := c.send(t)
	if inc.Base != full.ID {
		t.Fatalf("the second send is not incremental on the first: %+v", inc)
	}
	if err := os.RemoveAll(filepath.Join(c.dir, "dest", full.ID, "segments")); err != nil {
		t.Fatal(err)
	}
	sh, err := shipper.OpenShipment(context.Background(), c.tr, inc.ID, []age.Identity{c.id})
	if err != nil {
		t.Fatal(err)
	}
	want := "base shipment " + full.ID + ", which " + inc.ID + " needs"
	_, err = sh.Receive(context.Background(), filepath.Join(c.dir, "out"), shipper.ReceiveOptions{Jobs: 2})
	if !errors.Is(err, archive.ErrIntegrity) || !strings.Contains(fmt.Sprint(err), want) {
		t.Errorf("receive: %v; want an integrity error saying %q", err, want)
	}
	if err := sh.Verify(context.Background(), 2, 2, nil); !errors.Is(err, archive.ErrIntegrity) || !strings.Contains(fmt.Sprint(err), want) {
		t.Errorf("verify: %v; want an integrity error saying %q", err, want)
	}
}

// flipByte flips the bits of byte off of file name, in place.
func flipByte(t *testing.T, name string, off int64) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestBaseSizeOnly: with BaseSizeOnly (--base-check size) nothing of the
// base is read back: a base segment damaged in place goes unnoticed by the
// send (and is found by verify), as the option says.
func TestBaseSizeOnly(t *testing.T) {
	c := newDRChain(t)
	full, _ := c.send(t)
	flipByte(t, filepath.Join(c.dir, "dest", full.ID, "segments", "00000001"), 300)
	c.rewrite(t, 2)
	c.opts.BaseSizeOnly = true
	sources, _ := archive.CollectSources([]string{c.src})
	res, err := shipper.Send(context.Background(), c.tr, sources, c.opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Base != full.ID {
		t.Fatalf("with BaseSizeOnly the send is not incremental: %q", res.FullReason)
	}
	if err := shipper.VerifyInventory(context.Background(), c.tr, res.ID, 0, nil); !errors.Is(err, archive.ErrIntegrity) {
		t.Errorf("key-less verify of the shipment on a damaged base: %v, want an integrity error", err)
	}
}

// baseGoesAway deletes one object at the destination when the send puts
// its header: after the send checked its base, before anything of the new
// shipment is at the destination (a prune run elsewhere, a lifecycle rule,
// a hand).
type baseGoesAway struct {
	shipper.Transport
	victim string
	once   sync.Once
}

func (b *baseGoesAway) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if strings.HasSuffix(name, "/"+archive.HeaderObject) {
		b.once.Do(func() { b.Transport.Delete(ctx, b.victim) })
	}
	return b.Transport.Put(ctx, name, r, size)
}

// TestBaseGoneDuringSend: a base segment that the new shipment refers to
// and that goes away while the send runs makes the send fail as an
// integrity error naming it, with no manifest put (a shipment that cannot
// be restored must not exit 0); the next send is a full one.
func TestBaseGoneDuringSend(t *testing.T) {
	c := newDRChain(t)
	full, _ := c.send(t)
	c.rewrite(t, 2)
	victim := full.ID + "/segments/00000001"
	tr := &baseGoesAway{Transport: c.tr, victim: victim}
	sources, _ := archive.CollectSources([]string{c.src})
	res, err := shipper.Send(context.Background(), tr, sources, c.opts)
	if !errors.Is(err, archive.ErrIntegrity) || !strings.Contains(fmt.Sprint(err), victim) {
		t.Fatalf("send: %+v, %v; want an integrity error naming %s", res, err, victim)
	}
	ships, err := shipper.List(context.Background(), c.tr)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ships {
		if s.ID != full.ID && s.Complete {
			t.Errorf("shipment %s is complete on a base segment that is gone", s.ID)
		}
	}
	res2, _ := c.send(t)
	if res2.Base != "" {
		t.Errorf("the next send is incremental on %s, whose segment is gone", res2.Base)
	}
}

// editJSON rewrites the JSON object in file name with edit.
func editJSON(t *testing.T, name string, edit func(map[string]any)) {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestStaleStateRemoved: what sends killed before their DR table was saved
// left in the pair's folder (an unfinished block file as large as the
// table, a table the index never named) is removed by
// the next send that holds the destination's lock; the tables in use stay.
func TestStaleStateRemoved(t *testing.T) {
	c := newDRChain(t)
	first, _ := c.send(t)
	pairs, _ := filepath.Glob(filepath.Join(c.opts.StateDir, "dr", "*", "index"))
	if len(pairs) != 1 {
		t.Fatalf("DR state pairs: %v", pairs)
	}
	pair := filepath.Dir(pairs[0])
	stale := []string{"20261121T233000Z-3f9a1c2e.blocks.tmp", "20261121T233001Z-3f9a1c2e.blocks", "20261121T233001Z-3f9a1c2e.json"}
	for _, name := range stale {
		if err := os.WriteFile(filepath.Join(pair, name), []byte("left by a killed send"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c.rewrite(t, 2)
	c.send(t) // without the lock: nothing removed
	for _, name := range stale {
		if _, err := os.Stat(filepath.Join(pair, name)); err != nil {
			t.Errorf("a send without the destination's lock removed %s: %v", name, err)
		}
	}
	c.opts.CleanLeftovers = true
	c.rewrite(t, 5)
	res, _ := c.send(t)
	for _, name := range stale {
		if _, err := os.Stat(filepath.Join(pair, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still in the DR state: %v", name, err)
		}
	}
	for _, id := range []string{first.ID, res.ID} {
		for _, ext := range []string{".json", ".blocks"} {
			if _, err := os.Stat(filepath.Join(pair, id+ext)); err != nil {
				t.Errorf("the table of %s: %v", id, err)
			}
		}
	}
	c.rewrite(t, 9)
	if next, _ := c.send(t); next.Base != res.ID {
		t.Errorf("the send after the clean-up is not incremental on %s: base %q, %s", res.ID, next.Base, next.FullReason)
	}
}

// ownGoesAway deletes one object of the shipment being sent just before
// the send lists that shipment's folder, before its manifest: as a prune
// run from another host would (it takes a shipment without a manifest,
// older than a newer complete one, for the leftover of a failed send).
type ownGoesAway struct {
	shipper.Transport
	segment string // the name under the shipment's folder
	id      string // of the shipment being sent, from its header's put
	mu      sync.Mutex
	landed  bool // the segment has been put
	victim  string
}

func (o *ownGoesAway) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if id, ok := strings.CutSuffix(name, "/"+archive.HeaderObject); ok {
		o.mu.Lock()
		o.id = id
		o.mu.Unlock()
	}
	err := o.Transport.Put(ctx, name, r, size)
	o.mu.Lock()
	o.landed = o.landed || (err == nil && o.id != "" && name == o.id+"/"+o.segment)
	o.mu.Unlock()
	return err
}

// List and Stat delete the victim, once it has landed, as the shipment's
// own objects are first looked for.
func (o *ownGoesAway) List(ctx context.Context, prefix string, fn func(shipper.ObjectInfo) error) error {
	o.goAway(ctx, prefix)
	return o.Transport.List(ctx, prefix, fn)
}

func (o *ownGoesAway) Stat(ctx context.Context, name string) (shipper.ObjectInfo, error) {
	o.goAway(ctx, name)
	return o.Transport.Stat(ctx, name)
}

func (o *ownGoesAway) goAway(ctx context.Context, name string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.landed && strings.HasPrefix(name, o.id+"/") && o.victim == "" {
		o.victim = o.id + "/" + o.segment
		o.Transport.Delete(ctx, o.victim)
	}
}

// TestOwnObjectGoneDuringSend: a segment of the shipment being sent that
// goes away before its manifest is put makes the send fail as an integrity
// error naming it, with no complete shipment left (a fresh send checked
// only its bases); the next send ships a complete, restorable one.
func TestOwnObjectGoneDuringSend(t *testing.T) {
	for _, base := range []string{"", "latest"} {
		t.Run("base="+base, func(t *testing.T) {
			c := newDRChain(t)
			c.opts.Base = base
			if base != "" {
				c.send(t)
				c.rewrite(t, 2, 9)
			}
			tr := &ownGoesAway{Transport: c.tr, segment: "segments/00000001"}
			sources, _ := archive.CollectSources([]string{c.src})
			res, err := shipper.Send(context.Background(), tr, sources, c.opts)
			if !errors.Is(err, archive.ErrIntegrity) || tr.victim == "" || !strings.Contains(fmt.Sprint(err), tr.victim) {
				t.Fatalf("send: %+v, %v; want an integrity error naming %s", res, err, tr.victim)
			}
			ships, err := shipper.List(context.Background(), c.tr)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range ships {
				if s.Complete && strings.HasPrefix(tr.victim, s.ID+"/") {
					t.Errorf("shipment %s is complete without %s", s.ID, tr.victim)
				}
			}
			c.send(t) // restores it and compares
		})
	}
}

// TestDRStatePerLabel: two VMs whose images have the same file name
// (a/disk.img, b/disk.img), sent to one destination under their own
// labels, each build on their own last shipment: with one DR state for
// both, each send took the other VM's last shipment for its base and
// shipped everything again.
func TestDRStatePerLabel(t *testing.T) {
	a, b := newDRChain(t), newDRChain(t)
	b.tr, b.id, b.opts.Recipients, b.opts.StateDir = a.tr, a.id, a.opts.Recipients, a.opts.StateDir
	a.opts.Label, b.opts.Label = "a", "b"
	a1, _ := a.send(t)
	if b1, _ := b.send(t); b1.Base != "" {
		t.Fatalf("b's first send built on %s, another label's shipment", b1.Base)
	}
	a2, cnt := a.send(t)
	if a2.Base != a1.ID || cnt.Data.Load() != 0 {
		t.Errorf("a's second send, unchanged: base %q (want a's %s), %d bytes of data shipped\n%s", a2.Base, a1.ID, cnt.Data.Load(), a.logs.String())
	}
}

// TestDRStateBeforeLabels: the state an earlier coldship kept for both
// series together (one folder for the sources' names, whatever the label)
// still serves each: a labelled series without a state of its own builds
// on its newest shipment there, not on the other series' newer one.
func TestDRStateBeforeLabels(t *testing.T) {
	a, b := newDRChain(t), newDRChain(t)
	b.tr, b.id, b.opts.Recipients, b.opts.StateDir = a.tr, a.id, a.opts.Recipients, a.opts.StateDir
	a.opts.Label, b.opts.Label = "a", "b"
	a1, _ := a.send(t)
	b1, _ := b.send(t)
	// Lay both out as one state, as an earlier coldship kept it.
	sources := func(c *drChain) []archive.Source {
		s, _ := archive.CollectSources([]string{c.src})
		return s
	}
	former := shipper.DRStateDir(a.opts.StateDir, a.opts.Dest, sources(a), "")
	if err := os.MkdirAll(former, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*drChain{a, b} {
		dir := shipper.DRStateDir(c.opts.StateDir, c.opts.Dest, sources(c), c.opts.Label)
		files, _ := filepath.Glob(filepath.Join(dir, "*.*"))
		for _, f := range files {
			if err := os.Rename(f, filepath.Join(former, filepath.Base(f))); err != nil {
				t.Fatal(err)
			}
		}
		os.RemoveAll(dir)
	}
	if err := os.WriteFile(filepath.Join(former, "index"), []byte(a1.ID+"\n"+b1.ID+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a2, cnt := a.send(t)
	if a2.Base != a1.ID || cnt.Data.Load() != 0 {
		t.Errorf("a's send after the upgrade: base %q (want a's %s), %d bytes of data shipped\n%s", a2.Base, a1.ID, cnt.Data.Load(), a.logs.String())
	}
	if b2, _ := b.send(t); b2.Base != b1.ID {
		t.Errorf("b's send after the upgrade: base %q, want b's %s\n%s", b2.Base, b1.ID, b.logs.String())
	}
}
