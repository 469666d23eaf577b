package shipper_test

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"

	"filippo.io/age"

	"github.com/coldship/coldship/shipper"
)

// lateStreams is a transport whose streams beyond the first come up only
// once the first has put three segments; it notes how many segment puts
// ran at once before that.
type lateStreams struct {
	shipper.Transport
	up      chan struct{}
	mu      sync.Mutex
	putting int
	done    int
	maxLate int // most segment puts at once before the others came up
	waited  int // writers that waited
}

func (l *lateStreams) WaitStreams(ctx context.Context, n int) error {
	if n <= 1 {
		return nil
	}
	l.mu.Lock()
	l.waited++
	l.mu.Unlock()
	select {
	case <-l.up:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *lateStreams) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	seg := strings.Contains(name, "/segments/")
	if seg {
		l.mu.Lock()
		l.putting++
		select {
		case <-l.up:
		default:
			l.maxLate = max(l.maxLate, l.putting)
		}
		l.mu.Unlock()
	}
	err := l.Transport.Put(ctx, name, r, size)
	if seg {
		l.mu.Lock()
		l.putting--
		if l.done++; l.done == 3 {
			close(l.up)
		}
		l.mu.Unlock()
	}
	return err
}

// TestWritersWaitForTheirStreams: while the transport's streams are being
// made, the segment writers beyond the streams that are up take no data
// (which they would hold, waiting, while the reader's window of batches,
// shared by all, ran dry for the streams that are up); once they are up,
// every writer works, and the shipment restores.
func TestWritersWaitForTheirStreams(t *testing.T) {
	s := newSetup(t, 16<<20)
	tr := &lateStreams{Transport: s.base, up: make(chan struct{})}
	res, err := shipper.Send(context.Background(), tr, s.sources, shipper.SendOptions{
		Recipients: []age.Recipient{s.rcpt}, BlockSize: 64 << 10, SegmentSize: 256 << 10, Jobs: 2, Streams: 4,
	})
	if err != nil {
		t.Fatal(err)
	}
	// One writer has at most two segments under way: one it writes, one
	// the transport completes.
	if tr.maxLate > 2 || tr.waited != 3 {
		t.Errorf("%d segment puts at once before the streams came up, %d writers waited; want at most 2 and 3", tr.maxLate, tr.waited)
	}
	restore(t, s.base, res.ID, s.id, s.data)
}
