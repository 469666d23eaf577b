package s3

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/signer"

	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/s3/s3test"
)

// hookProxy forwards requests to the server; hook sees each request first
// and may answer it itself (returning true) or change it. It records the
// If-None-Match header of every PUT and POST.
type hookProxy struct {
	mu      sync.Mutex
	ifNone  map[string]string // request "METHOD path" -> If-None-Match
	forward *httputil.ReverseProxy
	URL     string
}

func newHookProxy(t *testing.T, endpoint string, hook func(p *hookProxy, w http.ResponseWriter, r *http.Request) bool) *hookProxy {
	t.Helper()
	target, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	p := &hookProxy{ifNone: map[string]string{}, forward: httputil.NewSingleHostReverseProxy(target)}
	p.forward.ErrorLog = log.New(io.Discard, "", 0)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut || r.Method == http.MethodPost {
			p.mu.Lock()
			p.ifNone[r.Method+" "+r.URL.Path] = r.Header.Get("If-None-Match")
			p.mu.Unlock()
		}
		if hook != nil && hook(p, w, r) {
			return
		}
		p.forward.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

func (p *hookProxy) header(req string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ifNone[req]
}

// TestPutNewConditional finds out that versitygw honours If-None-Match: *,
// and checks that PutNew sends it on the PUT of a small object and on the
// completion of a multipart upload, so that the server itself refuses the
// second PutNew of a name.
func TestPutNewConditional(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	proxy := newHookProxy(t, srv.Endpoint, nil)
	tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "cond", Endpoint: proxy.URL})
	ctx := context.Background()
	small, large := []byte("the key"), randomBytes(partSize+10, 21)
	for _, obj := range []struct {
		name, req string
		data      []byte
	}{
		{"keys/0000", "PUT /" + srv.Bucket + "/cond/keys/0000", small},
		{"segments/00000001", "POST /" + srv.Bucket + "/cond/segments/00000001", large},
	} {
		if err := tr.PutNew(ctx, obj.name, bytes.NewReader(obj.data), int64(len(obj.data))); err != nil {
			t.Fatalf("PutNew(%s): %v", obj.name, err)
		}
		if got := proxy.header(obj.req); got != "*" {
			t.Errorf("%s carried If-None-Match %q, want *", obj.req, got)
		}
		err := tr.PutNew(ctx, obj.name, strings.NewReader("another"), 7)
		if !errors.Is(err, shipper.ErrObjectExists) || !strings.Contains(err.Error(), "cond/"+obj.name) {
			t.Errorf("second PutNew(%s): %v, want ErrObjectExists naming the object", obj.name, err)
		}
		checkObject(t, tr, obj.name, obj.data)
	}
	if tr.cond != condSupported {
		t.Errorf("conditional writes on versitygw: mode %d, want supported", tr.cond)
	}
	if u := incompleteUploads(t, srv); len(u) != 0 {
		t.Errorf("uploads left: %v", u)
	}
	// The probe leaves nothing behind.
	for oi := range srv.Client().ListObjects(ctx, srv.Bucket, minio.ListObjectsOptions{Prefix: "cond/.", Recursive: true}) {
		t.Errorf("left behind: %s %v", oi.Key, oi.Err)
	}
}

// TestPutNewRetriedPut loses the response to a PutNew's PUT after the
// server stored the object: the client's retry is refused with 412, and
// PutNew, finding its own bytes there, succeeds.
func TestPutNewRetriedPut(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	var dropped bool
	proxy := newHookProxy(t, srv.Endpoint, func(p *hookProxy, w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodPut || !strings.HasSuffix(r.URL.Path, "/keys/0000") || dropped {
			return false
		}
		dropped = true
		p.forward.ServeHTTP(httptest.NewRecorder(), r) // stored, answer lost
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
		return true
	})
	tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "retried", Endpoint: proxy.URL})
	if err := tr.PutNew(context.Background(), "keys/0000", strings.NewReader("key"), 3); err != nil {
		t.Fatalf("PutNew whose first answer was lost: %v", err)
	}
	if !dropped {
		t.Fatal("the proxy dropped no answer: the test no longer exercises the retry")
	}
	checkObject(t, tr, "keys/0000", []byte("key"))
	if err := tr.PutNew(context.Background(), "keys/0000", strings.NewReader("other"), 5); !errors.Is(err, shipper.ErrObjectExists) {
		t.Errorf("PutNew of a name that holds other bytes: %v, want ErrObjectExists", err)
	}
}

// TestPutNewWithoutConditionalWrites puts versitygw behind proxies that
// make it a server without conditional writes: one drops the header, one
// answers 501 Not Implemented to it. PutNew finds out, and still never
// replaces an object: it checks before and reads the ETag back after.
func TestPutNewWithoutConditionalWrites(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	hooks := map[string]func(p *hookProxy, w http.ResponseWriter, r *http.Request) bool{
		"ignores the header": func(p *hookProxy, w http.ResponseWriter, r *http.Request) bool {
			if r.Header.Get("If-None-Match") != "" {
				// The header is signed: sign the request again without it.
				r.Header.Del("If-None-Match")
				r.Header.Del("Authorization")
				*r = *signer.SignV4(*r, srv.AccessKey, srv.SecretKey, "", s3test.Region)
			}
			return false
		},
		"answers 501": func(p *hookProxy, w http.ResponseWriter, r *http.Request) bool {
			if r.Header.Get("If-None-Match") == "" {
				return false
			}
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusNotImplemented)
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>NotImplemented</Code>`+
				`<Message>A header you provided implies functionality that is not implemented.</Message></Error>`)
			return true
		},
	}
	for name, hook := range hooks {
		t.Run(name, func(t *testing.T) {
			var race func() // set below: another writer between PUT and read-back
			proxy := newHookProxy(t, srv.Endpoint, func(p *hookProxy, w http.ResponseWriter, r *http.Request) bool {
				if hook(p, w, r) {
					return true
				}
				if r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/raced") && race != nil {
					p.forward.ServeHTTP(w, r)
					race()
					return true
				}
				return false
			})
			prefix := strings.ReplaceAll(name, " ", "-")
			tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: prefix, Endpoint: proxy.URL})
			ctx := context.Background()
			if err := tr.PutNew(ctx, "keys/0000", strings.NewReader("first"), 5); err != nil {
				t.Fatalf("PutNew: %v", err)
			}
			if tr.cond != condIgnored {
				t.Errorf("mode %d, want the server found without conditional writes", tr.cond)
			}
			if err := tr.PutNew(ctx, "keys/0000", strings.NewReader("second"), 6); !errors.Is(err, shipper.ErrObjectExists) {
				t.Errorf("second PutNew: %v, want ErrObjectExists", err)
			}
			checkObject(t, tr, "keys/0000", []byte("first"))

			race = func() {
				_, err := srv.Client().PutObject(ctx, srv.Bucket, prefix+"/raced", strings.NewReader("the other writer"), -1, minio.PutObjectOptions{})
				if err != nil {
					t.Error(err)
				}
			}
			if err := tr.PutNew(ctx, "raced", strings.NewReader("mine"), 4); !errors.Is(err, shipper.ErrObjectExists) {
				t.Errorf("PutNew overtaken by another writer: %v, want ErrObjectExists", err)
			}
		})
	}
}
