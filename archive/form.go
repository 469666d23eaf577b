package archive

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/zeebo/blake3"
)

// PageSize is the granularity at which format 3 tells data from zeros: a
// block's record carries only its non-zero 4 KiB pages, so a block that is
// mostly hole is read, hashed, sealed, shipped and written only where it
// holds data, and a restored image is as sparse as its source to the page.
const PageSize = 4096

// The form of a block (format 3) is the plaintext of its record, before
// compression:
//
//	page map || the non-zero pages, in order
//
// The page map has one bit per 4 KiB page of the block (bit i of the map is
// bit i%8, least significant first, of byte i/8; the bits past the last
// page are 0); a bit is set exactly when its page holds a byte that is not
// zero. Pages are 4096 bytes, except the last page of a block whose length
// is not a multiple of 4096. The form is canonical: one content, one form,
// so its digest (FormDigest) identifies the content.

// Pages returns the number of pages of a block of n bytes.
func Pages(n int64) int64 { return (n + PageSize - 1) / PageSize }

// MapLen returns the length of the page map of a block of n bytes.
func MapLen(n int64) int { return int((Pages(n) + 7) / 8) }

// MaxFormLen returns the length of the form of a block of n bytes whose
// every page holds data: the size of the buffer a FormBuilder needs.
func MaxFormLen(n int64) int { return MapLen(n) + int(n) }

// pageLen returns the length of page p of a block of n bytes.
func pageLen(n int64, p int64) int { return int(min(PageSize, n-p*PageSize)) }

var zeroPage [PageSize]byte

// isZero reports whether b holds only zero bytes.
func isZero(b []byte) bool {
	for len(b) >= PageSize {
		if string(b[:PageSize]) != string(zeroPage[:]) {
			return false
		}
		b = b[PageSize:]
	}
	return string(b) == string(zeroPage[:len(b)])
}

// FormBuilder packs a block into its form in a caller's buffer, without a
// copy for pages that hold data: the caller reads runs of pages straight
// into the place Next gives, in ascending page order, and Commit drops the
// pages that turn out to be zero. Pages never given to Next (holes) are
// zero. The zero value is unusable; use Reset.
type FormBuilder struct {
	buf  []byte
	n    int64 // block length
	ml   int   // map length
	w    int   // end of the packed pages in buf
	next int64 // first page Next may be asked for
}

// Reset starts the form of a block of n bytes in buf, which must hold at
// least MaxFormLen(n) bytes.
func (b *FormBuilder) Reset(buf []byte, n int64) {
	if n <= 0 || len(buf) < MaxFormLen(n) {
		panic("archive: internal error: form buffer too small")
	}
	b.buf, b.n, b.ml, b.next = buf, n, MapLen(n), 0
	b.w = b.ml
	clear(buf[:b.ml])
}

// Next returns where to read pages [first, first+count) of the block: the
// bytes of those pages (the last page of the block may be short).
func (b *FormBuilder) Next(first, count int64) []byte {
	if first < b.next || count <= 0 || first+count > Pages(b.n) {
		panic("archive: internal error: pages out of order or range")
	}
	end := min((first+count)*PageSize, b.n)
	return b.buf[b.w : b.w+int(end-first*PageSize)]
}

// Commit takes pages [first, first+count), read into what Next returned
// for them, into the form: the zero ones are dropped, the others kept.
// It returns how many bytes of data it kept.
func (b *FormBuilder) Commit(first, count int64) int64 {
	r := b.w
	var kept int64
	for p := first; p < first+count; p++ {
		l := pageLen(b.n, p)
		page := b.buf[r : r+l]
		r += l
		if isZero(page) {
			continue
		}
		if b.w != r-l {
			copy(b.buf[b.w:], page)
		}
		b.w += l
		kept += int64(l)
		b.buf[p/8] |= 1 << (p % 8)
	}
	b.next = first + count
	return kept
}

// Form returns the form built so far; it is empty (zero block) when no
// page held data.
func (b *FormBuilder) Form() []byte {
	if b.w == b.ml {
		return nil
	}
	return b.buf[:b.w]
}

