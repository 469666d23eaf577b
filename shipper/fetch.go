package shipper

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/shipper/internal/bufpool"
)

// The block reader of receive and verify: the block table is read as a
// stream (archive.OpenTable, or a format 1 or 2 manifest's own table),
// each entry the caller wants is gathered into a window, and each window
// is cut into runs of records that lie together in one segment, which
// fetchers (streams at once) read with ranged reads and openers (jobs at
// once) authenticate, decompress and check. Memory is bounded by the
// window and the buffer pool, never by the number of blocks.

// Window and run limits.
const (
	windowEntries = 4096    // table entries gathered before they are fetched
	maxGap        = 1 << 20 // a run reads through gaps smaller than this rather than ask again
	minPiece      = 8 << 20 // a run is cut into pieces of at least this (see pieceLimit)
)

// pieceLimit is the length past which a window's runs are cut, so that
// the window gives every stream a run: one SFTP channel moves at most a
// window (2 MiB) per round trip, and a 1 GiB shipment has only 16
// segments of 64 MiB, so whole segments kept half of 32 channels idle on
// a long link. Pieces of one segment are checked against its CRC32C
// together (crcTracker), in whatever order they come.
func pieceLimit(win []sourced, streams int) int64 {
	var total int64
	for i := range win {
		total += int64(win[i].e.Length)
	}
	return max(minPiece, total/int64(max(1, streams)))
}

// ofBase names the base shipment an object that is not there belongs to,
// if it is one of a base: an incremental shipment whose base was deleted
// or pruned away fails on the base's first segment it needs, and the
// operator should learn that, not only the segment's name.
func (sh *Shipment) ofBase(obj string, err error) error {
	id, _, _ := strings.Cut(obj, "/")
	if !errors.Is(err, ErrNotFound) || id == sh.Header.ID {
		return err
	}
	return fmt.Errorf("base shipment %s, which %s needs: %w", id, sh.Header.ID, err)
}

// segmentSource is a segment that holds records of the shipment: one of
// its own, or one of a base shipment's, with the codec of the key and
// shipment id that sealed its records.
type segmentSource struct {
	obj   string // object name at the destination
	seg   archive.Segment
	codec *archive.Codec
}

// segmentSources lists the shipment's own segments, then those of each
// base in order, with a codec for each (shipment, key slot); first[k] is
// the index of base k's first segment. close releases the codecs.
func (sh *Shipment) segmentSources(jobs int) (srcs []segmentSource, first []int, close func(), err error) {
	m := sh.Manifest
	var codecs []*archive.Codec
	close = func() {
		for _, c := range codecs {
			c.Close()
		}
	}
	type codecKey struct {
		key *cipher.Key
		id  string
	}
	codecOf := map[codecKey]*archive.Codec{}
	codec := func(key *cipher.Key, id string) (*archive.Codec, error) {
		if c := codecOf[codecKey{key, id}]; c != nil {
			return c, nil
		}
		c, err := archive.NewCodec(key, id, sh.Header.Format, false, jobs)
		if err != nil {
			return nil, err
		}
		codecs = append(codecs, c)
		codecOf[codecKey{key, id}] = c
		return c, nil
	}
	for _, s := range m.Segments {
		c, err := codec(sh.keys[s.Key], sh.Header.ID)
		if err != nil {
			close()
			return nil, nil, nil, err
		}
		srcs = append(srcs, segmentSource{obj: sh.Header.ID + "/" + s.Name, seg: s, codec: c})
	}
	for bi, b := range m.Bases {
		first = append(first, len(srcs))
		for _, s := range b.Segments {
			c, err := codec(sh.baseKeys[bi][s.Key], b.ID)
			if err != nil {
				close()
				return nil, nil, nil, err
			}
			srcs = append(srcs, segmentSource{obj: b.ID + "/" + s.Name, seg: s, codec: c})
		}
	}
	return srcs, first, close, nil
}

