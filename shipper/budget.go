package shipper

import (
	"runtime"

	"github.com/coldship/coldship/archive"
)

// pipelineBudget is what the receive and verify pipelines' buffers may
// take, so that a whole receive stays within 256 MiB of memory whatever
// --jobs, --streams and --block-size say.
const pipelineBudget = 200 << 20

// clampPipeline returns the openers (jobs) and fetchers (streams) the
// memory bound allows: each opener holds a block's form and a decrypted
// record, each fetcher and opener a record from the pool. A request above
// it is lowered, with a notice.
func (sh *Shipment) clampPipeline(jobs, streams int, log func(string, ...any)) (int, int) {
	if jobs <= 0 {
		jobs = runtime.NumCPU()
	}
	if streams <= 0 {
		streams = DefaultStreams
	}
	wantJobs, wantStreams := jobs, streams
	jobs, streams = min(jobs, 4*runtime.NumCPU(), 64), min(streams, 64)
	m := sh.Manifest
	form := int64(archive.MaxFormLen(m.BlockSize))
	rec := m.MaxRecordLen()
	perJob := form + form + form/8 + 1024 + rec
	need := func() int64 { return int64(jobs)*perJob + int64(streams)*rec }
	for need() > pipelineBudget && streams > 1 {
		streams--
	}
	for need() > pipelineBudget && jobs > 1 {
		jobs--
	}
	if log != nil && (jobs < wantJobs || streams < wantStreams) {
		log("--jobs %d --streams %d: using %d and %d, which the memory bound allows at %d-byte blocks", wantJobs, wantStreams, jobs, streams, m.BlockSize)
	}
	return jobs, streams
}
