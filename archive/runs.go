package archive

import "encoding/binary"

// A form that is mostly runs of one byte value (the zeros after the few
// bytes a page holds, the 0xff of a bitmap) compresses to almost nothing,
// and zstd's encoder spends most of its time on such a small input
// building entropy tables it then hardly uses: about 5 µs for a 4 KiB
// page, more than everything else a block costs. runFrame writes the
// frame for it without an encoder: a zstd frame (RFC 8878, section 3.1.1)
// of Raw blocks for the bytes between long runs and RLE blocks for the
// runs, which any zstd decoder reads (and decodes in a memset and a copy).

const (
	zstdMagic = 0xFD2FB528
	// zstdMaxBlock is the most a block of the frame regenerates: the
	// spec's Block_Maximum_Size (128 KiB, or the window if smaller: a
	// single-segment frame's window is its content, never smaller than
	// any of its blocks).
	zstdMaxBlock = 128 << 10
	zstdRawBlock = 0
	zstdRLEBlock = 1
	// minRun is the shortest run given an RLE block of its own: the RLE
	// block (4 bytes) and the Raw block header it splits off (3) cost
	// more than the run for anything shorter.
	minRun = 16
)

// runFrame appends to dst a zstd frame whose content is src, made of Raw
// and RLE blocks, if the frame takes at most limit bytes; otherwise it
// returns ok false, having looked at little more than limit bytes of src
// that are not in long runs (so it costs little on data that has none: a
// few microseconds for 1 MiB of random bytes).
func runFrame(dst, src []byte, limit int) (frame []byte, ok bool) {
	if len(src) == 0 {
		return nil, false
	}
	start := len(dst)
	dst = appendFrameHeader(dst, uint64(len(src)))
	last := -1 // offset in dst of the last block header
	lit := 0   // src[lit:] is not yet in a block
	for lit < len(src) {
		budget := limit - (len(dst) - start)
		// Literals take at least their length: no run starting past
		// lit+budget can make the frame fit.
		s, e := nextRun(src, lit, min(len(src), lit+max(budget+1, 0)))
		if s < 0 {
			s, e = len(src), len(src)
		}
		if blocksLen(s-lit, 0)+blocksLen(e-s, 1) > budget {
			return dst[:start], false
		}
		dst, last = appendBlocks(dst, last, zstdRawBlock, src[lit:s], 0, s-lit)
		if e > s {
			dst, last = appendBlocks(dst, last, zstdRLEBlock, nil, src[s], e-s)
		}
		lit = e
	}
	dst[last] |= 1 // Last_Block
	return dst, true
}

// blocksLen is what n bytes of content take as Raw blocks (per 0) or
// RLE blocks (per 1): a 3-byte header per block, and per bytes each.
func blocksLen(n, per int) int {
	blocks := (n + zstdMaxBlock - 1) / zstdMaxBlock
	if per == 0 {
		return n + 3*blocks
	}
	return 4 * blocks
}

// nextRun returns the first run of at least minRun equal bytes of src
// that starts in [i, stop), as [s, e) with e its end; s is -1 if there is
// none. Such a run holds one of the 8-byte words at i, i+8, i+16, ...
// whole, so the words are what is looked at; a word of equal bytes is
// then extended both ways (never before i).
func nextRun(src []byte, i, stop int) (s, e int) {
	for p := i; p < stop+7 && p+8 <= len(src); p += 8 {
		w := binary.LittleEndian.Uint64(src[p:])
		if w != uint64(byte(w))*0x0101010101010101 {
			continue
		}
		b := byte(w)
		s := p
		for s > i && src[s-1] == b {
			s--
		}
		e := runEnd(src, s)
		if e-s >= minRun {
			if s >= stop {
				return -1, -1
			}
			return s, e
		}
		// Runs that start from e on hold one of e's words.
		p = e - 8
	}
	return -1, -1
}

// appendFrameHeader appends the magic number and a frame header that
// says: single segment (no window descriptor), no checksum, no
// dictionary, content size n.
func appendFrameHeader(dst []byte, n uint64) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, zstdMagic)
	const single = 1 << 5
	switch {
	case n < 256:
		return append(dst, single, byte(n))
	case n < 65536+256:
		dst = append(dst, 1<<6|single)
		return binary.LittleEndian.AppendUint16(dst, uint16(n-256))
	case n < 1<<32:
		dst = append(dst, 2<<6|single)
		return binary.LittleEndian.AppendUint32(dst, uint32(n))
	default:
		dst = append(dst, 3<<6|single)
		return binary.LittleEndian.AppendUint64(dst, n)
	}
}

