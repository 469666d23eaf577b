package shipper_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
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
)

// countingTransport counts the objects opened and stated, by name.
type countingTransport struct {
	shipper.Transport
	mu     sync.Mutex
	opened map[string]int
	stated map[string]int
}

func newCounting(tr shipper.Transport) *countingTransport {
	return &countingTransport{Transport: tr, opened: map[string]int{}, stated: map[string]int{}}
}

func (c *countingTransport) Open(ctx context.Context, name string, off, n int64) (io.ReadCloser, error) {
	c.mu.Lock()
	c.opened[name]++
	c.mu.Unlock()
	return c.Transport.Open(ctx, name, off, n)
}

func (c *countingTransport) Stat(ctx context.Context, name string) (shipper.ObjectInfo, error) {
	c.mu.Lock()
	c.stated[name]++
	c.mu.Unlock()
	return c.Transport.Stat(ctx, name)
}

// suffixed counts the names ending in suffix in m.
func (c *countingTransport) suffixed(m map[string]int, suffix string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for name, k := range m {
		if strings.HasSuffix(name, suffix) {
			n += k
		}
	}
	return n
}

// folderLister lists the folders at the root of its transport, as the
// SFTP and S3 transports do.
type folderLister struct{ *countingTransport }

func (f folderLister) ListFolders(ctx context.Context, fn func(string) error) error {
	seen := map[string]bool{}
	return f.List(ctx, "", func(oi shipper.ObjectInfo) error {
		dir, _, ok := strings.Cut(oi.Name, "/")
		if !ok || seen[dir] {
			return nil
		}
		seen[dir] = true
		return fn(dir)
	})
}

// TestLatestNewestFirst: choosing the latest of 40 shipments reads the
// newest window's headers only (not one per shipment), passes over a
// shipment dated ahead, one without its manifest and one whose header does
// not read, and OpenLatest opens the one chosen, whether or not the reads
// it began early were for it; through a listing and through folders.
func TestLatestNewestFirst(t *testing.T) {
	s := newSetup(t, 64<<10)
	now := time.Now()
	var ids []string
	send := func(at time.Time) string {
		res, err := shipper.Send(context.Background(), s.base, s.sources, shipper.SendOptions{
			Recipients: []age.Recipient{s.rcpt}, BlockSize: 64 << 10, Streams: 1, Now: func() time.Time { return at },
		})
		if err != nil {
			t.Fatal(err)
		}
		return res.ID
	}
	for i := range 38 {
		ids = append(ids, send(now.Add(-2*time.Hour+time.Duration(i)*time.Minute)))
	}
	future := send(now.Add(48 * time.Hour))
	destDir := filepath.Join(s.dir, "dest")
	if err := os.Remove(filepath.Join(destDir, ids[37], archive.ManifestObject)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(destDir, ids[36], archive.HeaderObject), []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	want := ids[35]

	for _, folders := range []bool{false, true} {
		t.Run(fmt.Sprintf("folders=%v", folders), func(t *testing.T) {
			ct := newCounting(s.base)
			var tr shipper.Transport = ct
			if folders {
				tr = folderLister{ct}
			}
			var logs []string
			logf := func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) }
			got, err := shipper.Latest(context.Background(), tr, "", now, logf)
			if err != nil || got != want {
				t.Fatalf("Latest = %s, %v; want %s", got, err, want)
			}
			if n := ct.suffixed(ct.opened, "/"+archive.HeaderObject); n > 16 {
				t.Errorf("Latest read %d headers of 39 shipments, want one window (16)", n)
			}
			if n := ct.suffixed(ct.stated, "/"+archive.ManifestObject); folders && n > 16 || !folders && n != 0 {
				t.Errorf("Latest asked %d manifests (folders: %v)", n, folders)
			}
			joined := strings.Join(logs, "\n")
			for _, name := range []string{future, ids[36]} {
				if !strings.Contains(joined, name) {
					t.Errorf("Latest did not name %s as passed over:\n%s", name, joined)
				}
			}
			if strings.Contains(joined, ids[37]) {
				t.Errorf("Latest named the incomplete shipment %s:\n%s", ids[37], joined)
			}

			// The early reads are for ids[37] (the newest not dated
			// ahead), which is not chosen: ids[35] opens all the same.
			got, sh, err := shipper.OpenLatest(context.Background(), tr, nil, "", now, nil, []age.Identity{s.id})
			if err != nil || got != want || sh.Header.ID != want {
				t.Fatalf("OpenLatest = %s, %v; want %s", got, err, want)
			}
		})
	}

	// With the newest shipment pickable, OpenLatest's early reads are the
	// ones it uses: its manifest is read once, and it receives bit-exact.
	ct := newCounting(s.base)
	got, sh, err := shipper.OpenLatest(context.Background(), folderLister{ct}, nil, "", now.Add(72*time.Hour), nil, []age.Identity{s.id})
	if err != nil || got != future {
		t.Fatalf("OpenLatest = %s, %v; want %s", got, err, future)
	}
	if n := ct.opened[future+"/"+archive.ManifestObject]; n != 1 {
		t.Errorf("the chosen shipment's manifest was read %d times, want once", n)
	}
	out := filepath.Join(s.dir, "out")
	if _, err := sh.Receive(context.Background(), out, shipper.ReceiveOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(out, "disk.img")); err != nil || !bytes.Equal(b, s.data) {
		t.Errorf("received image differs (%v)", err)
	}
}

