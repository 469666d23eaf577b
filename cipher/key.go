package cipher

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"

	"github.com/coldship/coldship/cipher/internal/cobblestone"
)

// ErrIntegrity means data was tampered with, corrupted or truncated: a
// record that does not authenticate, or a wrapped key that is malformed.
var ErrIntegrity = errors.New("integrity check failed")

// Key is a shipment key: 32 random bytes, never written to disk unwrapped
// (see [Key.Wrap]). It is safe for concurrent use.
//
// Printing a Key with the fmt package never shows its bytes.
type Key struct {
	b [32]byte
	c *cobblestone.Key // b made ready for the record layer: see newKey
}

// NewKey returns a new random shipment key.
func NewKey() (*Key, error) {
	var b [32]byte
	rand.Read(b[:])
	defer clear(b[:])
	return keyOf(b[:]), nil
}

// keyOf makes a Key of 32 bytes. The record layer keys its key derivation
// (HMAC-SHA-512) once per Key, not once per record.
func keyOf(b []byte) *Key {
	k := new(Key)
	copy(k.b[:], b)
	c, err := cobblestone.NewKey(k.b[:])
	if err != nil {
		panic("cipher: internal error: " + err.Error())
	}
	k.c = c
	return k
}

// Format keeps the key out of logs and error messages whatever the verb.
func (Key) Format(f fmt.State, verb rune) { io.WriteString(f, "cipher.Key(REDACTED)") }

// SealedSize returns the exact size of the record that Seal or a Writer
// produces for n bytes of plaintext. It panics if n is negative.
func SealedSize(n int64) int64 { return cobblestone.SealedSize(n) }

// Seal encrypts plaintext into a record bound to context and appends it to
// dst. Use plaintext[:0] as dst to encrypt in place; otherwise dst's spare
// capacity must not overlap plaintext.
func (k *Key) Seal(dst, context, plaintext []byte) ([]byte, error) {
	return k.c.Seal(dst, context, plaintext)
}

// Open authenticates and decrypts a record sealed with the same context and
// appends the plaintext to dst. Any failure wraps ErrIntegrity, and then no
// plaintext is returned. Use record[:0] as dst to decrypt in place;
// otherwise dst's spare capacity must not overlap record.
func (k *Key) Open(dst, context, record []byte) ([]byte, error) {
	out, err := k.c.Open(dst, context, record)
	if err != nil {
		return nil, integrity(err)
	}
	return out, nil
}

// NewWriter returns a writer that encrypts a stream to dst, bound to
// context. The caller must Close it to write the end of the stream; Close
// does not close dst.
func (k *Key) NewWriter(context []byte, dst io.Writer) (io.WriteCloser, error) {
	return k.c.NewWriter(context, dst)
}

// NewReader returns a reader that decrypts a stream written by NewWriter
// with the same context. It reads and checks the stream header before
// returning. It hands out data only once authenticated, reports a stream
// that was tampered with, corrupted or truncated with an error wrapping
// ErrIntegrity, and returns its first error from every later Read.
func (k *Key) NewReader(context []byte, src io.Reader) (io.Reader, error) {
	r, err := k.c.NewReader(context, src)
	if err != nil {
		return nil, integrity(err)
	}
	return integrityReader{r}, nil
}

type integrityReader struct{ r *cobblestone.Reader }

func (r integrityReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		err = integrity(err)
	}
	return n, err
}

// integrity maps authentication failures to ErrIntegrity and leaves other
// errors, from I/O for example, alone.
func integrity(err error) error {
	if errors.Is(err, cobblestone.ErrAuth) {
		return ErrIntegrity
	}
	return err
}
