package shipper

import (
	"context"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper/blocks"
)

// counter hands out segment numbers.
type counter struct{ v atomic.Int64 }

func newCounter(next int) *counter {
	c := &counter{}
	c.v.Store(int64(next - 1))
	return c
}

func (c *counter) next() int { return int(c.v.Add(1)) }

// stream is one segment writer: it takes whole batches, in the order the
// reader delivers them, so the records of each of its segments ascend by
// (file, block).
type stream struct {
	p         *pipeline
	ctx       context.Context
	g         *errgroup.Group
	seg       *counter
	cur       *segmentWriter
	records   int64  // records in cur
	recs      []byte // journal records written into cur, not yet recorded
	entries   []byte // per-block state entries of the batch
	finishing chan struct{}
}

func (w *stream) run(batches <-chan placedBatch) error {
	defer func() {
		if w.cur != nil {
			w.cur.abort()
		}
	}()
	for pb := range batches {
		err := w.batch(pb)
		pb.b.Release()
		if err != nil {
			return err
		}
	}
	if w.cur != nil {
		return w.finish()
	}
	return nil
}

// batch writes the new records of a batch and the state entries of all
// its data blocks.
func (w *stream) batch(pb placedBatch) error {
	p := w.p
	w.entries = w.entries[:0]
	for i := range pb.b.Blocks {
		blk := &pb.b.Blocks[i]
		if blk.Kind != blocks.Data {
			continue
		}
		e := archive.TableEntry{File: uint32(blk.File), Block: uint64(blk.Index), Digest: blk.Digest}
		switch pr := &blk.Prior; pr.use {
		case useOwn:
			e.Segment, e.Offset, e.Length, e.Compressed = pr.own.Segment, pr.own.Offset, pr.own.Length, pr.own.Compressed
		case useBase:
			e.Base, e.BaseFile, e.Segment, e.Offset = pr.base.Base, pr.base.BaseFile, pr.base.Segment, pr.base.Offset
			e.Length, e.Compressed = pr.base.Length, pr.base.Compressed
		default:
			if err := w.write(blk, &e); err != nil {
				return err
			}
		}
		k := len(w.entries)
		w.entries = append(w.entries, make([]byte, stateEntrySize)...)
		putEntry(w.entries[k:], &e, &blk.Prior.kd)
		if w.cur != nil && w.cur.size >= p.opts.SegmentSize {
			if err := w.finish(); err != nil {
				return err
			}
		}
	}
	w.flushRecords()
	return p.state.put(pb.ord, w.entries)
}

// write puts a block's new record into the current segment.
func (w *stream) write(blk *blocks.Block[prior], e *archive.TableEntry) error {
	if w.cur == nil {
		w.cur, w.records = openSegment(w.ctx, w.p.tr, w.p.id, w.seg.next()), 0
	}
	e.Segment, e.Offset, e.Length, e.Compressed = uint32(w.cur.n), uint64(w.cur.size), uint32(len(blk.Record)), blk.Compressed
	if err := w.cur.write(blk.Record, blk.Prior.crc); err != nil {
		return err
	}
	w.records++
	w.p.opts.Counters.Shipped.Add(int64(len(blk.Record)))
	k := len(w.recs)
	w.recs = append(w.recs, make([]byte, journalRecord)...)
	journalRecordOf(w.recs[k:], e.File, e.Block, e.Length, e.Compressed, &blk.Prior.kd)
	tag := w.p.keys.recordTag(w.recs[k:], blk.Record[:sealedHead])
	copy(w.recs[k+journalRecordHead:], tag[:])
	return nil
}

// flushRecords records in the journal the records written into the
// current segment since the last flush.
func (w *stream) flushRecords() {
	if len(w.recs) > 0 {
		w.p.j.addRecords(w.cur.n, w.recs)
		w.recs = w.recs[:0]
	}
}

// finish ends the current segment. The transport completes it (syncs,
// renames: round trips on a WAN) while the stream writes the next one;
// one at a time per stream, so that a slow finish holds back the stream.
func (w *stream) finish() error {
	w.flushRecords()
	select {
	case w.finishing <- struct{}{}:
	case <-w.ctx.Done():
		w.cur.abort()
		w.cur = nil
		return w.ctx.Err()
	}
	sw, records := w.cur, w.records
	w.cur = nil
	sw.end()
	w.g.Go(func() error {
		defer func() { <-w.finishing }()
		s, err := sw.close()
		if err != nil {
			return err
		}
		// A segment counts as complete (for the journal, and so for a
		// resumed send) only once the key that sealed it and the
		// shipment's header are at the destination too: a send killed
		// with a complete segment in its journal resumes (a resume needs
		// the header), and leaves no header half put.
		if w.p.landed() {
			w.p.segmentDone(sw.n, s, records)
		}
		return nil
	})
	return nil
}
