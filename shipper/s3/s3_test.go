package s3

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/s3/s3test"
	"github.com/coldship/coldship/shipper/shippertest"
)

// newTransport returns a Transport configured from the environment that
// srv.SetEnv has set, as the command line would make it.
func newTransport(t testing.TB, cfg Config) *Transport {
	t.Helper()
	tr, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func TestConformance(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	var n atomic.Int64
	t.Run("Prefix", func(t *testing.T) {
		shippertest.Run(t, func(t *testing.T) shipper.Transport {
			return newTransport(t, Config{Bucket: srv.Bucket, Prefix: fmt.Sprintf("conformance/run-%d", n.Add(1))})
		})
	})
	t.Run("BucketRoot", func(t *testing.T) {
		shippertest.Run(t, func(t *testing.T) shipper.Transport {
			bucket := fmt.Sprintf("root-%d", n.Add(1))
			if err := srv.Client().MakeBucket(context.Background(), bucket, minio.MakeBucketOptions{Region: s3test.Region}); err != nil {
				t.Fatal(err)
			}
			return newTransport(t, Config{Bucket: bucket})
		})
	})
}
