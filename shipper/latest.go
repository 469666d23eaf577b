package shipper

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"filippo.io/age"
	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
)

// Choosing the latest shipment reads the shipments newest first, a window
// of listHeadersAtOnce at a time, and stops at the first that will do: a
// destination of a year of daily shipments costs one window's round trips,
// not a header (and, where folders are listed, a manifest's Stat) per
// shipment. Meanwhile the newest candidate's first reads are begun (see
// prefetch), so that opening it, the common case, waits for nothing more.

// candidates returns the ids of the shipments at tr, newest first. Where
// the transport lists folders (FolderLister), complete is nil and whether
// each shipment has its manifest is asked as it is read (a Stat); else the
// whole listing says which are complete.
func candidates(ctx context.Context, tr Transport) (ids []string, complete map[string]bool, err error) {
	if fl, ok := tr.(FolderLister); ok {
		err := fl.ListFolders(ctx, func(name string) error {
			if archive.ValidID(name) {
				ids = append(ids, name)
			}
			return nil
		})
		if err == nil {
			slices.Sort(ids)
			slices.Reverse(ids)
			return ids, nil, nil
		}
		if !errors.Is(err, errors.ErrUnsupported) {
			return nil, nil, fmt.Errorf("list %s: %w", tr, err)
		}
		ids = nil
	}
	complete = map[string]bool{}
	err = tr.List(ctx, "", func(oi ObjectInfo) error {
		id, rest, ok := strings.Cut(oi.Name, "/")
		if !ok || !archive.ValidID(id) {
			return nil // not ours
		}
		if _, seen := complete[id]; !seen {
			ids = append(ids, id)
		}
		complete[id] = complete[id] || rest == archive.ManifestObject
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list %s: %w", tr, err)
	}
	slices.Sort(ids)
	slices.Reverse(ids)
	return ids, complete, nil
}

// newest calls fn with the complete shipments among ids (newest first, as
// candidates returns them), in that order, until fn returns true. With
// headers, each comes with its header's fields or, when the header does
// not read, Error. Bytes is 0.
func newest(ctx context.Context, tr Transport, ids []string, complete map[string]bool, headers bool, fn func(ShipmentInfo) (bool, error)) error {
	for len(ids) > 0 {
		n := min(listHeadersAtOnce, len(ids))
		window, err := readWindow(ctx, tr, ids[:n], complete, headers)
		if err != nil {
			return err
		}
		ids = ids[n:]
		for _, si := range window {
			if stop, err := fn(si); stop || err != nil {
				return err
			}
		}
	}
	return nil
}

// readWindow reads the headers of the complete shipments among ids, at
// once, and returns those shipments in the order of ids; with complete
// nil, it asks each shipment's manifest meanwhile.
func readWindow(ctx context.Context, tr Transport, ids []string, complete map[string]bool, headers bool) ([]ShipmentInfo, error) {
	infos := make([]ShipmentInfo, len(ids))
	hasManifest := make([]bool, len(ids)) // whether each has its manifest
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(2 * listHeadersAtOnce)
	for i, id := range ids {
		infos[i] = ShipmentInfo{ID: id, Complete: true}
		if complete == nil {
			g.Go(func() error {
				name := id + "/" + archive.ManifestObject
				_, err := tr.Stat(gctx, name)
				switch {
				case errors.Is(err, ErrNotFound), errors.Is(err, ErrNotRegular):
					return nil // not complete, as a listing would show it
				case err != nil:
					return fmt.Errorf("list %s: stat %s: %w", tr, name, err)
				}
				hasManifest[i] = true
				return nil
			})
		} else if hasManifest[i] = complete[id]; !hasManifest[i] {
			continue // no header to read: not complete
		}
		if !headers {
			continue
		}
		g.Go(func() error {
			si := &infos[i]
			h, bad, err := readListedHeader(gctx, tr, id)
			switch {
			case err != nil:
				return fmt.Errorf("list %s: %w", tr, err)
			case bad != nil:
				si.Error = bad.Error()
			default:
				si.Created, si.Label, si.Base = h.Created, h.Label, h.Base
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var out []ShipmentInfo
	for i, si := range infos {
		if hasManifest[i] {
			out = append(out, si)
		}
	}
	return out, nil
}

// Latest returns the id of the newest complete shipment at tr whose
// header reads and that is not dated more than MaxClockSkew ahead of now
// (see NewestComplete): what `latest` means without trusted senders.
// With a label, only the shipments of that label (send --name) count: one
// series among several at tr. Newer complete shipments it passes over are
// named with log, except those of another label.
func Latest(ctx context.Context, tr Transport, label string, now time.Time, log func(string, ...any)) (string, error) {
	id, _, err := latest(ctx, tr, label, now, log, false)
	return id, err
}

// OpenLatest is Latest, or with trusted senders LatestTrusted, followed by
// OpenShipment of the shipment chosen (with Trusted), whose first reads
// begin while it is chosen: on a long link, two round trips sooner.
func OpenLatest(ctx context.Context, tr Transport, trusted *cipher.AllowedSigners, label string, now time.Time, log func(string, ...any),
	identities []age.Identity, opts ...OpenOption) (string, *Shipment, error) {
	var id string
	var pre *prefetch
	var err error
	if trusted == nil {
		id, pre, err = latest(ctx, tr, label, now, log, true)
	} else {
		var ti *TrustInfo
		if ti, pre, err = latestTrusted(ctx, tr, trusted, label, now, log, true); err == nil {
			id = ti.Statement.ID
			opts = append(opts, Trusted(ti))
		}
	}
	if err != nil {
		return "", nil, err
	}
	sh, err := OpenShipment(ctx, tr, id, identities, append(opts, func(sh *Shipment) { sh.pre = pre })...)
	return id, sh, err
}

// latest is Latest; with early, the newest candidate's first reads are
// begun at once and returned if it is the one chosen.
func latest(ctx context.Context, tr Transport, label string, now time.Time, log func(string, ...any), early bool) (string, *prefetch, error) {
	if log == nil {
		log = func(string, ...any) {}
	}
	id, pre, err := choose(ctx, tr, now, early, true, func(si ShipmentInfo) (bool, error) {
		if why := notPickable(si, now); why != "" {
			log("skipping %s: %s", si.ID, why)
			return false, nil
		}
		return label == "" || si.Label == label, nil
	})
	if err == nil && id == "" {
		err = fmt.Errorf("no complete shipment%s at %s: %w", labelled(label), tr, ErrNotFound)
	}
	return id, pre, err
}

// choose returns the first of the complete shipments at tr, newest first
// (see newest; with headers, each with its header's fields), that pick
// takes, or "" if none. With early, the first reads of the newest one not
// dated ahead of now are begun at once, and returned if it is chosen;
// they are stopped otherwise.
func choose(ctx context.Context, tr Transport, now time.Time, early, headers bool, pick func(ShipmentInfo) (bool, error)) (string, *prefetch, error) {
	ids, complete, err := candidates(ctx, tr)
	if err != nil {
		return "", nil, err
	}
	var pre *prefetch
	notFuture := func(id string) bool { return CheckNotFuture(id, now) == nil }
	if i := slices.IndexFunc(ids, notFuture); early && i >= 0 {
		pre = startPrefetch(ctx, tr, ids[i])
	}
	var chosen string
	err = newest(ctx, tr, ids, complete, headers, func(si ShipmentInfo) (bool, error) {
		ok, err := pick(si)
		if ok {
			chosen = si.ID
		}
		return ok, err
	})
	if err != nil || chosen == "" || pre != nil && pre.id != chosen {
		pre.stop()
		pre = nil
	}
	return chosen, pre, err
}

// notPickable says why a complete shipment is not the latest (dated too
// far ahead, or its header does not read), or "" if it can be.
func notPickable(si ShipmentInfo, now time.Time) string {
	if err := CheckNotFuture(si.ID, now); err != nil {
		return err.Error()
	}
	return si.Error
}

// prefetch is OpenShipment's first round of reads (readMetadata and the
// readAhead) of a shipment, begun before it is chosen. Nothing read is
// trusted for being read early: OpenShipment checks it as it checks its
// own reads, and a read that failed is done again.
type prefetch struct {
	id     string
	meta   func() (metadata, error)
	ahead  *readAhead
	cancel context.CancelFunc
}

// metadata is what readMetadata reads.
type metadata struct {
	h          *archive.Header
	hb, mb, ib []byte
}

func startPrefetch(ctx context.Context, tr Transport, id string) *prefetch {
	ctx, cancel := context.WithCancel(ctx)
	p := &prefetch{id: id, ahead: new(readAhead), cancel: cancel}
	p.meta = goRead(func() (metadata, error) {
		var m metadata
		var err error
		m.h, m.hb, m.mb, m.ib, err = readMetadata(ctx, tr, id)
		return m, err
	})
	p.ahead.start(ctx, tr, id)
	return p
}

// stop gives up the reads of a shipment not chosen.
func (p *prefetch) stop() {
	if p != nil {
		p.cancel()
	}
}

// take returns the metadata and the reads ahead begun for shipment id, if
// they are for it and the metadata read; the prefetch is used once.
func (p *prefetch) take(id string) (metadata, *readAhead, bool) {
	if p == nil || p.id != id {
		return metadata{}, nil, false
	}
	p.id = ""
	m, err := p.meta()
	if err != nil {
		p.cancel()
		return metadata{}, nil, false
	}
	return m, p.ahead, true
}
