package s3

import (
	"context"
	"strings"

	"github.com/coldship/coldship/shipper"
)

var _ shipper.UploadAborter = (*Transport)(nil)

// Uploads lists the multipart uploads under the prefix whose keys are
// object names (as List shows only those), but not those that a Put of
// this Transport is still sending. Initiated is the server's clock.
func (t *Transport) Uploads(ctx context.Context, prefix string, fn func(shipper.Upload) error) error {
	var keyMarker, idMarker string
	for {
		res, err := t.core.ListMultipartUploads(ctx, t.bucket, t.prefix+prefix, keyMarker, idMarker, "", 1000)
		if err != nil {
			return t.classify("list unfinished uploads under", t.prefix+prefix, err)
		}
		for _, u := range res.Uploads {
			name, ok := strings.CutPrefix(u.Key, t.prefix)
			if !ok || shipper.CheckName(name) != nil || t.inFlight(u.UploadID) {
				continue
			}
			if err := fn(shipper.Upload{Name: name, ID: u.UploadID, Initiated: u.Initiated}); err != nil {
				return err
			}
		}
		if !res.IsTruncated || (res.NextKeyMarker == keyMarker && res.NextUploadIDMarker == idMarker) {
			return nil
		}
		keyMarker, idMarker = res.NextKeyMarker, res.NextUploadIDMarker
	}
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
