package archive

import (
	"fmt"

	"github.com/klauspost/compress/zstd"

	"github.com/coldship/coldship/cipher"
)

// Codec compresses and seals blocks, and opens and decompresses them. It is
// safe for concurrent use.
type Codec struct {
	key      *cipher.Key
	id       string
	format   int
	compress bool
	enc      *zstd.Encoder
	dec      *zstd.Decoder
}

// NewCodec returns a Codec for the blocks of shipment id of format (whose
// records bind their place with that format's block context). compress
// selects zstd for blocks where it helps; concurrency bounds the encoder
// and decoder state kept around.
func NewCodec(key *cipher.Key, id string, format int, compress bool, concurrency int) (*Codec, error) {
	c := &Codec{key: key, id: id, format: format, compress: compress}
	var err error
	c.enc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(concurrency), zstd.WithLowerEncoderMem(true), zstd.WithEncoderCRC(false))
	if err != nil {
		return nil, err
	}
	c.dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(concurrency),
		zstd.WithDecoderMaxMemory(uint64(MaxFormLen(MaxBlockSize))), zstd.WithDecoderLowmem(true))
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Close releases the compressor state.
func (c *Codec) Close() {
	c.enc.Close()
	c.dec.Close()
}

// Seal compresses plain (when enabled and it saves at least 1/16) and seals
// it for its place, appending the record to dst. scratch is a buffer of at
// least len(plain) capacity for the compressed form.
func (c *Codec) Seal(dst, scratch, plain []byte, file uint32, block uint64) (record []byte, compressed bool, err error) {
	payload, compressed := c.payload(plain, scratch)
	record, err = c.key.Seal(dst, blockContext(c.format, c.id, file, block), payload)
	return record, compressed, err
}

// payload returns what a record of plain carries: a zstd frame of plain
// in scratch (compressed true) when compression is enabled and the frame
// saves at least 1/16 of plain, plain otherwise. It is deterministic
// (RecordLen relies on it): the same plain, the same payload.
//
// A frame of runs (runFrame) is taken without trying zstd's encoder when
// it takes at most 1/32 of plain: the encoder could save at most that
// 1/32 more, at many times the cost.
func (c *Codec) payload(plain, scratch []byte) ([]byte, bool) {
	if !c.compress {
		return plain, false
	}
	if z, ok := runFrame(scratch[:0], plain, len(plain)/32); ok {
		return z, true
	}
	if c.worthCompressing(plain, scratch) {
		z := c.enc.EncodeAll(plain, scratch[:0])
		if len(z) <= len(plain)-len(plain)/16 {
			return z, true
		}
	}
	return plain, false
}

// worthCompressing compresses a 64 KiB sample of a large block first:
// encrypted, already compressed or random data (common in disk images)
// then costs a sixteenth of a full attempt. A smaller form (a sparse
// image's block of a few pages) is not compressed when it looks random
// (looksRandom), which costs a tenth of a failed attempt.
func (c *Codec) worthCompressing(plain, scratch []byte) bool {
	const sample = 64 << 10
	if len(plain) < 2*sample {
		return !looksRandom(plain)
	}
	z := c.enc.EncodeAll(plain[:sample], scratch[:0])
	return len(z) < sample-sample/32
}

// Random data: 256 bytes sampled at an even stride take about 162
// distinct values (256 * (1 - 1/e)), with a standard deviation near 4.5.
const (
	randomSamples  = 256
	randomDistinct = 140
)

// looksRandom reports whether randomSamples bytes taken at an even stride
// from b (of at least 4 KiB) take randomDistinct distinct values or more,
// which random bytes do (the threshold is 5 standard deviations below
// their mean) and text, zeros, and data repeating at a multiple of the
// stride do not. On every 4 KiB page of a Debian system's executables and
// libraries it turned away pages that zstd would have shrunk by 1/16 or
// more for 1.0-1.7% of what zstd saves on them, none on text, and every
// page of compressed or random data.
func looksRandom(b []byte) bool {
	if len(b) < PageSize {
		return false
	}
	stride := len(b) / randomSamples
	b = b[:randomSamples*stride]
	var seen [256]uint8
	n := 0
	for i := 0; i < len(b); i += stride {
		v := b[i]
		n += int(seen[v] ^ 1)
		seen[v] = 1
	}
	return n >= randomDistinct
}

