package s3

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
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

	// answered is set by the endpoint's first answer; silent holds the
	// error once a request went unanswered for silentTimeout before any.
	answered atomic.Bool
	silent   atomic.Pointer[error]
}

// silentTimeout is how long an endpoint that has answered nothing yet in
// this run may take to answer a small request. A server that accepts
// connections and never answers (a wrong port, a hung gateway, a
// firewall appliance) otherwise costs net/http's minute for each of
// minio-go's 10 attempts, and a cron run learns it only after minutes.
// Once the endpoint has answered, slow answers get the minute, and
// bodies on the move are never cut (see shipper.StallConn).
var silentTimeout = 20 * time.Second

// silentError is an endpoint that has not answered: no retry helps in
// this run.
type silentError struct {
	endpoint string
	timeout  time.Duration
}

func (e *silentError) Error() string {
	return fmt.Sprintf("the S3 endpoint %s accepted the connection but sent nothing in %v (is it an S3 server, and the right port?)", e.endpoint, e.timeout)
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
		if err != nil {
			return nil, err
		}
		l.dials.Add(1)
		return &shipper.StallConn{Conn: c, Timeout: stallTimeout, Peer: "the S3 server " + addr}, nil
	}
	return l
}

// stallTimeout is how long a connection may carry nothing either way,
// while a request or response is in progress, before its reads and writes
// fail. net/http bounds the wait for response headers (a minute) but
// not a body that stops arriving or a server that stops reading one: a
// stalled store or a link that dies without closing would otherwise hang
// a cron run forever. It is longer than the idle connection timeout (a
// minute), so that connections idle in the pool close as idle first.
var stallTimeout = 2 * time.Minute

func (l *link) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := l.silent.Load(); err != nil {
		return nil, *err
	}
	n := l.inFlight.Add(1)
	for m := l.maxInFlight.Load(); n > m && !l.maxInFlight.CompareAndSwap(m, n); m = l.maxInFlight.Load() {
	}
	start := time.Now()
	resp, cancel, err := l.roundTrip(req)
	if err != nil {
		l.inFlight.Add(-1)
		return resp, notTLS(err)
	}
	if req.ContentLength >= 0 && req.ContentLength <= smallRequest {
		d := int64(time.Since(start))
		for r := l.rtt.Load(); (r == 0 || d < r) && !l.rtt.CompareAndSwap(r, d); r = l.rtt.Load() {
		}
	}
	resp.Body = &doneBody{ReadCloser: resp.Body, done: func() { l.inFlight.Add(-1); cancel() }}
	return resp, nil
}

// roundTrip sends req, and gives an endpoint that has not answered yet
// silentTimeout to answer a small one. cancel releases the request once
// its response body is closed.
func (l *link) roundTrip(req *http.Request) (*http.Response, func(), error) {
	if l.answered.Load() || req.ContentLength < 0 || req.ContentLength > smallRequest {
		resp, err := l.next.RoundTrip(req)
		return resp, func() {}, err
	}
	ctx, cancel := context.WithCancel(req.Context())
	var fired atomic.Bool
	timer := time.AfterFunc(silentTimeout, func() {
		if !l.answered.Load() {
			fired.Store(true)
			cancel()
		}
	})
	resp, err := l.next.RoundTrip(req.WithContext(ctx))
	timer.Stop()
	if err == nil {
		l.answered.Store(true)
		return resp, cancel, nil
	}
	cancel()
	if fired.Load() && req.Context().Err() == nil {
		err = &silentError{endpoint: req.URL.Scheme + "://" + req.URL.Host, timeout: silentTimeout}
		l.silent.CompareAndSwap(nil, &err)
	}
	return nil, func() {}, err
}

// errNotTLS is net/http's own error for an https request answered in
// plain http; minio-go knows that message (exactly: it compares the
// string) and does not try again, and linkProblem explains it.
var errNotTLS = errors.New("http: server gave HTTP response to HTTPS client")

// notTLS turns any answer to a TLS hello that is not TLS into errNotTLS.
// net/http says so itself only when the answer starts "HTTP/"; an
// HTTP/0.9-style error page, a plain-http proxy or appliance otherwise
// gives tls.RecordHeaderError, which minio-go and the send's retries
// would try again for a minute, though no retry makes a server speak TLS.
func notTLS(err error) error {
	var rh tls.RecordHeaderError
	if errors.As(err, &rh) {
		return errNotTLS
	}
	return err
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
