package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/s3/s3test"
	"github.com/coldship/coldship/shipper/shippertest"
)

// incompleteUploads lists every multipart upload left in the server's bucket.
func incompleteUploads(t *testing.T, srv *s3test.Server) []string {
	t.Helper()
	var keys []string
	for u := range srv.Client().ListIncompleteUploads(context.Background(), srv.Bucket, "", true) {
		if u.Err != nil {
			t.Fatalf("ListIncompleteUploads: %v", u.Err)
		}
		keys = append(keys, u.Key)
	}
	return keys
}

func checkObject(t *testing.T, tr *Transport, name string, want []byte) {
	t.Helper()
	if got := shippertest.Get(t, tr, name, 0, -1); !bytes.Equal(got, want) {
		t.Fatalf("%q: read %d bytes that differ from the %d put", name, len(got), len(want))
	}
}

// TestPutPartBoundaries puts objects around the part size, of known and
// unknown size.
func TestPutPartBoundaries(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "boundaries"})
	for i, n := range []int{smallObject, smallObject + 1, partSize - 1, partSize, partSize + 1, 2*partSize + 17} {
		for _, known := range []bool{true, false} {
			t.Run(fmt.Sprintf("%d/known=%v", n, known), func(t *testing.T) {
				data := randomBytes(n, uint64(i))
				size := int64(n)
				if !known {
					size = -1
				}
				name := fmt.Sprintf("obj-%d-%v", n, known)
				if err := tr.Put(context.Background(), name, onlyReader{iotest.HalfReader(bytes.NewReader(data))}, size); err != nil {
					t.Fatalf("Put: %v", err)
				}
				checkObject(t, tr, name, data)
			})
		}
	}
	if u := incompleteUploads(t, srv); len(u) != 0 {
		t.Errorf("uploads left: %v", u)
	}
}

// failAfter yields n bytes and then fails.
func failAfter(data []byte, n int) io.Reader {
	return io.MultiReader(bytes.NewReader(data[:n]), iotest.ErrReader(errors.New("source read failed")))
}

// TestFailedMultipartPutLeavesNoUpload fails large Puts in several ways and
// checks that no multipart upload remains to accrue storage.
func TestFailedMultipartPutLeavesNoUpload(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "failed", Streams: 2})
	data := randomBytes(5*partSize, 11)
	tests := []struct {
		name string
		put  func(ctx context.Context, cancel func()) error
	}{
		{"failing source", func(ctx context.Context, _ func()) error {
			return tr.Put(ctx, "seg", failAfter(data, 3*partSize+5), -1)
		}},
		{"short source", func(ctx context.Context, _ func()) error {
			return tr.Put(ctx, "seg", bytes.NewReader(data[:3*partSize]), int64(len(data)))
		}},
		{"long source", func(ctx context.Context, _ func()) error {
			return tr.Put(ctx, "seg", bytes.NewReader(data), 3*partSize)
		}},
		{"cancelled", func(ctx context.Context, cancel func()) error {
			r := &cancelAt{r: bytes.NewReader(data), at: 2*partSize + 100, cancel: cancel}
			return tr.Put(ctx, "seg", r, -1)
		}},
		{"too many parts", func(ctx context.Context, _ func()) error {
			defer func(n int) { maxParts = n }(maxParts)
			maxParts = 3
			return tr.Put(ctx, "seg", bytes.NewReader(data), -1)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if err := tc.put(ctx, cancel); err == nil {
				t.Fatal("Put succeeded")
			}
			if u := incompleteUploads(t, srv); len(u) != 0 {
				t.Errorf("multipart uploads left: %v", u)
			}
			if _, err := tr.Stat(context.Background(), "seg"); !errors.Is(err, shipper.ErrNotFound) {
				t.Errorf("Stat after the failed Put: %v, want ErrNotFound", err)
			}
		})
	}
}

// cancelAt cancels the context once at bytes were read.
type cancelAt struct {
	r      io.Reader
	n, at  int
	cancel func()
}

func (c *cancelAt) Read(p []byte) (int, error) {
	if c.n >= c.at {
		c.cancel()
	}
	n, err := c.r.Read(p[:min(len(p), 64<<10)])
	c.n += n
	return n, err
}