// Open authenticates a record, decompresses it if needed into dst, and
// checks that the plaintext has the expected length and digest.
func (c *Codec) Open(dst, scratch, record []byte, file uint32, block uint64, compressed bool, wantLen int64, want Digest) ([]byte, error) {
	if !compressed {
		plain, err := c.key.Open(dst[:0], blockContext(c.format, c.id, file, block), record)
		if err != nil {
			return nil, err
		}
		return checkBlock(plain, wantLen, want)
	}
	plain, err := c.openCompressed(dst, scratch, record, blockContext(c.format, c.id, file, block), int64(len(dst)))
	if err != nil {
		return nil, err
	}
	return checkBlock(plain, wantLen, want)
}

// openCompressed authenticates a compressed record and decompresses it
// into dst, refusing more than limit bytes of plaintext.
func (c *Codec) openCompressed(dst, scratch, record, context []byte, limit int64) ([]byte, error) {
	z, err := c.key.Open(scratch[:0], context, record)
	if err != nil {
		return nil, err
	}
	if int64(len(z)) > limit+limit/8+1024 {
		return nil, fmt.Errorf("compressed block larger than its plaintext: %w", ErrIntegrity)
	}
	plain, err := c.decompress(dst, z, limit)
	if err != nil {
		return nil, err
	}
	if int64(len(plain)) > limit {
		return nil, fmt.Errorf("block decompresses to more than %d bytes: %w", limit, ErrIntegrity)
	}
	return plain, nil
}

// SealForm compresses form, the form of block block (n bytes long) of
// file file (when enabled and it saves at least 1/16), and seals it in a
// format 3 record appended to dst. scratch holds at least len(form) bytes.
func (c *Codec) SealForm(dst, scratch, form []byte, file uint32, block uint64) (record []byte, compressed bool, err error) {
	if c.format < FormatV3 {
		panic("archive: internal error: SealForm on a format " + fmt.Sprint(c.format) + " codec")
	}
	return c.Seal(dst, scratch, form, file, block)
}

// OpenForm authenticates a format 3 record of block block (n bytes long)
// of file file, decompresses it into dst (MaxFormLen(n) bytes at least)
// when compressed, and checks that it is a canonical form whose digest is
// want. It returns the form and the number of data bytes it holds.
func (c *Codec) OpenForm(dst, scratch, record []byte, file uint32, block uint64, compressed bool, n int64, want Digest) ([]byte, int64, error) {
	context := BlockContextV3(c.id, file, block)
	limit := int64(MaxFormLen(n))
	var form []byte
	var err error
	if compressed {
		form, err = c.openCompressed(dst[:limit], scratch, record, context, limit)
	} else {
		form, err = c.key.Open(dst[:0], context, record)
	}
	if err != nil {
		return nil, 0, err
	}
	data, err := CheckForm(form, n)
	if err != nil {
		return nil, 0, err
	}
	if FormDigest(form, n) != want {
		return nil, 0, fmt.Errorf("block digest mismatch: %w", ErrIntegrity)
	}
	return form, data, nil
}

// decompress decodes the zstd frame z into dst[:0]: a frame of runs
// (readRunFrame) of at most limit bytes directly, anything else with the
// decoder.
func (c *Codec) decompress(dst, z []byte, limit int64) ([]byte, error) {
	if plain, ok := readRunFrame(dst[:0], z, int(limit)); ok {
		return plain, nil
	}
	plain, err := c.dec.DecodeAll(z, dst[:0])
	if err != nil {
		return nil, fmt.Errorf("decompress: %v: %w", err, ErrIntegrity)
	}
	return plain, nil
}

func checkBlock(plain []byte, wantLen int64, want Digest) ([]byte, error) {
	if int64(len(plain)) != wantLen {
		return nil, fmt.Errorf("block has %d bytes, want %d: %w", len(plain), wantLen, ErrIntegrity)
	}
	if BlockDigest(plain) != want {
		return nil, fmt.Errorf("block digest mismatch: %w", ErrIntegrity)
	}
	return plain, nil
}
