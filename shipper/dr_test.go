package shipper_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/local"
	"github.com/coldship/coldship/shipper/shippertest"
)

func TestLimitBandwidthConformance(t *testing.T) {
	shippertest.Run(t, func(t *testing.T) shipper.Transport {
		tr, err := local.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return shipper.LimitBandwidth(tr, 1<<30)
	})
}

// openLog records the reads a receiver makes.
type openLog struct {
	shipper.Transport
	mu    sync.Mutex
	reads map[string]int64 // object -> bytes asked for
}

func (o *openLog) Open(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	o.mu.Lock()
	if length < 0 {
		if oi, err := o.Transport.Stat(ctx, name); err == nil {
			length = oi.Size - offset
		}
	}
	o.reads[name] += length
	o.mu.Unlock()
	return o.Transport.Open(ctx, name, offset, length)
}

// TestIntoFetchesOnlyChangedRecords updates a restore across two
// incremental shipments: the few records needed from the middle shipment
// come by ranged reads, and the full base is not read at all.
func TestIntoFetchesOnlyChangedRecords(t *testing.T) {
	ctx := context.Background()
	ident, _ := age.GenerateX25519Identity()
	dir := t.TempDir()
	src := filepath.Join(dir, "src", "disk.img")
	os.MkdirAll(filepath.Dir(src), 0o755)
	const bs = 64 << 10
	img := make([]byte, 256*bs)
	rand.Read(img)
	os.WriteFile(src, img, 0o644)
	tr, _ := local.New(filepath.Join(dir, "dest"))
	state := filepath.Join(dir, "state")
	send := func() string {
		sources, err := archive.CollectSources([]string{src})
		if err != nil {
			t.Fatal(err)
		}
		res, err := shipper.Send(ctx, tr, sources, shipper.SendOptions{
			Recipients: []age.Recipient{ident.Recipient()}, RecipientsID: "r", BlockSize: bs, StateDir: state,
			Dest: "dest", Base: "latest", Streams: 1, SegmentSize: 64 * bs,
		})
		if err != nil {
			t.Fatal(err)
		}
		return res.ID
	}
	rewrite := func(blocks ...int) {
		for _, b := range blocks {
			rand.Read(img[b*bs : (b+1)*bs])
		}
		os.WriteFile(src, img, 0o644)
	}
	full := send()
	rewrite(1, 100, 200) // the middle shipment: 3 records
	mid := send()
	rewrite(2, 3) // the newest: 2 more
	newest := send()

	out := filepath.Join(dir, "out")
	open := func(id string) *shipper.Shipment {
		sh, err := shipper.OpenShipment(ctx, tr, id, []age.Identity{ident})
		if err != nil {
			t.Fatal(err)
		}
		return sh
	}
	if _, err := open(full).Receive(ctx, out, shipper.ReceiveOptions{}); err != nil {
		t.Fatal(err)
	}
	log := &openLog{Transport: tr, reads: map[string]int64{}}
	sh, err := shipper.OpenShipment(ctx, log, newest, []age.Identity{ident})
	if err != nil {
		t.Fatal(err)
	}
	// Ids made within one second sort by their random part: compare as a set.
	if got := sh.Manifest.BaseIDs(); len(got) != 2 || !(got[0] == full && got[1] == mid || got[0] == mid && got[1] == full) {
		t.Errorf("bases of the newest shipment: %v, want [%s %s]", got, full, mid)
	}
	log.reads = map[string]int64{}
	res, err := sh.ReceiveInto(ctx, out, shipper.ReceiveOptions{Jobs: 2})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(out, "disk.img"))
	if !bytes.Equal(got, img) {
		t.Fatal("updated restore differs from the source")
	}
	if res.Written != 5*bs {
		t.Errorf("wrote %d bytes, want the 5 blocks that changed", res.Written)
	}
	var total int64
	for name, n := range log.reads {
		total += n
		if strings.HasPrefix(name, full+"/") {
			t.Errorf("read %d bytes of %s, which holds nothing that changed", n, name)
		}
	}
	if max := int64(5*bs + 5*4096); total > max {
		t.Errorf("fetched %d bytes to write 5 blocks: %v", total, log.reads)
	}
}

// TestPlanPruneDailyWeekly keeps the newest shipment of each day and week.
func TestPlanPruneDailyWeekly(t *testing.T) {
	ctx := context.Background()
	ident, _ := age.GenerateX25519Identity()
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	os.WriteFile(src, []byte("a small image"), 0o644)
	sources, _ := archive.CollectSources([]string{src})
	tr, _ := local.New(filepath.Join(dir, "dest"))
	day := func(d, h int) time.Time { return time.Date(2026, 11, d, h, 0, 0, 0, time.UTC) }
	// Mon 16 .. Sun 22 November 2026 is ISO week 47; 9 .. 15 is week 46.
	times := []time.Time{day(9, 1), day(10, 1), day(16, 1), day(16, 13), day(20, 1), day(21, 1), day(21, 23)}
	ids := map[time.Time]string{}
	for _, at := range times {
		res, err := shipper.Send(ctx, tr, sources, shipper.SendOptions{
			Recipients: []age.Recipient{ident.Recipient()}, Now: func() time.Time { return at },
		})
		if err != nil {
			t.Fatal(err)
		}
		ids[at] = res.ID
	}
	for _, tc := range []struct {
		name   string
		policy shipper.PrunePolicy
		keep   []time.Time
	}{
		{"last 2", shipper.PrunePolicy{KeepLast: 2}, []time.Time{day(21, 1), day(21, 23)}},
		{"daily 3", shipper.PrunePolicy{KeepDaily: 3}, []time.Time{day(16, 13), day(20, 1), day(21, 23)}},
		{"weekly 2", shipper.PrunePolicy{KeepWeekly: 2}, []time.Time{day(10, 1), day(21, 23)}},
		// Only 2 weeks have a shipment: the oldest is kept too, as restic does.
		{"last 1, daily 2, weekly 3", shipper.PrunePolicy{KeepLast: 1, KeepDaily: 2, KeepWeekly: 3},
			[]time.Time{day(9, 1), day(10, 1), day(20, 1), day(21, 23)}},
		// -1 is restic's "unlimited": every bucket, no oldest rule.
		{"daily -1", shipper.PrunePolicy{KeepDaily: -1},
			[]time.Time{day(9, 1), day(10, 1), day(16, 13), day(20, 1), day(21, 23)}},
		{"last -1", shipper.PrunePolicy{KeepLast: -1}, times},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.policy.Location = time.UTC
			plan, err := shipper.PlanPrune(ctx, tr, tc.policy)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]bool{}
			for _, at := range tc.keep {
				want[ids[at]] = true
			}
			for _, d := range plan.Decisions {
				if d.Delete == want[d.ID] {
					t.Errorf("%s (%s): delete=%v, %v", d.ID, d.Created, d.Delete, d.Reasons)
				}
			}
		})
	}
	if _, err := shipper.PlanPrune(ctx, tr, shipper.PrunePolicy{}); err == nil {
		t.Error("a policy that keeps nothing was accepted")
	}
}
