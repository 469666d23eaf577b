package shipper

import (
	"context"
	"strings"
	"time"

	"github.com/coldship/coldship/archive"
)

// abortLeftoverUploads aborts the unfinished uploads (S3 multipart
// uploads) that earlier runs left under the shipment folders of the
// destination: those initiated before startedBefore. The caller holds the
// destination's lock, so no other run owns any of them. Best effort: a
// failure is logged, never fatal.
//
// (An equivalent AbortLeftoverUploads is planned in shipper/uploads.go
// for prune; the two should become one.)
func abortLeftoverUploads(ctx context.Context, tr Transport, startedBefore time.Time, log func(string, ...any)) {
	ua, ok := tr.(UploadAborter)
	if !ok {
		return
	}
	var stale []Upload
	err := ua.Uploads(ctx, "", func(u Upload) error {
		id, _, _ := strings.Cut(u.Name, "/")
		if archive.ValidID(id) && u.Initiated.Before(startedBefore) {
			stale = append(stale, u)
		}
		return nil
	})
	if err != nil {
		log("warning: list unfinished uploads at %s: %v", tr, err)
		return
	}
	for _, u := range stale {
		if err := ua.AbortUpload(ctx, u); err != nil {
			log("warning: abort unfinished upload of %s: %v", u.Name, err)
		}
	}
	if len(stale) > 0 {
		log("aborted %d unfinished uploads left by earlier runs", len(stale))
	}
}
