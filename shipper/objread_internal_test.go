package shipper

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coldship/coldship/archive"
)

// mapTransport serves objects from memory, counts the reads in flight and
// records the ranges opened.
type mapTransport struct {
	Transport
	objs          map[string][]byte
	mu            sync.Mutex
	opens         []string
	running, peak atomic.Int64
	together      int64 // each Open waits (up to 10 s) until this many have been in flight
}

func (m *mapTransport) Open(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	m.mu.Lock()
	m.opens = append(m.opens, fmt.Sprintf("%s %d+%d", name, offset, length))
	m.mu.Unlock()
	r := m.running.Add(1)
	defer m.running.Add(-1)
	for p := m.peak.Load(); r > p && !m.peak.CompareAndSwap(p, r); p = m.peak.Load() {
	}
	for deadline := time.Now().Add(10 * time.Second); m.peak.Load() < m.together && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	b, ok := m.objs[name]
	if !ok {
		return nil, fmt.Errorf("open %s: %w", name, ErrNotFound)
	}
	end := int64(len(b))
	if length >= 0 {
		end = min(end, offset+length)
	}
	offset = min(offset, end)
	return io.NopCloser(bytes.NewReader(b[offset:end])), nil
}

// TestReadObjects: a large segment is read as pieces at once and its
// CRC32C combined from theirs; one that is shorter or longer than its
// entry, or missing, is seen to be; small objects are read whole.
func TestReadObjects(t *testing.T) {
	seg := make([]byte, 5*minPiece+12345)
	rand.Read(seg)
	small := []byte("a small object")
	crcEntry := func(b []byte) archive.InventoryEntry {
		return archive.InventoryEntry{Size: int64(len(b)), CRC32C: archive.CRC32C(b)}
	}
	blakeEntry := func(b []byte) archive.InventoryEntry {
		return archive.InventoryEntry{Size: int64(len(b)), BLAKE3: archive.ObjectDigest(b)}
	}
	tr := &mapTransport{together: 2, objs: map[string][]byte{
		"s/whole": seg, "s/short": seg[:len(seg)-1], "s/long": append(bytes.Clone(seg), 0), "s/small": small,
	}}
	refs := []objectRef{
		{"s/whole", crcEntry(seg)}, {"s/short", crcEntry(seg)}, {"s/long", crcEntry(seg)},
		{"s/small", blakeEntry(small)}, {"s/missing", crcEntry(seg)},
	}
	cnt := new(Counters)
	checks, err := readObjects(context.Background(), tr, refs, 16, cnt)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct {
		size    int64
		matches bool
		missing bool
	}{{int64(len(seg)), true, false}, {int64(len(seg)) - 1, false, false}, {int64(len(seg)) + 1, false, false},
		{int64(len(small)), true, false}, {0, false, true}} {
		c := checks[i]
		if c.size != want.size || (c.sum == wantSum(refs[i].want)) != want.matches || (c.err != nil) != want.missing {
			t.Errorf("%s: size %d, sum %s (entry %s), err %v; want size %d, matching %v, missing %v",
				refs[i].name, c.size, c.sum, wantSum(refs[i].want), c.err, want.size, want.matches, want.missing)
		}
	}
	pieces := 0
	for _, o := range tr.opens {
		if strings.HasPrefix(o, "s/whole ") {
			pieces++
		}
	}
	if pieces < 2 {
		t.Errorf("the large segment was read in %d piece(s): %v", pieces, tr.opens)
	}
	if p := tr.peak.Load(); p < 2 || p > 16 {
		t.Errorf("%d reads at once, want 2 to 16 (streams 16)", p)
	}
	if got, want := cnt.Shipped.Load(), int64(3*len(seg)+len(small)); got != want {
		t.Errorf("counted %d bytes read, want %d", got, want)
	}
}