// appendBlocks appends n bytes of content as blocks of type typ (none
// for n == 0), each regenerating at most zstdMaxBlock bytes: Raw blocks
// of raw, or RLE blocks of the byte b. It returns the offset of the last
// block header in dst: the last it appended, or last.
func appendBlocks(dst []byte, last int, typ byte, raw []byte, b byte, n int) ([]byte, int) {
	for n > 0 {
		k := min(n, zstdMaxBlock)
		last = len(dst)
		h := uint32(k)<<3 | uint32(typ)<<1
		dst = append(dst, byte(h), byte(h>>8), byte(h>>16))
		if typ == zstdRLEBlock {
			dst = append(dst, b)
		} else {
			dst = append(dst, raw[:k]...)
			raw = raw[k:]
		}
		n -= k
	}
	return dst, last
}

// runEnd returns the end of the run of equal bytes that starts at i.
// Zeros, the runs of a sparse image's pages, are compared 256 bytes at a
// time (a vector compare), other bytes 8 at a time.
func runEnd(src []byte, i int) int {
	b := src[i]
	v := uint64(b) * 0x0101010101010101
	j := i + 1
	for j+8 <= len(src) && binary.LittleEndian.Uint64(src[j:]) == v {
		j += 8
		if b == 0 {
			for j+len(zeroRun) <= len(src) && string(src[j:j+len(zeroRun)]) == string(zeroRun[:]) {
				j += len(zeroRun)
			}
		}
	}
	for j < len(src) && src[j] == b {
		j++
	}
	return j
}

var zeroRun [256]byte

// readRunFrame appends to dst the content of src if src is exactly one
// zstd frame of Raw and RLE blocks with a single segment, no checksum and
// no dictionary (what runFrame makes) whose content is at most limit
// bytes and fits dst's capacity; otherwise it returns ok false and src is
// for the full decoder to decode or refuse. klauspost's decoder fills an
// RLE block a byte at a time and copies every block twice, which costs as
// much as a compressed block; a frame of runs needs a clear and a copy.
func readRunFrame(dst, src []byte, limit int) (content []byte, ok bool) {
	if len(src) < 6 || binary.LittleEndian.Uint32(src) != zstdMagic {
		return nil, false
	}
	fhd := src[4]
	if fhd&(1<<5) == 0 || fhd&0x1f != 0 { // single segment; nothing else
		return nil, false
	}
	var n uint64
	p := 5 + 1<<(fhd>>6) // the header and its content size field
	if len(src) < p {
		return nil, false
	}
	switch fhd >> 6 {
	case 0:
		n = uint64(src[5])
	case 1:
		n = uint64(binary.LittleEndian.Uint16(src[5:])) + 256
	case 2:
		n = uint64(binary.LittleEndian.Uint32(src[5:]))
	default:
		n = binary.LittleEndian.Uint64(src[5:])
	}
	if n > uint64(limit) || n > uint64(cap(dst)-len(dst)) {
		return nil, false
	}
	out := dst[len(dst) : len(dst)+int(n)]
	w := 0
	for last := false; !last; {
		if len(src)-p < 3 {
			return nil, false
		}
		h := int(src[p]) | int(src[p+1])<<8 | int(src[p+2])<<16
		p += 3
		last = h&1 != 0
		size := h >> 3
		if size > zstdMaxBlock || size > len(out)-w {
			return nil, false
		}
		switch h >> 1 & 3 {
		case zstdRawBlock:
			if len(src)-p < size {
				return nil, false
			}
			copy(out[w:], src[p:p+size])
			p += size
		case zstdRLEBlock:
			if len(src)-p < 1 {
				return nil, false
			}
			fill(out[w:w+size], src[p])
			p++
		default:
			return nil, false
		}
		w += size
	}
	if w != len(out) || p != len(src) {
		return nil, false
	}
	return dst[:len(dst)+len(out)], true
}

// fill sets every byte of b to v.
func fill(b []byte, v byte) {
	if v == 0 {
		clear(b)
		return
	}
	if len(b) == 0 {
		return
	}
	b[0] = v
	for k := 1; k < len(b); k *= 2 {
		copy(b[k:], b[:k])
	}
}
