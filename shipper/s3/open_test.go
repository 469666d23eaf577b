package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/s3/s3test"
)

// TestOpenChunks reads ranges that start, end and cross chunk boundaries
// with parallel ranged GETs; with the chunk buffers all taken, and with
// the streams all taken by other reads, when the rest of a range streams
// from one GET.
func TestOpenChunks(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	ctx := context.Background()
	data := randomBytes(3*partSize+12345, 21)
	size := int64(len(data))
	setup := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "chunks"})
	if err := setup.Put(ctx, "seg", bytes.NewReader(data), size); err != nil {
		t.Fatal(err)
	}
	ranges := []struct{ off, n int64 }{
		{0, -1}, {0, size}, {1, -1}, {partSize - 1, -1}, {partSize, -1}, {partSize + 1, 2 * partSize},
		{0, partSize}, {0, partSize + 1}, {5, 2*partSize - 3}, {size - partSize - 1, -1}, {size - 1, -1}, {size, -1},
	}
	for _, streams := range []int{1, 2, 4} {
		for _, starved := range []string{"", "buffers", "streams"} {
			t.Run(fmt.Sprintf("streams=%d/starved=%s", streams, starved), func(t *testing.T) {
				tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "chunks", Streams: streams})
				switch starved {
				case "buffers":
					for tr.reads.tryGet() != nil {
					}
				case "streams":
					tr.gets.Add(int32(streams))
					defer tr.gets.Add(-int32(streams))
				}
				for _, r := range ranges {
					want := data[r.off:]
					if r.n >= 0 {
						want = want[:r.n]
					}
					rc, err := tr.Open(ctx, "seg", r.off, r.n)
					if err != nil {
						t.Fatalf("Open(%d, %d): %v", r.off, r.n, err)
					}
					got, err := io.ReadAll(rc)
					rc.Close()
					if err != nil || !bytes.Equal(got, want) {
						t.Errorf("Open(%d, %d): read %d bytes, %v; want %d bytes (or content differs)", r.off, r.n, len(got), err, len(want))
					}
					if busy := tr.gets.Load(); starved != "streams" && busy != 0 {
						t.Errorf("Open(%d, %d): %d GETs still counted after Close", r.off, r.n, busy)
					}
				}
				if starved != "buffers" && len(tr.reads.sem) != 0 {
					t.Errorf("%d chunk buffers not returned", len(tr.reads.sem))
				}
			})
		}
	}
}

// TestOpenSharesStreams opens several multi-chunk reads at once, as
// receive does with segments: the first, alone, splits into ranged GETs;
// those opened while the streams are taken each use one GET.
func TestOpenSharesStreams(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	ctx := context.Background()
	data := randomBytes(3*partSize, 22)
	put := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "shared", Streams: 4})
	for i := range 4 {
		if err := put.Put(ctx, fmt.Sprint("seg", i), bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
	}
	// Read through a link of 16 MB/s per connection: the first read's
	// GETs hold their streams for half a second each, however loaded the
	// machine, while the others are opened (on loopback they could end
	// first, and free the streams).
	tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "shared", Streams: 4, Endpoint: srv.SlowProxy(t, 16e6)})
	// The streams a read may take grow with the round trip measured (the
	// shortest small request so far): on a loaded machine a first request
	// that took 25 ms doubled them and let read 1 split too. This test is
	// about sharing them, at loopback's round trip.
	tr.link.rtt.Store(int64(time.Millisecond))
	var rcs []io.ReadCloser
	for i := range 4 {
		rc, err := tr.Open(ctx, fmt.Sprint("seg", i), 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		rcs = append(rcs, rc)
		_, chunked := rc.(*chunkReader)
		if chunked != (i == 0) {
			t.Errorf("read %d: split into ranged GETs: %v, want %v (%d GETs counted)", i, chunked, i == 0, tr.gets.Load())
		}
	}
	for i, rc := range rcs {
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("read %d: %d bytes, %v", i, len(got), err)
		}
	}
	if n := tr.gets.Load(); n != 0 {
		t.Errorf("%d GETs still counted after every read closed", n)
	}
}

