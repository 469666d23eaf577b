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
	compress bool
	enc      *zstd.Encoder
	dec      *zstd.Decoder
}

// NewCodec returns a Codec for the blocks of shipment id. compress selects
// zstd for blocks where it helps; concurrency bounds the encoder and
// decoder state kept around.
func NewCodec(key *cipher.Key, id string, compress bool, concurrency int) (*Codec, error) {
	c := &Codec{key: key, id: id, compress: compress}
	var err error
	c.enc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(concurrency), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, err
	}
	c.dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(concurrency),
		zstd.WithDecoderMaxMemory(MaxBlockSize), zstd.WithDecoderLowmem(true))
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
	payload := plain
	if c.compress && c.worthCompressing(plain, scratch) {
		z := c.enc.EncodeAll(plain, scratch[:0])
		if len(z) <= len(plain)-len(plain)/16 {
			payload, compressed = z, true
		}
	}
	record, err = c.key.Seal(dst, BlockContext(c.id, file, block), payload)
	return record, compressed, err
}

// worthCompressing compresses a 64 KiB sample of a large block first:
// encrypted, already compressed or random data (common in disk images)
// then costs a sixteenth of a full attempt.
func (c *Codec) worthCompressing(plain, scratch []byte) bool {
	const sample = 64 << 10
	if len(plain) < 2*sample {
		return true
	}
	z := c.enc.EncodeAll(plain[:sample], scratch[:0])
	return len(z) < sample-sample/32
}

// Open authenticates a record, decompresses it if needed into dst, and
// checks that the plaintext has the expected length and digest.
func (c *Codec) Open(dst, scratch, record []byte, file uint32, block uint64, compressed bool, wantLen int64, want Digest) ([]byte, error) {
	if !compressed {
		plain, err := c.key.Open(dst[:0], BlockContext(c.id, file, block), record)
		if err != nil {
			return nil, err
		}
		return checkBlock(plain, wantLen, want)
	}
	z, err := c.key.Open(scratch[:0], BlockContext(c.id, file, block), record)
	if err != nil {
		return nil, err
	}
	if int64(len(z)) > wantLen+wantLen/8+1024 {
		return nil, fmt.Errorf("compressed block larger than its plaintext: %w", ErrIntegrity)
	}
	plain, err := c.dec.DecodeAll(z, dst[:0])
	if err != nil {
		return nil, fmt.Errorf("decompress: %v: %w", err, ErrIntegrity)
	}
	return checkBlock(plain, wantLen, want)
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
