package s3

import (
	"context"
	"fmt"

	"github.com/coldship/coldship/shipper"
)

// CheckRoot implements shipper.RootChecker: the bucket must exist. A
// prefix holds objects or none; it is never missing.
func (t *Transport) CheckRoot(ctx context.Context) error {
	ok, err := t.core.BucketExists(ctx, t.bucket)
	if err != nil {
		return t.classify("check bucket", "", err)
	}
	if !ok {
		return fmt.Errorf("%w: bucket %q is missing at %s", shipper.ErrNoDestination, t.bucket, t.endpoint)
	}
	return nil
}
