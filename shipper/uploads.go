package shipper

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/coldship/coldship/archive"
)

// AbortLeftoverUploads aborts every unfinished upload (an S3 multipart
// upload) under prefix that was initiated before startedBefore, so that the
// parts of killed or failed runs stop costing storage. It returns how many
// it aborted. A transport that keeps no unfinished uploads apart from its
// objects (not an UploadAborter) has none: 0, nil.
//
// Call it only while no other run may be uploading under prefix (after
// taking the destination's lock), with startedBefore no later than the
// start of this run's own uploads; the transport's clock decides
// Initiated, so allow for skew. log, if not nil, is told of each upload
// aborted. Failing to list or abort is returned: the uploads stay for the
// next run, so callers may treat it as a warning.
func AbortLeftoverUploads(ctx context.Context, tr Transport, prefix string, startedBefore time.Time, log func(string, ...any)) (int, error) {
	return abortUploads(ctx, tr, prefix, startedBefore, nil, log)
}

// abortUploads is AbortLeftoverUploads, but that it leaves alone the
// uploads of the names that running (if not nil) says a send may still
// be writing.
func abortUploads(ctx context.Context, tr Transport, prefix string, startedBefore time.Time, running func(name string) bool, log func(string, ...any)) (int, error) {
	ua, ok := tr.(UploadAborter)
	if !ok {
		return 0, nil
	}
	n := 0
	err := ua.Uploads(ctx, prefix, func(u Upload) error {
		// Only uploads into shipment folders are coldship's own.
		id, _, _ := strings.Cut(u.Name, "/")
		if !u.Initiated.Before(startedBefore) || !archive.ValidID(id) || (running != nil && running(u.Name)) {
			return nil
		}
		if err := ua.AbortUpload(ctx, u); err != nil {
			return err
		}
		n++
		if log != nil {
			log("aborted an unfinished upload of %s (started %s) left by an earlier run", u.Name, u.Initiated.Local().Format(time.DateTime))
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("abort unfinished uploads at %s: %w", tr, err)
	}
	if pr, ok := tr.(probeRemover); ok && prefix == "" {
		if _, err := pr.RemoveLeftoverProbes(ctx, startedBefore); err != nil {
			return n, fmt.Errorf("remove leftover probe objects at %s: %w", tr, err)
		}
	}
	return n, nil
}

// probeRemover is a transport that writes probe objects (S3: whether the
// server honours conditional writes), which a killed process leaves.
type probeRemover interface {
	RemoveLeftoverProbes(ctx context.Context, startedBefore time.Time) (int, error)
}
