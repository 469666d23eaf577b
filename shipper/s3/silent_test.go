package s3

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net"
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

// silentServer accepts connections and reads what comes, but never
// answers: a wrong port, a hung gateway.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(io.Discard, c) // until the client gives up
			}()
		}
	}()
	return ln.Addr().String()
}

// TestSilentEndpoint: an endpoint that takes connections and never
// answers fails the first request after silentTimeout, as a permanent
// error naming the endpoint, and every later request at once, instead of
// a minute for each of minio-go's attempts.
func TestSilentEndpoint(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "id")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	defer func(d time.Duration) { silentTimeout = d }(silentTimeout)
	silentTimeout = time.Second
	addr := silentServer(t)
	for _, region := range []string{"", "us-east-1"} { // with a region, no bucket location lookup first
		t.Run("region="+region, func(t *testing.T) {
			tr := newTransport(t, Config{Bucket: "dr-copies", Prefix: "x", Endpoint: "http://" + addr, Region: region})
			for _, op := range []string{"list", "list again"} {
				err := tr.List(context.Background(), "", func(shipper.ObjectInfo) error { return nil })
				if !errors.Is(err, shipper.ErrPermanent) || !strings.Contains(err.Error(), "http://"+addr+" accepted the connection but sent nothing") {
					t.Errorf("%s of a silent endpoint: %v; want a permanent error naming it", op, err)
				}
			}
		})
	}
}

// TestSlowAnswerAfterFirst: once the endpoint has answered, an answer
// slower than silentTimeout is only slow.
func TestSlowAnswerAfterFirst(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	defer func(d time.Duration) { silentTimeout = d }(silentTimeout)
	silentTimeout = time.Second
	target, err := url.Parse(srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	var requests atomic.Int32
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ErrorLog = log.New(io.Discard, "", 0)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests.Add(1) > 1 {
			time.Sleep(2 * silentTimeout)
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)
	tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "slow", Endpoint: proxy.URL})
	ctx := context.Background()
	if err := tr.Put(ctx, "a", bytes.NewReader([]byte("first")), 5); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Stat(ctx, "a"); err != nil {
		t.Errorf("stat with a slow answer after the first: %v", err)
	}
}
