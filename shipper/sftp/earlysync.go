package sftp

import (
	"os"
	"sync"

	"github.com/coldship/coldship/shipper"
)

// A transfer's data waits in the server's page cache until the put's
// sync at its end (the kernel starts writing dirty pages out only past a
// share of the server's memory, 10% by default). With many streams,
// whose segments all end together with the shipment, the server then
// writes out what every stream moved at once: a 1 GiB send at 100 ms
// over 32 channels spent its last 1.05 s in those syncs. So each stream
// asks for a sync every so often while it writes, on a second handle to
// its temporary, and what is left to write out at the end stays within
// earlySyncBudget over all streams. A few streams leave little to the end
// anyway (at most twice the budget in default segments): they do not.
const (
	earlySyncBudget = 128 << 20
	minEarlySync    = 4 << 20
)

// earlySyncEvery is how many bytes a transfer writes between early syncs
// when the transport has streams streams; 0: none.
func earlySyncEvery(streams int) int64 {
	if int64(streams)*shipper.DefaultSegmentSize <= 2*earlySyncBudget {
		return 0
	}
	return max(minEarlySync, earlySyncBudget/int64(streams))
}

// earlySync syncs a temporary being written, every interval bytes, on its
// own handle and goroutine, so that the writes go on meanwhile. It is an
// optimisation only: the put's own sync at the end is what makes the
// object durable, so an early sync that fails is not reported, and ends
// the early syncs of that put.
type earlySync struct {
	c        *conn
	tmp      string
	interval int64
	next     int64         // the source offset of the next sync
	kicks    chan struct{} // nil until the first sync
	once     sync.Once
}

func newEarlySync(c *conn, tmp string, interval int64) *earlySync {
	return &earlySync{c: c, tmp: tmp, interval: interval, next: interval}
}

// read notes that the source has yielded n bytes in all. It is called by
// one goroutine, the one that reads the source, and never blocks.
func (e *earlySync) read(n int64) {
	if e == nil || n < e.next {
		return
	}
	e.next = n + e.interval
	if e.kicks == nil {
		e.kicks = make(chan struct{}, 1)
		go e.run(e.kicks)
	}
	select {
	case e.kicks <- struct{}{}:
	default: // a sync is waiting to start: it covers these bytes too
	}
}

// run opens the second handle and syncs it once per kick until stop.
func (e *earlySync) run(kicks <-chan struct{}) {
	f, err := e.c.sftp.OpenFile(e.tmp, os.O_WRONLY)
	if err != nil {
		for range kicks {
		}
		return
	}
	defer f.Close()
	for range kicks {
		if err == nil {
			err = f.Sync()
		}
	}
}

// stop ends the early syncs once the source is read: the put's own sync
// follows (a sync still under way ends first, the server answering a
// session's requests in order). It does not wait.
func (e *earlySync) stop() {
	if e == nil {
		return
	}
	e.once.Do(func() {
		if e.kicks != nil {
			close(e.kicks)
		}
	})
}
