package s3

import (
	"context"
	"strings"

	"github.com/minio/minio-go/v7"

	"github.com/coldship/coldship/shipper"
)

var _ shipper.UploadAborter = (*Transport)(nil)

// Uploads lists the multipart uploads under the prefix whose keys are
// object names (as List shows only those), but not those that a Put of
// this Transport is still sending. Initiated is the server's clock.
func (t *Transport) Uploads(ctx context.Context, prefix string, fn func(shipper.Upload) error) error {
	return t.listUploads(ctx, t.prefix+prefix, func(u minio.ObjectMultipartInfo) error {
		name, ok := strings.CutPrefix(u.Key, t.prefix)
		if !ok || shipper.CheckName(name) != nil || t.inFlight(u.UploadID) {
			return nil
		}
		return fn(shipper.Upload{Name: name, ID: u.UploadID, Initiated: u.Initiated})
	})
}

// AbortUpload aborts an unfinished upload and deletes its parts. An upload
// that a Put of this Transport is still sending is left alone, and one that
// is gone is not an error.
func (t *Transport) AbortUpload(ctx context.Context, u shipper.Upload) error {
	key, err := t.key(u.Name)
	if err != nil {
		return err
	}
	if t.inFlight(u.ID) {
		return nil
	}
	if err := t.core.AbortMultipartUpload(ctx, t.bucket, key, u.ID); err != nil && !isCode(err, "NoSuchUpload") {
		return t.classify("abort unfinished upload of", key, err)
	}
	return nil
}
