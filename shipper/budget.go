package shipper

import (
	"runtime"

	"github.com/coldship/coldship/archive"
)

// recordBuffers is the size of the record pool for jobs openers: one
// record each being opened, one each waiting, and two more being read. A
// fetcher waits for a free one; the transport's own read-ahead (SFTP: a
// budget shared by all channels; S3: a GET per stream) keeps the link busy
// meanwhile, so that a buffer per fetcher (32 at 100 ms over SFTP) only
// added to the peak memory: 227 -> 168 MiB for a 1 GiB receive at 100 ms,
// in the same time.
func recordBuffers(jobs int) int { return 2*jobs + 2 }

// fetchBuffer is what a fetcher reads a run of records through.
const fetchBuffer = 256 << 10

// pipelineBudget is what the receive and verify pipelines' buffers may
// take, so that a whole receive stays within 256 MiB of memory whatever
// --jobs, --streams and --block-size say: with the transport's read-ahead
// (SFTP's 64 MiB budget) and the garbage collector's slack on top.
// (At 200 MiB, --jobs 8 --streams 32 over SFTP peaked at 266 MiB.)
const pipelineBudget = 150 << 20

// clampPipeline returns the openers (jobs) and fetchers (streams) the
// memory bound allows: each opener holds a block's form, a decompression
// scratch and a decrypted record; the record pool (recordBuffers) holds
// the records on their way to the openers; each fetcher its read buffer
// and about a record of the transport's read-ahead.
// A request above it is lowered, with a notice.
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
	need := func() int64 {
		return int64(jobs)*perJob + int64(recordBuffers(jobs))*rec + int64(streams)*(fetchBuffer+rec)
	}
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
