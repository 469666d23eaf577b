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
	Hole      atomic.Int64 // bytes in holes, never read
	Zero      atomic.Int64 // bytes read and found all-zero, not shipped
	Data      atomic.Int64 // plaintext bytes of shipped blocks
	Unchanged atomic.Int64 // plaintext bytes of data blocks unchanged since the base, not shipped
	Shipped   atomic.Int64 // bytes of objects put or fetched (receive: fetched by this run)
	Segments  atomic.Int64
	Reused    atomic.Int64 // receive: data bytes an interrupted receive had written, reused, not fetched
}

// Reset sets every counter to zero, for a new attempt.
func (c *Counters) Reset() {
	for _, v := range []*atomic.Int64{&c.Total, &c.Done, &c.Read, &c.Hole, &c.Zero, &c.Data, &c.Unchanged, &c.Shipped, &c.Segments, &c.Reused} {
		v.Store(0)
	}
}