// TestServerStoppedMidPut stops the server during a streamed Put, as a
// killed network or a crashed gateway would: the Put fails without a
// permanent error, and once the server is back, a rerun's Put of the same
// name succeeds and removes the upload the failed one could not abort.
func TestServerStoppedMidPut(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	ctx := context.Background()
	data := randomBytes(6*partSize, 12)
	put := func(tr *Transport) {
		pr, pw := io.Pipe()
		errc := make(chan error, 1)
		go func() { errc <- tr.Put(ctx, "seg", pr, -1) }()
		// Once 3 parts are taken the upload has been created.
		if _, err := pw.Write(data[:3*partSize]); err != nil {
			t.Fatal(err)
		}
		srv.Stop()
		go func() {
			pw.Write(data[3*partSize:])
			pw.Close()
		}()
		err := <-errc
		pr.CloseWithError(errors.New("Put returned"))
		if err == nil {
			t.Fatal("Put succeeded although the server was stopped")
		}
		if errors.Is(err, shipper.ErrPermanent) || errors.Is(err, shipper.ErrAuth) || errors.Is(err, shipper.ErrNotFound) {
			t.Errorf("Put with the server down: err = %v, want a retryable error", err)
		}
		t.Logf("Put with the server down: %v", err)
		srv.Restart()
	}
	put(newTransport(t, Config{Bucket: srv.Bucket, Prefix: "restart", Streams: 2}))
	if u := incompleteUploads(t, srv); len(u) == 0 {
		t.Fatal("no upload was left behind; the test no longer exercises the clean-up")
	}
	// A new process, as a rerun of coldship would be.
	tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "restart", Streams: 2})
	if err := tr.Put(ctx, "seg", onlyReader{bytes.NewReader(data)}, -1); err != nil {
		t.Fatalf("Put after the restart: %v", err)
	}
	if u := incompleteUploads(t, srv); len(u) != 0 {
		t.Errorf("uploads left after the rerun: %v", u)
	}
	checkObject(t, tr, "seg", data)
}

// TestStaleUploads checks that Put and Delete abort the uploads of their own
// key that an earlier process left, and only those.
func TestStaleUploads(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	ctx := context.Background()
	core := minio.Core{Client: srv.Client()}
	tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "stale"})
	for _, key := range []string{"stale/seg1", "stale/seg1", "stale/seg10", "stale/gone"} {
		if _, err := core.NewMultipartUpload(ctx, srv.Bucket, key, minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	data := randomBytes(partSize+1, 13)
	if err := tr.Put(ctx, "seg1", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if err := tr.Delete(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if u := incompleteUploads(t, srv); len(u) != 1 || u[0] != "stale/seg10" {
		t.Errorf("uploads left: %v, want only stale/seg10's", u)
	}
}

// checksumProxy forwards requests to the server, records the checksum
// header of every PUT and, when tamper is set, flips a bit of every PUT
// body larger than 1000 bytes.
type checksumProxy struct {
	mu     sync.Mutex
	puts   []http.Header
	tamper bool
	server *httptest.Server
}

func newChecksumProxy(t *testing.T, endpoint string, tamper bool) *checksumProxy {
	target, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	p := &checksumProxy{tamper: tamper}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ErrorLog = log.New(io.Discard, "", 0) // refused requests are the point
	p.server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			p.mu.Lock()
			p.puts = append(p.puts, r.Header.Clone())
			p.mu.Unlock()
			if p.tamper && r.ContentLength > 1000 {
				r.Body = struct {
					io.Reader
					io.Closer
				}{&flipReader{r: r.Body, at: 1000}, r.Body}
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.server.Close)
	return p
}

type flipReader struct {
	r     io.Reader
	at, n int
}

func (f *flipReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if f.at >= f.n && f.at < f.n+n {
		p[f.at-f.n] ^= 1
	}
	f.n += n
	return n, err
}

// TestChecksums checks that every PUT carries the CRC32C of its body, that
// the server keeps it, and that a body changed on the way is refused.
func TestChecksums(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	ctx := context.Background()
	small := randomBytes(100000, 14)
	large := randomBytes(2*partSize+5, 15)

	proxy := newChecksumProxy(t, srv.Endpoint, false)
	tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "sums", Endpoint: proxy.server.URL})
	if err := tr.Put(ctx, "small", bytes.NewReader(small), int64(len(small))); err != nil {
		t.Fatal(err)
	}
	if err := tr.Put(ctx, "large", bytes.NewReader(large), -1); err != nil {
		t.Fatal(err)
	}
	if len(proxy.puts) != 4 { // small, and 3 parts
		t.Errorf("%d PUT requests, want 4", len(proxy.puts))
	}
	for i, h := range proxy.puts {
		if h.Get(checksumHeader) == "" {
			t.Errorf("PUT %d has no %s header: %v", i, checksumHeader, h)
		}
	}
	if got, want := proxy.puts[0].Get(checksumHeader), crc32c(small); got != want {
		t.Errorf("PUT of small: checksum %s, want %s", got, want)
	}

	// The server stores the checksums and shows them on request.
	c := srv.Client()
	oi, err := c.StatObject(ctx, srv.Bucket, "sums/small", minio.StatObjectOptions{Checksum: true})
	if err != nil {
		t.Fatal(err)
	}
	if oi.ChecksumCRC32C != crc32c(small) {
		t.Errorf("stored CRC32C of small = %q, want %q", oi.ChecksumCRC32C, crc32c(small))
	}
	oi, err = c.StatObject(ctx, srv.Bucket, "sums/large", minio.StatObjectOptions{Checksum: true})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(oi.ChecksumCRC32C, "-3") {
		t.Errorf("stored CRC32C of large = %q, want the composite checksum of 3 parts", oi.ChecksumCRC32C)
	}

	// A body changed between client and server is refused.
	tamper := newChecksumProxy(t, srv.Endpoint, true)
	bad := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "sums", Endpoint: tamper.server.URL})
	for _, tc := range []struct {
		name string
		data []byte
	}{{"tampered-small", small}, {"tampered-large", large}} {
		err := bad.Put(ctx, tc.name, bytes.NewReader(tc.data), int64(len(tc.data)))
		if err == nil {
			t.Errorf("Put of %s through a proxy that changes the body succeeded", tc.name)
			continue
		}
		t.Logf("Put of %s through a tampering proxy: %v", tc.name, err)
		if _, err := tr.Stat(ctx, tc.name); !errors.Is(err, shipper.ErrNotFound) {
			t.Errorf("Stat(%s) = %v, want ErrNotFound", tc.name, err)
		}
	}
	if u := incompleteUploads(t, srv); len(u) != 0 {
		t.Errorf("uploads left: %v", u)
	}
}

