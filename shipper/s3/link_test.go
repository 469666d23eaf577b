package s3

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/s3/s3test"
)

func TestLinkStreams(t *testing.T) {
	for _, tc := range []struct {
		streams int
		rtt     time.Duration
		want    int
	}{
		{4, 0, 4},
		{4, 300 * time.Microsecond, 4},
		{4, 30 * time.Millisecond, 4},
		{4, 50 * time.Millisecond, 8},
		{4, 100 * time.Millisecond, 16},
		{4, 400 * time.Millisecond, 16},
		{1, 100 * time.Millisecond, 4},
		{32, 100 * time.Millisecond, 32}, // never fewer than asked for
	} {
		tr := &Transport{streams: tc.streams, link: &link{}}
		tr.link.rtt.Store(int64(tc.rtt))
		if got := tr.linkStreams(); got != tc.want {
			t.Errorf("Streams %d at %v: %d in flight, want %d", tc.streams, tc.rtt, got, tc.want)
		}
	}
}

// TestLongLinkMoreInFlight puts versitygw behind a proxy that holds every
// answer back 60 ms, as a distant store would: the Transport measures the
// round trip, reports it, and reads and writes with more requests in
// flight than Config.Streams; the data arrives intact. Once the round trip
// is measured, the proxy holds each request 400 ms, so that a part's
// preparation (slow under -race on a busy machine) cannot keep the
// requests from overlapping: what is counted is how many the Transport
// lets go at once.
func TestLongLinkMoreInFlight(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	var inFlight, most atomic.Int32
	var hold atomic.Int64
	hold.Store(int64(60 * time.Millisecond))
	proxy := newHookProxy(t, srv.Endpoint, func(p *hookProxy, w http.ResponseWriter, r *http.Request) bool {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		time.Sleep(time.Duration(hold.Load()))
		p.forward.ServeHTTP(w, r)
		return true
	})
	tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "long", Endpoint: proxy.URL, Streams: 2})
	ctx := context.Background()
	if err := tr.Put(ctx, "probe", strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	st := tr.LinkStats()
	if st.RTT < 60*time.Millisecond || st.Connections < 1 || st.Channels < 1 {
		t.Errorf("LinkStats after one request = %+v, want a round trip of at least 60 ms", st)
	}
	data := randomBytes(6*partSize, 31)
	hold.Store(int64(400 * time.Millisecond))
	most.Store(0)
	if err := tr.Put(ctx, "seg", onlyReader{bytes.NewReader(data)}, -1); err != nil {
		t.Fatal(err)
	}
	if m := most.Load(); m <= 2 {
		t.Errorf("the upload had at most %d requests in flight, want more than Streams (2)", m)
	}
	most.Store(0)
	rc, err := tr.Open(ctx, "seg", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
	if m := most.Load(); m <= 2 {
		t.Errorf("the read had at most %d requests in flight, want more than Streams (2)", m)
	}
	// The bandwidth wrapper measures no link itself: what it wraps does.
	if u, ok := shipper.LimitBandwidth(tr, 1<<30).(interface{ Unwrap() shipper.Transport }); !ok {
		t.Error("the bandwidth wrapper hides the transport's LinkStats")
	} else if _, ok := u.Unwrap().(shipper.LinkReporter); !ok {
		t.Error("the transport under the bandwidth wrapper reports no LinkStats")
	}
	t.Logf("LinkStats %+v", tr.LinkStats())
}
