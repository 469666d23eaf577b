package cobblestone

import (
	"crypto/subtle"
	"errors"
	"io"
	"sync"
	"sync/atomic"
)

// ReaderAt decrypts a message with random access. It is safe for concurrent
// use, as io.ReaderAt requires.
type ReaderAt struct {
	r      *raw
	src    io.ReaderAt
	size   int64 // plaintext size implied by the ciphertext size
	chunks int64 // number of chunks, the final one included

	// lengthOK is set once the final chunk has been decrypted at its index,
	// which authenticates size.
	lengthOK atomic.Bool
}

type scratch struct {
	nonce [nonceSize]byte
	buf   [encChunkSize]byte
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// NewReaderAt returns a ReaderAt over the plaintext of the size bytes of
// ciphertext in src. It reads the header and checks the key commitment and
// that size is a possible ciphertext length before returning.
func NewReaderAt(key, context []byte, src io.ReaderAt, size int64) (*ReaderAt, error) {
	k, err := NewKey(key)
	if err != nil {
		return nil, err
	}
	return k.NewReaderAt(context, src, size)
}

// NewReaderAt is the package's [NewReaderAt] under k.
func (k *Key) NewReaderAt(context []byte, src io.ReaderAt, size int64) (*ReaderAt, error) {
	if size < HeaderSize {
		return nil, ErrAuth
	}
	ptSize, ok := rawOpenedSize(size - HeaderSize)
	if !ok {
		return nil, ErrAuth
	}
	var hdr [HeaderSize]byte
	if n, err := src.ReadAt(hdr[:], 0); n < HeaderSize {
		return nil, truncated(err)
	}
	var commitment [CommitmentSize]byte
	r := k.derive(hdr[:SaltSize], context, &commitment)
	if subtle.ConstantTimeCompare(commitment[:], hdr[SaltSize:]) != 1 {
		return nil, ErrAuth
	}
	return &ReaderAt{
		r:      r,
		src:    src,
		size:   ptSize,
		chunks: ptSize/ChunkSize + 1,
	}, nil
}

// Size returns the plaintext size implied by the ciphertext size. It is
// authenticated only once AuthenticateLength has returned nil or a read has
// reached the end of the message.
func (r *ReaderAt) Size() int64 { return r.size }

// AuthenticateLength decrypts the final chunk, which proves that Size is the
// length of the message. Call it before trusting Size, for example before
// seeking relative to the end.
func (r *ReaderAt) AuthenticateLength() error {
	if r.lengthOK.Load() {
		return nil
	}
	s := scratchPool.Get().(*scratch)
	defer scratchPool.Put(s)
	_, err := r.openChunk(s, nil, r.chunks-1)
	return err
}

// ReadAt implements io.ReaderAt over the plaintext. It returns io.EOF only
// once the length of the message is authenticated.
func (r *ReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("chunked-encryption: negative offset")
	}
	if off >= r.size {
		if err := r.AuthenticateLength(); err != nil {
			return 0, err
		}
		return 0, io.EOF
	}
	s := scratchPool.Get().(*scratch)
	defer scratchPool.Put(s)
	n := 0
	for n < len(p) && off < r.size {
		i, skip := off/ChunkSize, int(off%ChunkSize)
		want := min(len(p)-n, r.chunkLen(i)-skip)
		if skip == 0 && want == r.chunkLen(i) {
			// The whole chunk is wanted: decrypt straight into p.
			if _, err := r.openChunk(s, p[n:n:n+want], i); err != nil {
				return n, err
			}
		} else {
			pt, err := r.openChunk(s, nil, i)
			if err != nil {
				return n, err
			}
			copy(p[n:], pt[skip:skip+want])
		}
		n += want
		off += int64(want)
	}
	if n < len(p) {
		// The final chunk is already authenticated unless it is empty.
		if err := r.AuthenticateLength(); err != nil {
			return n, err
		}
		return n, io.EOF
	}
	return n, nil
}

// chunkLen returns the plaintext length of chunk i.
func (r *ReaderAt) chunkLen(i int64) int {
	if i < r.chunks-1 {
		return ChunkSize
	}
	return int(r.size % ChunkSize)
}

// openChunk reads chunk i into s.buf and decrypts it, appending to dst, or
// in place into s.buf if dst is nil.
func (r *ReaderAt) openChunk(s *scratch, dst []byte, i int64) ([]byte, error) {
	ct := s.buf[:r.chunkLen(i)+TagSize]
	if n, err := r.src.ReadAt(ct, HeaderSize+i*encChunkSize); n < len(ct) {
		return nil, truncated(err)
	}
	if dst == nil {
		dst = ct[:0]
	}
	pt, err := r.r.openChunk(&s.nonce, dst, ct, uint64(i))
	if err != nil {
		return nil, err
	}
	if i == r.chunks-1 {
		r.lengthOK.Store(true)
	}
	return pt, nil
}

// truncated maps the error of a short ReadAt: running out of ciphertext is
// an authentication failure, anything else is the I/O error it is.
func truncated(err error) error {
	if err == nil || err == io.EOF {
		return ErrAuth
	}
	return err
}
