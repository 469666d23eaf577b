package shipper

import (
	"bufio"
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/coldship/coldship/archive"
)

// A journal's records are trusted only as far as they can be checked: a
// segment is reused only if its records, as the journal lists them, tile
// it exactly (offsets are re-derived as the running sum of lengths, from
// 0 to the segment's size), ascend by (file, block), and name blocks of
// the shipment's files, and (for a segment of an earlier run, read back)
// each record at the place the journal gives it begins with the salt and
// commitment its tag was made over; and a record is reused for a block
// only if the block, read again now, has the keyed digest the record was
// sealed from.

// journalReader reads the records of one segment from the journal, in
// order, deriving their offsets.
type journalReader struct {
	j    *journal
	seg  *journalSegment
	next int // piece
	r    *bufio.Reader
	left int // records left in the piece
	off  uint64
	buf  [journalRecord]byte
}

func newJournalReader(j *journal, seg *journalSegment) *journalReader {
	return &journalReader{j: j, seg: seg}
}

// read returns the next record as a table entry (Segment: the segment's
// number; Digest: the keyed digest), or io.EOF after the last.
func (r *journalReader) read() (archive.TableEntry, error) {
	for r.left == 0 {
		if r.next == len(r.seg.pieces) {
			return archive.TableEntry{}, io.EOF
		}
		p := r.seg.pieces[r.next]
		r.next++
		sr := io.NewSectionReader(r.j.f, p.off, int64(p.count)*journalRecord)
		if r.r == nil {
			r.r = bufio.NewReaderSize(sr, 4<<10)
		} else {
			r.r.Reset(sr)
		}
		r.left = p.count
	}
	if _, err := io.ReadFull(r.r, r.buf[:]); err != nil {
		return archive.TableEntry{}, fmt.Errorf("resume journal: %w", err)
	}
	r.left--
	b := r.buf[:journalRecordHead]
	e := archive.TableEntry{File: binary.BigEndian.Uint32(b), Block: binary.BigEndian.Uint64(b[4:]),
		Segment: uint32(r.seg.n), Offset: r.off, Length: binary.BigEndian.Uint32(b[12:]), Compressed: b[16] == 1}
	copy(e.Digest[:], b[17:])
	if b[16] > 1 {
		return e, errors.New("bad flags")
	}
	r.off += uint64(e.Length)
	return e, nil
}

// tagged returns the record read last, with its tag.
func (r *journalReader) tagged() []byte { return r.buf[:] }

// checkSegmentRecords checks that the journal's records of seg tile it,
// ascend, and lie in the shipment's files (files[i] is nil for a
// directory; sizes in blocks).
func checkSegmentRecords(j *journal, seg *journalSegment, nblocks []int64, maxRecord int64) error {
	r := newJournalReader(j, seg)
	var prev archive.TableEntry
	count := int64(0)
	for {
		e, err := r.read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		switch {
		case int(e.File) >= len(nblocks) || int64(e.Block) >= nblocks[e.File]:
			return fmt.Errorf("record of block %d of file %d: not a block of the shipment", e.Block, e.File)
		case count > 0 && !(prev.File < e.File || prev.File == e.File && prev.Block < e.Block):
			return fmt.Errorf("records out of order at block %d of file %d", e.Block, e.File)
		case e.Length == 0 || int64(e.Length) > maxRecord:
			return fmt.Errorf("record of block %d of file %d: bad length", e.Block, e.File)
		}
		prev = e
		count++
	}
	if count != seg.records || int64(r.off) != seg.Size {
		return fmt.Errorf("%d records of %d bytes in all do not make the segment (%d records, %d bytes)", count, r.off, seg.records, seg.Size)
	}
	return nil
}

// ownRecords merges, in (file, block) order, the records of the segments
// an earlier attempt completed: each segment's records ascend, so a heap
// of one reader per segment does it in memory of one small buffer per
// segment.
type ownRecords struct {
	h recordHeap
}

type recordHead struct {
	r    *journalReader
	head archive.TableEntry
}

type recordHeap []*recordHead

func (h recordHeap) Len() int { return len(h) }
func (h recordHeap) Less(a, b int) bool {
	x, y := &h[a].head, &h[b].head
	return x.File < y.File || x.File == y.File && (x.Block < y.Block || x.Block == y.Block && x.Segment < y.Segment)
}
func (h recordHeap) Swap(a, b int) { h[a], h[b] = h[b], h[a] }
func (h *recordHeap) Push(x any)   { *h = append(*h, x.(*recordHead)) }
func (h *recordHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func newOwnRecords(j *journal, segs []*journalSegment) (*ownRecords, error) {
	o := &ownRecords{}
	for _, s := range segs {
		rh := &recordHead{r: newJournalReader(j, s)}
		e, err := rh.r.read()
		if err == io.EOF {
			continue
		}
		if err != nil {
			return nil, err
		}
		rh.head = e
		o.h = append(o.h, rh)
	}
	heap.Init(&o.h)
	return o, nil
}

// lookup returns the record for block block of file file, if an earlier
// attempt sealed one; calls come in (file, block) order.
func (o *ownRecords) lookup(file int, block int64) (archive.TableEntry, bool, error) {
	var found archive.TableEntry
	ok := false
	for len(o.h) > 0 {
		top := o.h[0]
		if int64(top.head.File) > int64(file) || int(top.head.File) == file && int64(top.head.Block) > block {
			break
		}
		if int(top.head.File) == file && int64(top.head.Block) == block && !ok {
			found, ok = top.head, true
		}
		e, err := top.r.read()
		switch {
		case err == io.EOF:
			heap.Pop(&o.h)
		case err != nil:
			return found, false, err
		default:
			top.head = e
			heap.Fix(&o.h, 0)
		}
	}
	return found, ok, nil
}