// CheckForm checks that form is the canonical form of a block of n bytes
// that holds data: a page map of the right length with no bit past the
// last page, exactly the set pages after it, none of them zero. It returns
// the number of data bytes.
func CheckForm(form []byte, n int64) (int64, error) {
	ml := MapLen(n)
	if n <= 0 || len(form) < ml {
		return 0, fmt.Errorf("block form shorter than its page map: %w", ErrIntegrity)
	}
	pages := Pages(n)
	if extra := int64(ml)*8 - pages; extra > 0 && form[ml-1]>>(8-extra) != 0 {
		return 0, fmt.Errorf("block form maps pages past the end of the block: %w", ErrIntegrity)
	}
	r := ml
	for p := range pages {
		if form[p/8]&(1<<(p%8)) == 0 {
			continue
		}
		l := pageLen(n, p)
		if r+l > len(form) {
			return 0, fmt.Errorf("block form shorter than its page map says: %w", ErrIntegrity)
		}
		if isZero(form[r : r+l]) {
			return 0, fmt.Errorf("block form carries a zero page: %w", ErrIntegrity)
		}
		r += l
	}
	switch {
	case r != len(form):
		return 0, fmt.Errorf("block form longer than its page map says: %w", ErrIntegrity)
	case r == ml:
		return 0, fmt.Errorf("block form without data: %w", ErrIntegrity)
	}
	return int64(r - ml), nil
}

// WalkForm calls data for every run of consecutive pages of the form that
// hold data (their offset in the block and their bytes, contiguous in the
// form) and, if zero is not nil, for every run of zero pages (offset and
// length), in order. form must have passed CheckForm for a block of n bytes.
func WalkForm(form []byte, n int64, data func(off int64, b []byte) error, zero func(off, length int64) error) error {
	ml := MapLen(n)
	pages := Pages(n)
	r := ml
	for p := int64(0); p < pages; {
		set := form[p/8]&(1<<(p%8)) != 0
		q := p + 1
		for q < pages && (form[q/8]&(1<<(q%8)) != 0) == set {
			q++
		}
		off, end := p*PageSize, min(q*PageSize, n)
		var err error
		if set {
			err = data(off, form[r:r+int(end-off)])
			r += int(end - off)
		} else if zero != nil {
			err = zero(off, end-off)
		}
		if err != nil {
			return err
		}
		p = q
	}
	return nil
}

// WalkDense does for a dense block (formats 1 and 2) what WalkForm does
// for a form: runs of pages that hold data, and runs of zero pages.
func WalkDense(plain []byte, data func(off int64, b []byte) error, zero func(off, length int64) error) error {
	n := int64(len(plain))
	for off := int64(0); off < n; {
		z := isZero(plain[off:min(off+PageSize, n)])
		end := off + PageSize
		for end < n && isZero(plain[end:min(end+PageSize, n)]) == z {
			end += PageSize
		}
		end = min(end, n)
		var err error
		if !z {
			err = data(off, plain[off:end])
		} else if zero != nil {
			err = zero(off, end-off)
		}
		if err != nil {
			return err
		}
		off = end
	}
	return nil
}

const formDigestPrefix = "coldship/v3/block\x00"

// FormDigest returns the digest of a block in format 3: BLAKE3-256 of
// "coldship/v3/block" 0x00 || u64be(n) || form, n the block's length. It
// costs as much as the block holds data, not as much as it is long.
func FormDigest(form []byte, n int64) Digest {
	h := hashers.Get().(*blake3.Hasher)
	defer hashers.Put(h)
	h.Reset()
	var b [len(formDigestPrefix) + 8]byte
	copy(b[:], formDigestPrefix)
	binary.BigEndian.PutUint64(b[len(formDigestPrefix):], uint64(n))
	h.Write(b[:])
	if len(form) == 0 {
		h.Write(make([]byte, MapLen(n)))
	} else {
		h.Write(form)
	}
	var d Digest
	h.Sum(d[:0])
	return d
}

// hashers keeps BLAKE3 states (8 KiB each) for FormDigest, which runs
// once per block: a sparse image has millions of small blocks.
var hashers = sync.Pool{New: func() any { return blake3.New() }}

var zeroFormDigests sync.Map // int64 length -> Digest

// ZeroFormDigest returns the format 3 digest of a block of n zero bytes
// (a hole or a zero block): FormDigest of a page map with no bit set.
func ZeroFormDigest(n int64) Digest {
	if d, ok := zeroFormDigests.Load(n); ok {
		return d.(Digest)
	}
	d := FormDigest(nil, n)
	zeroFormDigests.Store(n, d)
	return d
}
