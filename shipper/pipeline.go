package shipper

import (
	"context"
	"fmt"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper/blocks"
)

// prior is what a send knows of a block before it reads it: the record of
// an earlier attempt of this shipment (own) and the base's record (base),
// each with the keyed digest of the block it holds (in Digest). The
// worker that hashes the block decides which, if any, serves (use).
type prior struct {
	own, base       archive.TableEntry
	hasOwn, hasBase bool
	kd              archive.Digest // the block's keyed digest
	use             byte
	crc             uint32 // useNew: the CRC32C of the record
}

const (
	useNew  byte = iota // sealed into a new record
	useOwn              // a record an earlier attempt put
	useBase             // the base's record: unchanged since the base
)

// pipeline is one attempt's run of the block reader into the segment
// writers. Memory is the reader's window of batches (see blocks.Read): a
// batch goes from the reader to one segment writer, which writes its new
// records, writes the entries of its data blocks into the per-block state
// and gives the batch back.
type pipeline struct {
	ctx     context.Context
	tr      Transport
	id      string
	slot    int
	opts    *SendOptions
	files   []*sendFile
	state   *blockState
	j       *journal
	keys    *stateKeys
	codec   *archive.Codec
	landed  func() bool // the header and the key object are at the destination
	nextSeg int
	own     *ownRecords // records of earlier attempts to reuse, or nil
	base    *baseCursor // the base's records, or nil

	entries  int64             // data blocks delivered so far (emit only)
	usedOwn  map[int]bool      // segment numbers of earlier attempts in use (emit only)
	usedBase map[[2]int]bool   // (DR shipment, segment) of the base in use (emit only)
	scratch  sync.Pool         // of *[]byte: compression scratch for recordFits
	mu       sync.Mutex        // guards what follows
	newSegs  []archive.Segment // complete this attempt
	segNums  map[string]int
}

// maxHeld bounds the batches the segment writers are counted to hold (see
// blocks.Options.Holders): through a 100 or 200 ms link, 16 started the 32
// writers as fast as 32 did (1 GiB over SFTP, back to back), with 34 MiB
// less of peak RSS, which S3's part pool needs beside them.
const maxHeld = 16

// placedBatch is a batch on its way to a segment writer, with the ordinal of
// its first data block.
type placedBatch struct {
	b   *blocks.Batch[prior]
	ord int64
}

// run reads every source and puts the new records into segments.
func (p *pipeline) run() error {
	p.usedOwn, p.usedBase, p.segNums = map[int]bool{}, map[[2]int]bool{}, map[string]int{}
	p.scratch.New = func() any {
		b := make([]byte, archive.MaxFormLen(p.opts.BlockSize)+archive.MaxFormLen(p.opts.BlockSize)/8+1024)
		return &b
	}
	for _, sf := range p.files {
		if sf.f != nil {
			sf.digest = archive.NewFileDigester(archive.FormatV3, sf.stamp.Size, p.opts.BlockSize)
			sf.dataBlocks, sf.dataBytes, sf.firstEntry = 0, 0, 0
		}
	}
	g, gctx := errgroup.WithContext(p.ctx)
	batches := make(chan placedBatch, p.opts.Streams)
	segCounter := newCounter(p.nextSeg)
	g.Go(func() error {
		defer close(batches)
		return blocks.Read(gctx, readerFiles(p.files), blocks.Options[prior]{
			BlockSize: p.opts.BlockSize, Jobs: p.opts.Jobs, Holders: min(p.opts.Streams, maxHeld), Counters: p.opts.Counters,
			Prior: p.lookup, Seal: p.decide,
			Sealer: p.seal,
		}, func(b *blocks.Batch[prior]) error { return p.emit(gctx, b, batches) })
	})
	for i := range p.opts.Streams {
		g.Go(func() error {
			// A writer whose put would wait for its stream to be made
			// would hold batches meanwhile, and the reader's window of
			// them is shared: the streams that are up would go short.
			if err := waitStreams(gctx, p.tr, i+1); err != nil {
				return err
			}
			w := &stream{p: p, ctx: gctx, g: g, seg: segCounter, finishing: make(chan struct{}, 1)}
			return w.run(batches)
		})
	}
	return g.Wait()
}

