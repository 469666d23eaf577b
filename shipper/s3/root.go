package s3

import (
	"context"
	"errors"
	"fmt"

	"github.com/minio/minio-go/v7"

	"github.com/coldship/coldship/shipper"
)

// CheckRoot implements shipper.RootChecker: the bucket must exist. A
// prefix holds objects or none; it is never missing. It lists one key
// rather than asking HEAD, whose bodiless answer would hide why it failed
// (a wrong secret must read as such, not as access denied).
func (t *Transport) CheckRoot(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var err error
	for oi := range t.core.ListObjectsIter(ctx, t.bucket, minio.ListObjectsOptions{Prefix: t.prefix, MaxKeys: 1}) {
		err = oi.Err
		break
	}
	if err == nil {
		return nil
	}
	var resp minio.ErrorResponse
	if errors.As(err, &resp) && resp.Code == "NoSuchBucket" {
		return fmt.Errorf("%w: bucket %q is missing at %s", shipper.ErrNoDestination, t.bucket, t.endpoint)
	}
	return t.classify("list", t.prefix, err)
}
