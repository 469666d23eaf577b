package cobblestone

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"io"
)

var errClosed = errors.New("chunked-encryption: write to closed Writer")

// Writer encrypts a message as a stream. It buffers up to one chunk of
// plaintext and writes each chunk to dst as soon as it fills up.
type Writer struct {
	r     *raw
	dst   io.Writer
	nonce [nonceSize]byte
	buf   [encChunkSize]byte
	n     int    // plaintext bytes buffered in buf
	chunk uint64 // number of the next chunk
	err   error  // sticky
}

// NewWriter returns a Writer that encrypts to dst under key and context,
// with a fresh random salt. It writes the header to dst before returning.
//
// The caller must call Close to write the final chunk; without it the
// message is truncated and will not decrypt.
func NewWriter(key, context []byte, dst io.Writer) (*Writer, error) {
	k, err := NewKey(key)
	if err != nil {
		return nil, err
	}
	return k.NewWriter(context, dst)
}

// NewWriter is the package's [NewWriter] under k.
func (k *Key) NewWriter(context []byte, dst io.Writer) (*Writer, error) {
	var hdr [HeaderSize]byte
	rand.Read(hdr[:SaltSize])
	w := &Writer{dst: dst}
	w.r = k.derive(hdr[:SaltSize], context, (*[CommitmentSize]byte)(hdr[SaltSize:]))
	if _, err := dst.Write(hdr[:]); err != nil {
		return nil, err
	}
	return w, nil
}

// Write encrypts p. After an error every later call returns that error.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n := 0
	for len(p) > 0 {
		// Encrypt whole chunks straight from p, skipping the copy into buf.
		// A full chunk is never the final one, so it can go out right away.
		if w.n == 0 && len(p) >= ChunkSize {
			if err := w.flush(p[:ChunkSize]); err != nil {
				return n, err
			}
			p, n = p[ChunkSize:], n+ChunkSize
			continue
		}
		k := copy(w.buf[w.n:ChunkSize], p)
		w.n += k
		p, n = p[k:], n+k
		if w.n == ChunkSize {
			if err := w.flush(w.buf[:ChunkSize]); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// flush encrypts a full chunk into buf and writes it out.
func (w *Writer) flush(chunk []byte) error {
	// The final chunk must still fit under the counter limit.
	if w.chunk+1 >= maxChunks {
		w.err = errTooLarge
		return w.err
	}
	ct := w.r.sealChunk(&w.nonce, w.buf[:0], chunk, w.chunk)
	w.chunk++
	w.n = 0
	if _, err := w.dst.Write(ct); err != nil {
		w.err = err
		return err
	}
	return nil
}

// Close encrypts and writes the final, short chunk. It does not close dst.
// Calling Close again after it succeeded does nothing; Write after Close
// returns an error.
func (w *Writer) Close() error {
	if w.err == errClosed {
		return nil
	}
	if w.err != nil {
		return w.err
	}
	ct := w.r.sealChunk(&w.nonce, w.buf[:0], w.buf[:w.n], w.chunk)
	w.n = 0
	if _, err := w.dst.Write(ct); err != nil {
		w.err = err
		return err
	}
	w.err = errClosed
	return nil
}

// Reader decrypts a message as a stream. It releases the plaintext of a
// chunk only after that chunk authenticates, and the final chunk's only
// once the end of src confirms it is final.
type Reader struct {
	r      *raw
	src    io.Reader
	nonce  [nonceSize]byte
	buf    [encChunkSize]byte
	unread []byte // authenticated plaintext not yet returned, inside buf
	chunk  uint64 // number of the next chunk
	err    error  // sticky: io.EOF after the final chunk, or the first error
}

// NewReader returns a Reader that decrypts src under key and context. It
// reads the header from src and checks the key commitment before returning,
// so a wrong key or context fails here with ErrAuth.
func NewReader(key, context []byte, src io.Reader) (*Reader, error) {
	k, err := NewKey(key)
	if err != nil {
		return nil, err
	}
	return k.NewReader(context, src)
}

// NewReader is the package's [NewReader] under k.
func (k *Key) NewReader(context []byte, src io.Reader) (*Reader, error) {
	var hdr [HeaderSize]byte
	if _, err := io.ReadFull(src, hdr[:]); err == io.EOF || err == io.ErrUnexpectedEOF {
		return nil, ErrAuth
	} else if err != nil {
		return nil, err
	}
	var commitment [CommitmentSize]byte
	r := k.derive(hdr[:SaltSize], context, &commitment)
	if subtle.ConstantTimeCompare(commitment[:], hdr[SaltSize:]) != 1 {
		return nil, ErrAuth
	}
	return &Reader{r: r, src: src}, nil
}

// Read implements io.Reader. After an error every later call returns that
// same error; in particular a failed message never ends in io.EOF.
func (r *Reader) Read(p []byte) (int, error) {
	if len(r.unread) > 0 {
		n := copy(p, r.unread)
		r.unread = r.unread[n:]
		return n, nil
	}
	if r.err != nil {
		return 0, r.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	ct, final, err := r.readChunk()
	if err != nil {
		r.err = err
		return 0, err
	}
	// Decrypt straight into p when the whole chunk fits, else in place.
	direct := len(p) >= len(ct)-TagSize
	dst := ct[:0]
	if direct {
		dst = p[:0]
	}
	out, err := r.r.openChunk(&r.nonce, dst, ct, r.chunk)
	if err != nil {
		r.err = err
		return 0, err
	}
	r.chunk++
	if final {
		r.err = io.EOF
		if len(out) == 0 {
			return 0, io.EOF
		}
	}
	if direct {
		return len(out), nil
	}
	n := copy(p, out)
	r.unread = out[n:]
	return n, nil
}

// readChunk reads the next encrypted chunk into buf. A short read means the
// end of src, so the chunk is the final one.
func (r *Reader) readChunk() (ct []byte, final bool, err error) {
	n, err := io.ReadFull(r.src, r.buf[:])
	switch {
	case err == nil:
		// A full chunk always has another chunk after it.
		if r.chunk+1 >= maxChunks {
			return nil, false, ErrAuth
		}
		return r.buf[:], false, nil
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		if n < TagSize {
			return nil, false, ErrAuth
		}
		return r.buf[:n], true, nil
	default:
		return nil, false, err
	}
}
