package shipper

import (
	"fmt"
	"sort"
	"sync"

	"github.com/coldship/coldship/archive"
)

// crcTracker checks format 3 segments against their CRC32C although they
// are read as ranges, by several fetchers, in any order: each range read
// brings its own CRC32C, adjacent ranges are combined
// (archive.CRC32CCombine), and once the ranges of a segment cover it whole
// the result must equal the manifest's. A segment of which only some
// records are needed (an update, a base) is never covered: its records are
// still authenticated one by one.
type crcTracker struct {
	mu   sync.Mutex
	srcs []segmentSource
	segs map[int]*crcPieces
}

type crcPieces struct {
	p       []crcPiece // disjoint, by start
	checked bool
	off     bool // gave up: overlapping or too scattered ranges
}

type crcPiece struct {
	start, end int64
	crc        uint32
}

// maxPieces bounds what is kept of a segment read in scattered ranges.
const maxPieces = 1024

func newCRCTracker(srcs []segmentSource) *crcTracker {
	return &crcTracker{srcs: srcs, segs: map[int]*crcPieces{}}
}

// add records that [start, end) of source src has the CRC32C crc.
func (t *crcTracker) add(src int, start, end int64, crc uint32) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.segs[src]
	if s == nil {
		s = &crcPieces{}
		t.segs[src] = s
	}
	if s.off || s.checked || start >= end {
		return nil
	}
	i := sort.Search(len(s.p), func(i int) bool { return s.p[i].start >= start })
	if (i > 0 && s.p[i-1].end > start) || (i < len(s.p) && s.p[i].start < end) {
		s.off, s.p = true, nil
		return nil
	}
	s.p = append(s.p, crcPiece{})
	copy(s.p[i+1:], s.p[i:])
	s.p[i] = crcPiece{start, end, crc}
	if i+1 < len(s.p) && s.p[i+1].start == end {
		s.p[i].crc = archive.CRC32CCombine(s.p[i].crc, s.p[i+1].crc, s.p[i+1].end-s.p[i+1].start)
		s.p[i].end = s.p[i+1].end
		s.p = append(s.p[:i+1], s.p[i+2:]...)
	}
	if i > 0 && s.p[i-1].end == start {
		s.p[i-1].crc = archive.CRC32CCombine(s.p[i-1].crc, s.p[i].crc, s.p[i].end-s.p[i].start)
		s.p[i-1].end = s.p[i].end
		s.p = append(s.p[:i], s.p[i+1:]...)
	}
	seg := t.srcs[src].seg
	if len(s.p) == 1 && s.p[0].start == 0 && s.p[0].end == seg.Size {
		s.checked = true
		if got := archive.CRC32CString(s.p[0].crc); got != seg.CRC32C {
			return fmt.Errorf("%s: CRC32C %s, the manifest says %s: %w", t.srcs[src].obj, got, seg.CRC32C, archive.ErrIntegrity)
		}
		s.p = nil
	}
	if len(s.p) > maxPieces {
		s.off, s.p = true, nil
	}
	return nil
}

// checked reports whether source src was read whole and found right.
func (t *crcTracker) checked(src int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.segs[src]
	return s != nil && s.checked
}
