package shipper

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// uploadsMem is a memTransport with unfinished uploads.
type uploadsMem struct {
	memTransport
	uploads  []Upload
	aborted  []string
	abortErr error
}

func (m *uploadsMem) Uploads(ctx context.Context, prefix string, fn func(Upload) error) error {
	for _, u := range m.uploads {
		if strings.HasPrefix(u.Name, prefix) {
			if err := fn(u); err != nil {
				return err
			}
		}
	}
	return nil
}

func (m *uploadsMem) AbortUpload(ctx context.Context, u Upload) error {
	if m.abortErr != nil {
		return m.abortErr
	}
	m.aborted = append(m.aborted, u.ID)
	return nil
}

func TestAbortLeftoverUploads(t *testing.T) {
	ctx := context.Background()
	cut := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	m := &uploadsMem{uploads: []Upload{
		{Name: "20261122T020000Z-0000000a/segments/00000001", ID: "old", Initiated: cut.Add(-time.Hour)},
		{Name: "20261122T020000Z-0000000a/segments/00000002", ID: "new", Initiated: cut.Add(time.Second)},
		{Name: "20261122T020000Z-0000000a/segments/00000003", ID: "at", Initiated: cut},
		{Name: "20261122T020000Z-0000000b/segments/00000001", ID: "other", Initiated: cut.Add(-time.Hour)},
		{Name: "not-a-shipment/x", ID: "foreign", Initiated: cut.Add(-time.Hour)},
	}}
	var logged int
	n, err := AbortLeftoverUploads(ctx, m, "20261122T020000Z-0000000a/", cut, func(string, ...any) { logged++ })
	if n != 1 || err != nil || len(m.aborted) != 1 || m.aborted[0] != "old" || logged != 1 {
		t.Errorf("aborted %v (n=%d, %v, %d logged); want only the old upload of the first shipment", m.aborted, n, err, logged)
	}
	// Through the bandwidth wrapper too.
	m.aborted = nil
	if n, err := AbortLeftoverUploads(ctx, LimitBandwidth(m, 1<<20), "", cut.Add(time.Hour), nil); n != 4 || err != nil {
		t.Errorf("through LimitBandwidth: %d, %v; want 4 (never one outside a shipment folder)", n, err)
	}
	m.abortErr = errors.New("access denied")
	if _, err := AbortLeftoverUploads(ctx, m, "", cut, nil); !errors.Is(err, m.abortErr) {
		t.Errorf("a failed abort: %v", err)
	}
	if n, err := AbortLeftoverUploads(ctx, &memTransport{}, "", cut, nil); n != 0 || err != nil {
		t.Errorf("a transport without uploads: %d, %v", n, err)
	}
}
