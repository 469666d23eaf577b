package s3

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/s3/s3test"
)

// checkOnce runs every operation of opsErrors against a server that counts
// its connections or requests with count, and checks that each fails with
// want, saying msg and naming its object, after a single attempt.
func checkOnce(t *testing.T, tr shipper.Transport, count *atomic.Int64, want error, msg string, only ...string) {
	t.Helper()
	ctx := context.Background()
	ops := map[string]func() error{
		"Put":            func() error { return tr.Put(ctx, "x/small", strings.NewReader("hello"), 5) },
		"Put(multipart)": func() error { return tr.Put(ctx, "x/big", generated(partSize+1, 3), -1) },
		"PutNew": func() error {
			return tr.(shipper.ExclusiveCreator).PutNew(ctx, "x/small", strings.NewReader("hello"), 5)
		},
		"List": func() error { return tr.List(ctx, "x/", func(shipper.ObjectInfo) error { return nil }) },
		"Stat": func() error { _, err := tr.Stat(ctx, "x/small"); return err },
		"Open": func() error {
			rc, err := tr.Open(ctx, "x/small", 0, -1)
			if err == nil {
				_, err = io.ReadAll(rc)
				rc.Close()
			}
			return err
		},
	}
	for op, fn := range ops {
		if len(only) > 0 && !slices.Contains(only, op) {
			continue
		}
		count.Store(0)
		err := fn()
		if !errors.Is(err, want) || !strings.Contains(err.Error(), msg) || !strings.Contains(err.Error(), "s3://") {
			t.Errorf("%s: %v; want %v saying %q and naming the object", op, err, want, msg)
		}
		// A HEAD is explained by one GET; nothing is tried again.
		if n := count.Load(); n < 1 || n > 2 || (n == 2 && op != "Stat") {
			t.Errorf("%s: %d attempts, want one", op, n)
		}
	}
}

// countingProxy forwards TCP connections to addr and counts them.
func countingProxy(t *testing.T, addr string) (string, *atomic.Int64) {
	return countingServer(t, func(c net.Conn, wg *sync.WaitGroup) {
		up, err := net.Dial("tcp", addr)
		if err != nil {
			c.Close()
			return
		}
		wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer wg.Done()
			io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		go pipe(up, c)
		go pipe(c, up)
	})
}

// countingServer accepts TCP connections on loopback, counts them and
// hands each to serve (which may start goroutines counted in wg), until
// the test ends.
func countingServer(t *testing.T, serve func(c net.Conn, wg *sync.WaitGroup)) (string, *atomic.Int64) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			serve(c, &wg)
		}
	}()
	return l.Addr().String(), &n
}

// TestSchemeMismatch points https:// at a server that speaks plain http
// (versitygw) and http:// at one that speaks https: one attempt each, and
// a message that says which scheme to use.
func TestSchemeMismatch(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	t.Run("https to http", func(t *testing.T) {
		addr, conns := countingProxy(t, strings.TrimPrefix(srv.Endpoint, "http://"))
		tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "p", Endpoint: "https://" + addr})
		checkOnce(t, tr, conns, shipper.ErrPermanent, "the endpoint speaks http: use http://"+addr)
	})
	t.Run("http to https", func(t *testing.T) {
		var requests atomic.Int64
		ts := httptest.NewUnstartedServer(http.NotFoundHandler())
		ts.Config.ErrorLog = quietLog()
		ts.Config.ConnState = func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				requests.Add(1)
			}
		}
		ts.StartTLS()
		t.Cleanup(ts.Close)
		addr := strings.TrimPrefix(ts.URL, "https://")
		tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "p", Endpoint: "http://" + addr})
		// Only requests without a body: the server answers the first
		// bytes and closes, so a client still sending a body may see the
		// connection reset instead of the answer.
		checkOnce(t, tr, &requests, shipper.ErrPermanent, "the endpoint speaks https: use https://"+addr, "List", "Stat", "Open")
	})
}

// TestNotTLS points https:// at a server that answers a TLS hello with
// something that is not TLS and does not start "HTTP/" (an HTTP/0.9-style
// error page, as Python's http.server sends; a plain-http proxy or
// appliance): no retry can fix it, so one attempt and the same advice.
func TestNotTLS(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	addr, conns := countingServer(t, func(c net.Conn, _ *sync.WaitGroup) {
		c.Read(make([]byte, 512))
		io.WriteString(c, "<!DOCTYPE HTML>\n<html><body>Error 400: Bad request version</body></html>\n")
		c.Close()
	})
	tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "p", Endpoint: "https://" + addr})
	checkOnce(t, tr, conns, shipper.ErrPermanent, "the endpoint speaks http: use http://"+addr)
}

// TestInsufficientStorage runs against a real HTTP server on loopback that
// answers every request with 507 Insufficient Storage, as versitygw does
// on a full disk and MinIO below its free-space threshold: one attempt, a
// permanent error that says the store is full.
func TestInsufficientStorage(t *testing.T) {
	srv := s3test.Start(t) // only for the credentials in the environment
	srv.SetEnv(t)
	var requests atomic.Int64
	full := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusInsufficientStorage)
		if r.Method != http.MethodHead {
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>InsufficientStorage</Code>`+
				`<Message>No space left on device.</Message></Error>`)
		}
	}))
	t.Cleanup(full.Close)
	tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "p", Endpoint: full.URL})
	checkOnce(t, tr, &requests, shipper.ErrPermanent, "the storage is full")
}

// TestAccessDenied uses the credentials of an account that has no right
// to the bucket: every operation fails at once with ErrPermanent saying
// access is denied, not with ErrAuth (the credentials are valid).
func TestAccessDenied(t *testing.T) {
	srv := s3test.StartWithUsers(t)
	srv.SetEnv(t)
	access, secret := srv.AddUser(t)
	t.Setenv("AWS_ACCESS_KEY_ID", access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", secret)
	tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "p"})
	for op, err := range opsErrors(t, tr) {
		if !errors.Is(err, shipper.ErrPermanent) || errors.Is(err, shipper.ErrAuth) || !strings.Contains(err.Error(), "access denied") {
			t.Errorf("%s: %v; want ErrPermanent saying access denied", op, err)
		}
	}
}

// quietLog discards a test server's log of refused connections.
func quietLog() *log.Logger { return log.New(io.Discard, "", 0) }