// TestConcurrentStreamedPuts runs more streamed segment Puts at once than
// the part pool holds buffers for: they all complete, the pool never
// allocates more than its budget, and the heap stays near that budget (the
// sources generate their bytes, so the test holds none).
func TestConcurrentStreamedPuts(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "concurrent"})
	const puts, size = 6, 8 * partSize
	runtime.GC()
	peak := sampleHeap(t)
	var wg sync.WaitGroup
	for i := range puts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pr, pw := io.Pipe()
			go func() {
				_, err := io.Copy(pw, generated(size, uint64(i)))
				pw.CloseWithError(err)
			}()
			if err := tr.Put(context.Background(), fmt.Sprintf("seg-%d", i), pr, -1); err != nil {
				t.Errorf("Put(seg-%d): %v", i, err)
			}
		}()
	}
	wg.Wait()
	heap := peak()
	for i := range puts {
		rc, err := tr.Open(context.Background(), fmt.Sprintf("seg-%d", i), 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		_, err = io.Copy(h, rc)
		rc.Close()
		want := sha256.New()
		io.Copy(want, generated(size, uint64(i)))
		if err != nil || !bytes.Equal(h.Sum(nil), want.Sum(nil)) {
			t.Errorf("seg-%d: read back %v, or content differs", i, err)
		}
	}
	if got, limit := tr.parts.allocated, poolBudget/partSize; got > limit {
		t.Errorf("part pool allocated %d buffers, budget %d", got, limit)
	}
	// Loose: the collector may lag behind, but the data of all Puts
	// (384 MiB) must never be held at once.
	if heap > 2*poolBudget {
		t.Errorf("peak heap in use %d MiB, budget %d MiB", heap>>20, poolBudget>>20)
	}
	t.Logf("%d Puts of %d MiB at once: %d part buffers of %d allocated, peak heap in use %d MiB",
		puts, size>>20, tr.parts.allocated, poolBudget/partSize, heap>>20)
}

// generated yields n pseudo-random bytes without holding them.
func generated(n int64, seed uint64) io.Reader {
	return io.LimitReader(&rngReader{rand.New(rand.NewPCG(seed, seed+1))}, n)
}

type rngReader struct{ r *rand.Rand }

func (g *rngReader) Read(p []byte) (int, error) {
	for i := 0; i < len(p); i += 8 {
		v := g.r.Uint64()
		for j := 0; j < 8 && i+j < len(p); j++ {
			p[i+j] = byte(v >> (8 * j))
		}
	}
	return len(p), nil
}

// sampleHeap samples the heap in use until the returned function is called,
// which returns the largest sample.
func sampleHeap(t *testing.T) func() uint64 {
	stop := make(chan struct{})
	done := make(chan uint64)
	go func() {
		var peak uint64
		var ms runtime.MemStats
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-stop:
				done <- peak
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	var peak uint64
	get := func() uint64 {
		once.Do(func() { close(stop); peak = <-done })
		return peak
	}
	t.Cleanup(func() { get() })
	return get
}
