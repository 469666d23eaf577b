// Package progress holds the running totals of a send or receive. It lies
// below every package of the pipelines (the block reader, the restore
// writer, the orchestration in package shipper) so that each can count
// what it does without importing the others; package shipper re-exports
// Counters for its callers.
package progress

import "sync/atomic"

// Counters are the running totals of a send or receive. They are updated
// concurrently by the pipeline and read by progress reporters.
type Counters struct {
	Total     atomic.Int64 // logical bytes of all files
	Done      atomic.Int64 // logical bytes processed (holes count at once)
	Read      atomic.Int64 // bytes read from the source files
	Hole      atomic.Int64 // bytes in holes, never read (receive: zero blocks, never fetched)
	Sparse    atomic.Int64 // bytes of Total known at the start to be holes (Hole once passed); 0: not known
	Zero      atomic.Int64 // bytes read and found zero (whole 4 KiB pages), not shipped
	Data      atomic.Int64 // bytes in the non-zero pages of blocks whose records are this shipment's own
	Unchanged atomic.Int64 // bytes in the non-zero pages of blocks unchanged since the base, not shipped
	Shipped   atomic.Int64 // bytes of objects put (send: by this run only) or fetched
	Segments  atomic.Int64 // segments put by this run

	// What an interrupted run left that this one checked and kept. Send:
	// the bytes of the segments a resumed send kept (SegmentsReused of
	// them). Receive: the data bytes an interrupted receive had written,
	// reused instead of fetched.
	Reused         atomic.Int64
	SegmentsReused atomic.Int64
}

// Left returns the bytes still to be read or fetched: the logical bytes
// not yet done, less the holes still ahead (as far as Sparse knows them),
// which will be passed at once.
func (c *Counters) Left() int64 {
	left := c.Total.Load() - c.Done.Load()
	if ahead := c.Sparse.Load() - c.Hole.Load(); ahead > 0 {
		left -= ahead
	}
	return left
}

// Reset sets every counter to zero.
func (c *Counters) Reset() {
	for _, v := range append(c.PerAttempt(), &c.Shipped, &c.Segments, &c.Reused, &c.SegmentsReused) {
		v.Store(0)
	}
}

// PerAttempt returns the counters that an attempt of a send counts from
// zero again: those of reading the sources (what was put and reused
// counts for the whole run).
func (c *Counters) PerAttempt() []*atomic.Int64 {
	return []*atomic.Int64{&c.Total, &c.Done, &c.Read, &c.Hole, &c.Sparse, &c.Zero, &c.Data, &c.Unchanged}
}
