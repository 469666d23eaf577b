package blocks

import (
	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
)

// DefaultMemory is the budget for the buffers of a Read when Options
// leaves it 0: with the rest of a send (segment writers, transports, the
// Go runtime) it keeps a send's peak RSS well under 256 MiB at the usual
// block sizes.
const DefaultMemory = 96 << 20

// maxItems bounds the items of a batch: hole runs and blocks.
const maxItems = 256

// arenaSize is the size of a batch's form buffer: at least one whole
// block's form, and at least 1 MiB so that sparse blocks travel many to a
// batch.
func arenaSize(bs int64) int { return max(archive.MaxFormLen(bs), 1<<20) }

// sealedSize is the size of a batch's record buffer: the records of a full
// form buffer, each with headroom bytes before it.
func sealedSize(bs int64, headroom int) int {
	a := arenaSize(bs)
	return a + a/1024 + maxItems*(int(cipher.SealedSize(0))+16+headroom)
}

// scratchSize is a worker's compression scratch: a compressed form may be
// a little longer than the form.
func scratchSize(bs int64) int {
	f := archive.MaxFormLen(bs)
	return f + f/8 + 1024
}

// layout is how a Read spends its memory budget.
type layout struct {
	jobs, window int
	arena        int // form buffer of a batch
	sealed       int // record buffer of a batch; 0 without sealing
	scratch      int // per worker; 0 without sealing
}

func plan(bs int64, jobs, holders int, memory int64, sealing bool, headroom int) layout {
	if memory <= 0 {
		memory = DefaultMemory
	}
	l := layout{arena: arenaSize(bs)}
	if sealing {
		l.sealed, l.scratch = sealedSize(bs, headroom), scratchSize(bs)
	}
	batch := int64(l.arena + l.sealed)
	perJob := 2*batch + int64(l.scratch)
	l.jobs = max(1, min(jobs, int(memory/perJob)))
	l.window = int(max(1, min(int64(2*l.jobs+max(0, holders)), (memory-int64(l.jobs*l.scratch))/batch)))
	return l
}

// MaxJobs returns the most workers a Read of blocks of bs bytes can use
// within memory bytes of buffers (0: DefaultMemory), sealing or not: a
// caller clamps --jobs to it (Read clamps silently).
func MaxJobs(bs int64, memory int64, sealing bool) int {
	return plan(bs, 1<<30, 0, memory, sealing, 0).jobs
}
