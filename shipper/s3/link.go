package s3

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coldship/coldship/shipper"
)

var _ shipper.LinkReporter = (*Transport)(nil)

// maxStreams bounds the requests of a Transport's reads, and the parts of
// one upload, in flight: the part and chunk buffer pools hold 16 buffers
// each, so more streams would only wait for one.
const maxStreams = poolBudget / partSize

// rttPerStream is the round trip that each multiple of Config.Streams
// covers: at 100 ms, 4 streams become 16. On a long link one request
// moves little per round trip (the window of one TCP connection, or of a
// proxy), so more of them in flight keep the link full.
const rttPerStream = 25 * time.Millisecond

// link is the Transport's HTTP round tripper: it measures the round trip
// (the shortest time to the response headers of a request with a small
// body or none) and counts connections and requests in flight.
type link struct {
	next http.RoundTripper

	rtt         atomic.Int64 // nanoseconds; 0 until a request completed
	inFlight    atomic.Int32
	maxInFlight atomic.Int32
	dials       atomic.Int32
}

// smallRequest is the largest body whose request still times the round
// trip rather than the upload.
const smallRequest = 64 << 10

func newLink(ht *http.Transport) *link {
	l := &link{next: ht}
	dial := ht.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	ht.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err == nil {
			l.dials.Add(1)
		}
		return c, err
	}
	return l
}

func (l *link) RoundTrip(req *http.Request) (*http.Response, error) {
	n := l.inFlight.Add(1)
	for m := l.maxInFlight.Load(); n > m && !l.maxInFlight.CompareAndSwap(m, n); m = l.maxInFlight.Load() {
	}
	start := time.Now()
	resp, err := l.next.RoundTrip(req)
	if err != nil {
		l.inFlight.Add(-1)
		return resp, err
	}
	if req.ContentLength >= 0 && req.ContentLength <= smallRequest {
		d := int64(time.Since(start))
		for r := l.rtt.Load(); (r == 0 || d < r) && !l.rtt.CompareAndSwap(r, d); r = l.rtt.Load() {
		}
	}
	resp.Body = &doneBody{ReadCloser: resp.Body, done: func() { l.inFlight.Add(-1) }}
	return resp, nil
}

// RTT is the shortest round trip measured so far; 0 before any.
func (l *link) RTT() time.Duration { return time.Duration(l.rtt.Load()) }

type doneBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *doneBody) Close() error {
	b.once.Do(b.done)
	return b.ReadCloser.Close()
}

// linkStreams is the number of requests in flight that the link asks for:
// Config.Streams, times one for every 25 ms of round trip measured, at
// most maxStreams (and never fewer than Config.Streams).
func (t *Transport) linkStreams() int {
	n := t.streams * max(1, int(t.link.RTT()/rttPerStream))
	return max(t.streams, min(n, maxStreams))
}

// LinkStats reports the round trip measured, the connections opened and
// the most requests that were in flight at once.
func (t *Transport) LinkStats() shipper.LinkStats {
	return shipper.LinkStats{
		RTT:         t.link.RTT(),
		Connections: int(t.link.dials.Load()),
		Channels:    int(t.link.maxInFlight.Load()),
	}
}
