package shipper_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper"
)

// aheadProbe holds the manifest's read until the key object of slot 0 and
// the block table have been asked for (or 10 s have passed: late).
type aheadProbe struct {
	shipper.Transport
	key0, table  chan struct{}
	onceK, onceT sync.Once
	late         atomic.Bool
}

func (p *aheadProbe) Open(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	switch {
	case strings.HasSuffix(name, "/"+archive.KeyObject(0)):
		p.onceK.Do(func() { close(p.key0) })
	case strings.HasSuffix(name, "/"+archive.BlocksObject):
		p.onceT.Do(func() { close(p.table) })
	case strings.HasSuffix(name, "/"+archive.ManifestObject):
		deadline := time.Now().Add(10 * time.Second)
		for _, ch := range []chan struct{}{p.key0, p.table} {
			select {
			case <-ch:
			case <-time.After(time.Until(deadline)):
				p.late.Store(true)
			}
		}
	}
	return p.Transport.Open(ctx, name, offset, length)
}

// TestReadAhead checks that opening a shipment asks for its key object and
// its block table while the manifest is still being read (on a long link,
// a round of requests earlier), and that the receive built on them is
// bit-exact.
func TestReadAhead(t *testing.T) {
	s := newSetup(t, 12*64<<10)
	dir, data, sources, id, rcpt, base := s.dir, s.data, s.sources, s.id, s.rcpt, s.base
	res, err := shipper.Send(context.Background(), base, sources, shipper.SendOptions{
		Recipients: []age.Recipient{rcpt}, BlockSize: 64 << 10, SegmentSize: 256 << 10, Streams: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	p := &aheadProbe{Transport: base, key0: make(chan struct{}), table: make(chan struct{})}
	sh, err := shipper.OpenShipment(context.Background(), p, res.ID, []age.Identity{id})
	if err != nil {
		t.Fatal(err)
	}
	if p.late.Load() {
		t.Error("the key object and the block table were asked for only after the manifest was read")
	}
	out := filepath.Join(dir, "out")
	if _, err := sh.Receive(context.Background(), out, shipper.ReceiveOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(out, "disk.img")); err != nil || !bytes.Equal(got, data) {
		t.Errorf("received image differs (%v)", err)
	}
}