// TestSameSecondOrder: shipments made within one second are ordered by
// the milliseconds of their ids, whatever their kinds. A full shipment
// made after two incremental ones in the same second is the newest: it is
// latest, listed last, and what prune --keep-last 1 keeps (an order by
// chain depth within the second made the last incremental latest and had
// prune delete the newest shipment).
func TestSameSecondOrder(t *testing.T) {
	s := newSetup(t, 64<<10)
	state := t.TempDir()
	sec := time.Now().Add(-time.Hour).Truncate(time.Second)
	send := func(ms int, base string) string {
		res, err := shipper.Send(context.Background(), s.base, s.sources, shipper.SendOptions{
			Recipients: []age.Recipient{s.rcpt}, RecipientsID: "r", BlockSize: 64 << 10, Streams: 1,
			StateDir: state, Dest: "dest", Base: base,
			Now: func() time.Time { return sec.Add(time.Duration(ms) * time.Millisecond) },
		})
		if err != nil {
			t.Fatal(err)
		}
		return res.ID
	}
	first := send(100, "none")
	incr1, incr2 := send(200, "latest"), send(300, "latest")
	full := send(900, "none")
	ships, err := shipper.List(context.Background(), s.base)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, si := range ships {
		order = append(order, si.ID)
	}
	if want := []string{first, incr1, incr2, full}; !slices.Equal(order, want) {
		t.Errorf("List order %v, want %v", order, want)
	}
	if ships[1].Base != first || ships[2].Base != incr1 {
		t.Fatalf("the middle shipments are not incremental on the ones before: %+v", ships)
	}
	if got, err := shipper.Latest(context.Background(), folderLister{newCounting(s.base)}, "", time.Now(), nil); err != nil || got != full {
		t.Errorf("Latest (folders) = %s, %v; want %s", got, err, full)
	}
	if got, err := shipper.Latest(context.Background(), s.base, "", time.Now(), nil); err != nil || got != full {
		t.Errorf("Latest = %s, %v; want %s", got, err, full)
	}
	plan, err := shipper.PlanPrune(context.Background(), s.base, shipper.PrunePolicy{KeepLast: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range plan.Decisions {
		if d.ID == full && d.Delete {
			t.Errorf("prune --keep-last 1 deletes the newest shipment %s: %+v", full, plan.Decisions)
		}
	}
}