// seal is the reader's Sealer. It takes the record's CRC32C at once, while
// the record is still in the CPU's cache: the segment writer combines
// them (a CRC32C of 1 GiB of records in the segment writer, from memory,
// took a tenth of the send's CPU).
func (p *pipeline) seal(b *blocks.Block[prior], dst, scratch []byte) ([]byte, bool, error) {
	rec, z, err := p.codec.SealForm(dst, scratch, b.Form, uint32(b.File), uint64(b.Index))
	if err == nil {
		b.Prior.crc = archive.CRC32CSum(rec)
	}
	return rec, z, err
}

// lookup is the reader's Prior: called in (file, block) order.
func (p *pipeline) lookup(file int, block int64) (prior, error) {
	var pr prior
	var err error
	if p.own != nil {
		if pr.own, pr.hasOwn, err = p.own.lookup(file, block); err != nil {
			return pr, err
		}
	}
	if p.base != nil {
		if pr.base, pr.hasBase, err = p.base.lookup(file, block); err != nil {
			return pr, err
		}
	}
	return pr, nil
}

// decide is the reader's Seal: a block whose keyed digest matches a
// record already at the destination is not sealed again. A record of an
// earlier attempt must also have the length (and compression) that the
// form read now gives: the journal's lengths place every record of its
// segment, so a wrong one would misplace the others.
func (p *pipeline) decide(b *blocks.Block[prior]) bool {
	pr := &b.Prior
	pr.kd = p.keys.keyedDigest(b.Index, b.Digest)
	switch {
	case pr.hasOwn && pr.own.Digest == pr.kd && p.recordFits(b.Form, &pr.own):
		pr.use = useOwn
	case pr.hasBase && pr.base.Digest == pr.kd:
		pr.use = useBase
	default:
		pr.use = useNew
	}
	return pr.use == useNew
}

// recordFits reports whether a record of an earlier attempt has the
// length and compression that sealing form gives.
func (p *pipeline) recordFits(form []byte, e *archive.TableEntry) bool {
	scratch := p.scratch.Get().(*[]byte)
	defer p.scratch.Put(scratch)
	n, z := p.codec.RecordLen(*scratch, form)
	return n == int64(e.Length) && z == e.Compressed
}

// emit takes the batches in order: it numbers their data blocks, adds them
// to their files' digests and counts, and hands the batch to the writers.
func (p *pipeline) emit(ctx context.Context, b *blocks.Batch[prior], out chan<- placedBatch) error {
	cnt := p.opts.Counters
	ord := p.entries
	for i := range b.Blocks {
		blk := &b.Blocks[i]
		if blk.Kind != blocks.Data {
			continue
		}
		sf := p.files[blk.File]
		if sf.dataBlocks == 0 {
			sf.firstEntry = p.entries
		}
		if err := sf.digest.Add(blk.Index, blk.Digest); err != nil {
			return fmt.Errorf("shipper: internal error: %v", err)
		}
		sf.dataBlocks++
		sf.dataBytes += blk.Data
		p.entries++
		switch blk.Prior.use {
		case useBase:
			cnt.Unchanged.Add(blk.Data)
			p.usedBase[[2]int{int(blk.Prior.base.Base) - 1, int(blk.Prior.base.Segment)}] = true
		case useOwn:
			cnt.Data.Add(blk.Data)
			p.usedOwn[int(blk.Prior.own.Segment)] = true
		default:
			cnt.Data.Add(blk.Data)
		}
	}
	select {
	case out <- placedBatch{b, ord}:
		return nil
	case <-ctx.Done():
		b.Release()
		return ctx.Err()
	}
}

// segmentDone records a segment complete at the destination.
func (p *pipeline) segmentDone(n int, s archive.Segment, records int64) {
	s.Key = p.slot
	p.j.addSegment(n, s, records)
	p.mu.Lock()
	p.newSegs = append(p.newSegs, s)
	p.segNums[s.Name] = n
	p.mu.Unlock()
	p.opts.Counters.Segments.Add(1)
}