// fetch says how the block reader fetches.
type fetch struct {
	streams, jobs int
	cnt           *Counters
	// want is called for every entry of the table, in table order, from
	// one goroutine: whether to fetch it.
	want func(e *archive.TableEntry) (bool, error)
	// handle gets each opened block (its form in format 3, its plaintext
	// in formats 1 and 2, and its data bytes), from several goroutines.
	handle func(e *archive.TableEntry, payload []byte, data int64) error
}

// record is one fetched record.
type record struct {
	e   archive.TableEntry
	src int
	rec []byte
}

// batch is records read one after another into one buffer of the pool,
// on their way to an opener together: a sparse image's records are a
// hundred bytes, and a hand-off per record (a goroutine woken, often a
// thread) cost as much as a tenth of opening it.
type batch struct {
	recs []record
	buf  []byte
}

// A batch is sent once it holds maxBatch records or maxBatchBytes bytes,
// so that the openers share the records of a run, and records of 64 KiB
// or more travel one to a batch as before.
const (
	maxBatch      = 64
	maxBatchBytes = 64 << 10
)

// run is a stretch [start, end) of one segment holding wanted records.
type run struct {
	src        int
	start, end int64
	entries    []archive.TableEntry // by offset
}

// reader is one pass of the block reader over a shipment.
type reader struct {
	sh    *Shipment
	fe    fetch
	srcs  []segmentSource
	first []int
	pool  *bufpool.Pool
	crcs  *crcTracker
}

// readBlocks streams the shipment's block table through fe.want and
// fetches, opens, checks and hands to fe.handle every block it wants.
func (sh *Shipment) readBlocks(ctx context.Context, fe fetch) error {
	_, err := sh.readBlocksTracked(ctx, fe)
	return err
}

// readBlocksTracked is readBlocks, returning which segments it read whole
// and checked.
func (sh *Shipment) readBlocksTracked(ctx context.Context, fe fetch) (*crcTracker, error) {
	srcs, first, closeCodecs, err := sh.segmentSources(fe.jobs)
	if err != nil {
		return nil, err
	}
	defer closeCodecs()
	rd := &reader{sh: sh, fe: fe, srcs: srcs, first: first, crcs: newCRCTracker(srcs)}
	m := sh.Manifest
	rd.pool = bufpool.New(recordBuffers(fe.jobs), int(m.MaxRecordLen()))
	table, closeTable, err := sh.openTable(ctx)
	if err != nil {
		return nil, err
	}
	defer closeTable()

	g, gctx := errgroup.WithContext(ctx)
	runs := make(chan run, fe.streams)
	recs := make(chan batch, fe.jobs)
	g.Go(func() error {
		defer close(runs)
		return rd.dispatch(gctx, table, runs)
	})
	var fetchers sync.WaitGroup
	for range fe.streams {
		fetchers.Add(1)
		g.Go(func() error {
			defer fetchers.Done()
			for r := range runs {
				if err := rd.fetchRun(gctx, r, recs); err != nil {
					return err
				}
			}
			return nil
		})
	}
	go func() {
		fetchers.Wait()
		close(recs)
	}()
	for range fe.jobs {
		g.Go(func() error { return rd.open(gctx, recs) })
	}
	return rd.crcs, g.Wait()
}