// TestOpenEdges covers empty reads and reads past the end.
func TestOpenEdges(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	ctx := context.Background()
	tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "edges"})
	if err := tr.Put(ctx, "empty", bytes.NewReader(nil), 0); err != nil {
		t.Fatal(err)
	}
	if err := tr.Put(ctx, "ten", strings.NewReader("0123456789"), 10); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		off, n   int64
		want     string
		wantErr  error // nil with wantFail: any error
		wantFail bool
	}{
		{name: "empty", want: "", n: -1},
		{name: "empty", n: 0},
		{name: "ten", off: 10, n: -1},
		{name: "ten", off: 10, n: 0},
		{name: "ten", off: 3, n: 0},
		{name: "ten", off: 7, n: 5, want: "789"}, // as a file section: what there is
		{name: "ten", off: 11, n: -1, wantFail: true},
		{name: "ten", off: -1, n: -1, wantFail: true},
		{name: "missing", n: 0, wantErr: shipper.ErrNotFound, wantFail: true},
		{name: "missing", off: 5, n: -1, wantErr: shipper.ErrNotFound, wantFail: true},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s/%d/%d", tc.name, tc.off, tc.n), func(t *testing.T) {
			rc, err := tr.Open(ctx, tc.name, tc.off, tc.n)
			if tc.wantFail {
				if err == nil || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
					t.Fatalf("err = %v, want failure %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			if err != nil || string(got) != tc.want {
				t.Errorf("read %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestOpenObjectReplaced replaces an object during a parallel read: the
// read fails rather than mixing the two versions.
func TestOpenObjectReplaced(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	ctx := context.Background()
	tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "replaced", Streams: 2})
	v1, v2 := randomBytes(4*partSize, 31), randomBytes(4*partSize, 32)
	if err := tr.Put(ctx, "seg", bytes.NewReader(v1), -1); err != nil {
		t.Fatal(err)
	}
	for tr.reads.tryGet() != nil { // every chunk after the first is fetched later
	}
	rc, err := tr.Open(ctx, "seg", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, make([]byte, partSize)); err != nil {
		t.Fatal(err)
	}
	if err := tr.Put(ctx, "seg", bytes.NewReader(v2), -1); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(rc); err == nil || !strings.Contains(err.Error(), "replaced") {
		t.Errorf("read after the object was replaced: err = %v, want it to say so", err)
	}
}

// cutProxy forwards requests to an S3 server and cuts the response body
// of the first cuts GETs after 5000 bytes, closing the connection: what a
// client sees when the server dies in the middle of a response.
type cutProxy struct {
	cuts   atomic.Int32
	server *httptest.Server
}

func newCutProxy(t *testing.T, endpoint string, cuts int32) *cutProxy {
	target, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{}
	p.cuts.Store(cuts)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ErrorLog = log.New(io.Discard, "", 0)
	p.server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Query().Get("list-type") == "" && p.cuts.Add(-1) >= 0 {
			w = &cutWriter{ResponseWriter: w, left: 5000}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.server.Close)
	return p
}

type cutWriter struct {
	http.ResponseWriter
	left int
}

func (c *cutWriter) Write(p []byte) (int, error) {
	if len(p) > c.left {
		c.ResponseWriter.Write(p[:c.left])
		c.ResponseWriter.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // closes the connection mid-body
	}
	c.left -= len(p)
	return c.ResponseWriter.Write(p)
}

// TestResponseCutShort: a GET whose connection drops before the body's
// Content-Length is read fails the read as a lost connection, never as
// the io.ErrUnexpectedEOF of an object that ends early (a receive
// retries the one, and takes the other for a truncated segment).
func TestResponseCutShort(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	ctx := context.Background()
	data := randomBytes(2*partSize+100, 23)
	setup := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "cut"})
	if err := setup.Put(ctx, "seg", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		streams int
		off, n  int64
		cuts    int32
	}{
		{"one GET", 1, 0, 100000, 1},
		{"first of ranged GETs", 2, 0, -1, 1},
		{"a chunk", 2, 0, -1, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			proxy := newCutProxy(t, srv.Endpoint, c.cuts)
			tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "cut", Endpoint: proxy.server.URL, Streams: c.streams})
			rc, err := tr.Open(ctx, "seg", c.off, c.n)
			if c.name == "a chunk" && err == nil {
				// The first GET of the read is the one of its first
				// chunk: let it through, cut the next.
				proxy.cuts.Store(1)
			}
			if err == nil {
				_, err = io.ReadAll(rc)
				rc.Close()
			}
			if err == nil || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || !strings.Contains(err.Error(), "connection") {
				t.Errorf("read over a response cut short: %v; want a lost connection, not an early end", err)
			}
		})
	}
}

