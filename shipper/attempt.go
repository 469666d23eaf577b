package shipper

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
)

// attempt runs one attempt of the send and returns the shipment id.
func (r *sendRun) attempt(ctx context.Context) (string, error) {
	opts, j := r.opts, r.j
	id := j.hdr.ID
	_, hb, err := shipmentHeader(&j.hdr)
	if err != nil {
		return "", err
	}
	if archive.ObjectDigest(hb) != j.hdr.HeaderDigest {
		panic("shipper: internal error: header does not match the journal")
	}
	r.countSources()
	own, firstSlot, err := r.reuse(ctx)
	if err != nil {
		return "", err
	}
	// A fresh key for every attempt: blocks sealed before stay under
	// their own slot, and nothing is ever sealed twice under one key and
	// salt space for different plaintext.
	key, err := cipher.NewKey()
	if err != nil {
		return "", err
	}
	wrapped, err := key.Wrap(opts.Recipients...)
	if err != nil {
		return "", fmt.Errorf("wrap shipment key: %w", err)
	}
	codec, err := archive.NewCodec(key, id, archive.FormatV3, opts.Compress, opts.Jobs)
	if err != nil {
		return "", err
	}
	defer codec.Close()
	if err := r.state.reset(); err != nil {
		return "", err
	}
	p := &pipeline{ctx: ctx, tr: r.tr, id: id, opts: opts, files: r.files, state: r.state, j: j, keys: r.keys,
		codec: codec, nextSeg: j.nextSegment(), own: own}
	if r.base != nil {
		c, err := r.base.cursor(r.files)
		if err != nil {
			return "", err
		}
		defer c.close()
		p.base = c
	}

	// The header and the wrapped key go up while the blocks are sealed:
	// on a long link their round trips would otherwise delay the first
	// segment. Every attempt puts the header again (the same bytes), so a
	// retry never depends on whether an earlier attempt's header landed.
	var small errgroup.Group
	keyLanded, headerLanded := make(chan bool, 1), make(chan bool, 1)
	small.Go(func() error {
		err := r.put(ctx, id+"/"+archive.HeaderObject, hb)
		headerLanded <- err == nil
		return err
	})
	small.Go(func() error {
		slot, err := putKeySlot(ctx, r.tr, j, id, firstSlot, wrapped)
		if err == nil {
			p.slot = slot
			opts.Counters.Shipped.Add(int64(len(wrapped)))
		}
		keyLanded <- err == nil
		close(keyLanded)
		return err
	})
	p.landed = sync.OnceValue(func() bool { return <-keyLanded && <-headerLanded })
	err = p.run()
	if serr := small.Wait(); err == nil {
		err = serr
	}
	if err != nil {
		return "", err
	}
	if err := checkFolders(r.files); err != nil {
		return "", err
	}
	return id, r.finish(ctx, p, key, wrapped, hb)
}

// put puts a small object and counts it as shipped.
func (r *sendRun) put(ctx context.Context, name string, b []byte) error {
	if err := r.tr.Put(ctx, name, bytes.NewReader(b), int64(len(b))); err != nil {
		return err // it names the object
	}
	r.opts.Counters.Shipped.Add(int64(len(b)))
	return nil
}

// countSources adds the sources' sizes, and the holes known in them, to
// the counters that the time left is computed from.
func (r *sendRun) countSources() {
	for _, sf := range r.files {
		r.opts.Counters.Total.Add(sf.stamp.Size)
		r.opts.Counters.Sparse.Add(sf.unallocated())
	}
}