// openTable opens the shipment's block table: the blocks object read as a
// stream (format 3), or the manifest's own (formats 1 and 2).
func (sh *Shipment) openTable(ctx context.Context) (archive.BlockTable, func(), error) {
	m := sh.Manifest
	if m.Format < archive.FormatV3 {
		return m.LegacyTable(), func() {}, nil
	}
	name := sh.Header.ID + "/" + archive.BlocksObject
	rc, ok := sh.ahead.tableReader(ctx, sh.tr, name)
	if !ok {
		var err error
		if rc, err = sh.tr.Open(ctx, name, 0, -1); err != nil {
			return nil, nil, transportErr(missingIsIntegrity(err))
		}
	}
	t, err := archive.OpenTable(transportReader{rc, name}, sh.keys[sh.slot], sh.slot, m)
	if err != nil {
		rc.Close()
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	return t, func() { rc.Close() }, nil
}

// dispatch walks the table, gathers the wanted entries into windows and
// sends each window's runs to the fetchers.
func (rd *reader) dispatch(ctx context.Context, table archive.BlockTable, runs chan<- run) error {
	win := make([]sourced, 0, windowEntries)
	for {
		e, err := table.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		ok, err := rd.fe.want(&e)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		src := int(e.Segment)
		if e.Base > 0 {
			src += rd.first[e.Base-1]
		}
		win = append(win, sourced{e, src})
		if len(win) == windowEntries {
			if err := rd.flush(ctx, win, runs); err != nil {
				return err
			}
			win = win[:0]
		}
	}
	return rd.flush(ctx, win, runs)
}

type sourced struct {
	e   archive.TableEntry
	src int
}

// flush cuts a window into runs, of at most about pieceLimit bytes, and
// hands them on.
func (rd *reader) flush(ctx context.Context, win []sourced, runs chan<- run) error {
	sort.Slice(win, func(i, j int) bool {
		return win[i].src < win[j].src || win[i].src == win[j].src && win[i].e.Offset < win[j].e.Offset
	})
	piece := pieceLimit(win, rd.fe.streams)
	for i := 0; i < len(win); {
		r := run{src: win[i].src, start: int64(win[i].e.Offset)}
		end := r.start
		j := i
		for ; j < len(win) && win[j].src == r.src; j++ {
			off := int64(win[j].e.Offset)
			if off < end {
				return fmt.Errorf("%s: records overlap at offset %d: %w", rd.srcs[r.src].obj, off, archive.ErrIntegrity)
			}
			if j > i && (off-end > maxGap || end-r.start >= piece) {
				break
			}
			end = off + int64(win[j].e.Length)
			r.entries = append(r.entries, win[j].e)
		}
		r.end = end
		select {
		case runs <- r:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		i = j
	}
	return nil
}

// fetchRun reads one run with one ranged read and hands on its records.
// A run that reaches the end of its segment reads to the object's end,
// so that the segment's size is checked; format 3 checksums every byte
// read (CRC32C), and the pieces of a segment make its checksum once they
// cover it.
func (rd *reader) fetchRun(ctx context.Context, r run, out chan<- batch) error {
	src := &rd.srcs[r.src]
	length := r.end - r.start
	toEnd := r.end == src.seg.Size
	if toEnd {
		length = -1
	}
	rc, err := rd.sh.tr.Open(ctx, src.obj, r.start, length)
	if err != nil {
		return transportErr(missingIsIntegrity(rd.sh.ofBase(src.obj, err)))
	}
	defer rc.Close()
	// Buffered: small records (sparse blocks) cost one read each otherwise.
	var rdr io.Reader = bufio.NewReaderSize(transportReader{rc, src.obj}, fetchBuffer)
	var sum hash.Hash32
	if src.seg.CRC32C != "" {
		sum = archive.NewCRC32C()
		rdr = io.TeeReader(rdr, sum)
	}
	pos := r.start
	bs := batchSender{rd: rd, done: ctx.Done(), out: out}
	defer bs.abort()
	for _, e := range r.entries {
		if gap := int64(e.Offset) - pos; gap > 0 {
			if _, err := io.CopyN(io.Discard, rdr, gap); err != nil {
				return segmentReadError(src.obj, err)
			}
			pos += gap
		}
		rec, ok := bs.next(int(e.Length))
		if !ok {
			return context.Cause(ctx)
		}
		if _, err := io.ReadFull(rdr, rec); err != nil {
			return segmentReadError(src.obj, err)
		}
		bs.add(record{e: e, src: r.src, rec: rec})
		pos += int64(e.Length)
		rd.fe.cnt.Shipped.Add(int64(e.Length))
	}
	if !bs.send() {
		return context.Cause(ctx)
	}
	if toEnd {
		rest, err := io.Copy(io.Discard, rdr)
		if err != nil {
			return segmentReadError(src.obj, err)
		}
		if pos += rest; pos != src.seg.Size {
			return fmt.Errorf("%s: %d bytes, the manifest says %d: %w", src.obj, pos, src.seg.Size, archive.ErrIntegrity)
		}
	}
	if sum != nil {
		return rd.crcs.add(r.src, r.start, pos, sum.Sum32())
	}
	return nil
}

// batchSender gathers the records a fetcher reads into batches.
type batchSender struct {
	rd   *reader
	done <-chan struct{}
	out  chan<- batch
	cur  batch
	used int // bytes of cur.buf holding records
}

// next returns where to read the next record, of n bytes (at most the
// pool's buffer size): in the current batch's buffer, or in a new one
// once the current batch is sent. ok is false when the context ended.
func (bs *batchSender) next(n int) ([]byte, bool) {
	if bs.cur.buf != nil && (bs.used+n > len(bs.cur.buf) || len(bs.cur.recs) == maxBatch || bs.used >= maxBatchBytes) {
		if !bs.send() {
			return nil, false
		}
	}
	if bs.cur.buf == nil {
		buf, ok := bs.rd.pool.Get(bs.done)
		if !ok {
			return nil, false
		}
		bs.cur, bs.used = batch{buf: buf, recs: make([]record, 0, min(maxBatch, len(buf)/max(n, 1)+1))}, 0
	}
	return bs.cur.buf[bs.used : bs.used+n], true
}

// add takes r, read into what next returned, into the batch.
func (bs *batchSender) add(r record) {
	bs.cur.recs = append(bs.cur.recs, r)
	bs.used += len(r.rec)
}

// send hands the current batch, if any, to the openers.
func (bs *batchSender) send() bool {
	if bs.cur.buf == nil {
		return true
	}
	select {
	case bs.out <- bs.cur:
		bs.cur = batch{}
		return true
	case <-bs.done:
		return false
	}
}

// abort gives back the buffer of a batch that was not sent.
func (bs *batchSender) abort() {
	if bs.cur.buf != nil {
		bs.rd.pool.Put(bs.cur.buf)
		bs.cur = batch{}
	}
}

// open authenticates, decompresses and checks the batches of records,
// and hands the blocks on.
func (rd *reader) open(ctx context.Context, batches <-chan batch) error {
	m := rd.sh.Manifest
	formLen := int64(archive.MaxFormLen(m.BlockSize))
	out := make([]byte, formLen)
	scratch := make([]byte, 0, formLen+formLen/8+1024)
	for b := range batches {
		err := rd.openBatch(ctx, b.recs, out, scratch)
		rd.pool.Put(b.buf)
		if err != nil {
			return err
		}
	}
	return nil
}

// openBatch opens the records of a batch with the opener's buffers.
func (rd *reader) openBatch(ctx context.Context, recs []record, out, scratch []byte) error {
	m := rd.sh.Manifest
	v3 := m.Format >= archive.FormatV3
	for i := range recs {
		r := &recs[i]
		e := &r.e
		f := &m.Files[e.File]
		n := archive.BlockLen(f.Size, m.BlockSize, int64(e.Block))
		src := &rd.srcs[r.src]
		// A base's record is bound to its place in the base.
		ctxFile := e.File
		if e.Base > 0 {
			ctxFile = e.BaseFile
		}
		var payload []byte
		var err error
		data := n
		if v3 {
			payload, data, err = src.codec.OpenForm(out, scratch, r.rec, ctxFile, e.Block, e.Compressed, n, e.Digest)
		} else {
			payload, err = src.codec.Open(out[:n], scratch, r.rec, ctxFile, e.Block, e.Compressed, n, e.Digest)
		}
		if err != nil {
			return fmt.Errorf("%s at offset %d (%s block %d): %w", src.obj, e.Offset, f.Path, e.Block, asIntegrity(err))
		}
		if err := rd.fe.handle(e, payload, data); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
	}
	return nil
}

// asIntegrity makes sure a failure to open a block reads as an integrity
// error whatever layer reported it.
func asIntegrity(err error) error {
	if errors.Is(err, cipher.ErrIntegrity) || errors.Is(err, archive.ErrIntegrity) {
		return err
	}
	return fmt.Errorf("%w (%w)", err, archive.ErrIntegrity)
}

func segmentReadError(name string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%s: truncated: %w", name, archive.ErrIntegrity)
	}
	return fmt.Errorf("read %s: %w", name, err)
}
