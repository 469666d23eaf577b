package s3

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/coldship/coldship/shipper/s3/s3test"
)

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// onlyReader hides every method but Read, as an io.Pipe does.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// BenchmarkPutGet puts and reads back a 256 MiB object through the
// Transport at several Streams, and through minio-go's own PutObject and
// GetObject as the peer, all against versitygw on loopback.
func BenchmarkPutGet(b *testing.B) {
	const size = 256 << 20
	srv := s3test.Start(b)
	srv.SetEnv(b)
	data := randomBytes(size, 1)
	ctx := context.Background()
	report := func(b *testing.B, put, get time.Duration) {
		mb := float64(size) * float64(b.N) / 1e6
		b.ReportMetric(mb/put.Seconds(), "put-MB/s")
		b.ReportMetric(mb/get.Seconds(), "get-MB/s")
		b.ReportMetric(0, "ns/op")
	}
	// "loopback" shows the cost in CPU of the client and the server on
	// this machine; "link=40MB/s" limits every connection as the path to
	// a distant store does, which is what parallel streams are for.
	slow := srv.SlowProxy(b, 40e6)
	for _, link := range []struct{ name, endpoint string }{{"loopback", srv.Endpoint}, {"link=40MB/s", slow}} {
		for _, streams := range []int{1, 2, 4, 8} {
			b.Run(fmt.Sprintf("%s/streams=%d", link.name, streams), func(b *testing.B) {
				tr := newTransport(b, Config{Bucket: srv.Bucket, Prefix: "bench", Streams: streams, Endpoint: link.endpoint})
				var put, get time.Duration
				for range b.N {
					start := time.Now()
					if err := tr.Put(ctx, "obj", onlyReader{bytes.NewReader(data)}, -1); err != nil {
						b.Fatal(err)
					}
					put += time.Since(start)
					start = time.Now()
					rc, err := tr.Open(ctx, "obj", 0, -1)
					if err != nil {
						b.Fatal(err)
					}
					n, err := io.Copy(io.Discard, rc)
					rc.Close()
					if err != nil || n != size {
						b.Fatalf("read %d bytes: %v", n, err)
					}
					get += time.Since(start)
				}
				report(b, put, get)
			})
		}
	}
	b.Run("peer=minio-go", func(b *testing.B) {
		c := srv.Client()
		var put, get time.Duration
		for range b.N {
			start := time.Now()
			if _, err := c.PutObject(ctx, srv.Bucket, "bench/peer", onlyReader{bytes.NewReader(data)}, -1, minio.PutObjectOptions{}); err != nil {
				b.Fatal(err)
			}
			put += time.Since(start)
			start = time.Now()
			obj, err := c.GetObject(ctx, srv.Bucket, "bench/peer", minio.GetObjectOptions{})
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.Copy(io.Discard, obj)
			obj.Close()
			if err != nil || n != size {
				b.Fatalf("read %d bytes: %v", n, err)
			}
			get += time.Since(start)
		}
		report(b, put, get)
	})
}