// stallProxy forwards requests to an S3 server and, for the GETs of
// objects, sends the first 5000 bytes of the body and then nothing more
// while keeping the connection open: a store that hangs mid-response, or
// a link that dies without closing.
func newStallProxy(t *testing.T, endpoint string) string {
	target, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ErrorLog = log.New(io.Discard, "", 0)
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Query().Get("list-type") == "" {
			w = &stallWriter{ResponseWriter: w, left: 5000, stop: stop}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		close(stop)
		server.Close()
	})
	return server.URL
}

type stallWriter struct {
	http.ResponseWriter
	left int
	stop chan struct{}
}

func (s *stallWriter) Write(p []byte) (int, error) {
	if len(p) > s.left {
		s.ResponseWriter.Write(p[:s.left])
		s.ResponseWriter.(http.Flusher).Flush()
		<-s.stop
		panic(http.ErrAbortHandler)
	}
	s.left -= len(p)
	return s.ResponseWriter.Write(p)
}

// TestResponseStalls: a GET whose body stops arriving while its
// connection stays open fails the read, as a lost connection, once the
// connection has carried nothing for stallTimeout, instead of hanging
// the receive for as long as the server keeps the connection open.
func TestResponseStalls(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	defer func(d time.Duration) { stallTimeout = d }(stallTimeout)
	stallTimeout = time.Second
	ctx := context.Background()
	data := randomBytes(2*partSize+100, 29)
	setup := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "stall"})
	if err := setup.Put(ctx, "seg", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		streams int
		n       int64
	}{
		{"one GET", 1, 100000},
		{"ranged GETs", 4, -1},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "stall", Endpoint: newStallProxy(t, srv.Endpoint), Streams: c.streams})
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			rc, err := tr.Open(ctx, "seg", 0, c.n)
			if err == nil {
				_, err = io.ReadAll(rc)
				rc.Close()
			}
			if ctx.Err() != nil || err == nil || !strings.Contains(err.Error(), "stalled") {
				t.Errorf("read of a stalled response: %v (context: %v); want it to fail as stalled", err, ctx.Err())
			}
		})
	}
}

// TestUploadStalls: a PUT whose body the server stops reading, the
// connection kept open, fails the upload once the connection has carried
// nothing for stallTimeout (the upload's retries included) instead of
// hanging the send.
func TestUploadStalls(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	defer func(d time.Duration) { stallTimeout = d }(stallTimeout)
	stallTimeout = time.Second
	target, err := url.Parse(srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ErrorLog = log.New(io.Discard, "", 0)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			<-stop // never reads the body
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		close(stop)
		proxy.Close()
	})
	tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "stall", Endpoint: proxy.URL, Streams: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	data := randomBytes(partSize, 31)
	err = tr.Put(ctx, "seg", bytes.NewReader(data), int64(len(data)))
	if ctx.Err() != nil || err == nil {
		t.Errorf("upload to a server that stops reading: %v (context: %v); want it to fail", err, ctx.Err())
	}
}
