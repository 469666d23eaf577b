// Package cobblestone implements c2sp.org/chunked-encryption instantiated as
// Cobblestone-256: HKDF-Expand with SHA-512 and AES-256-GCM.
//
// A message is encrypted under a 32-byte input key and an optional context as
//
//	salt (24) || commitment (32) || chunk 0 || chunk 1 || ... || final chunk
//
// where every chunk but the last holds exactly ChunkSize bytes of plaintext
// plus a TagSize tag, and the final chunk is always shorter (possibly empty),
// which is what authenticates the end of the message.
//
// Three ways in are provided: one-shot [Seal] and [Open] for messages held in
// memory, [Writer] and [Reader] for streams, and [ReaderAt] for random access.
// All of them check the key commitment before opening any chunk, and none of
// them releases plaintext from a chunk before that chunk authenticates.
package cobblestone

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"slices"
	"unsafe"
)

const (
	KeySize        = 32    // input key size, equal to the AES-256 key size
	SaltSize       = 24    // random per-message salt
	CommitmentSize = 32    // key commitment following the salt
	HeaderSize     = 56    // SaltSize + CommitmentSize
	ChunkSize      = 16384 // plaintext bytes in every chunk but the final one
	TagSize        = 16    // AES-GCM tag appended to every chunk

	nonceSize    = 12
	encChunkSize = ChunkSize + TagSize
	// maxChunks is the spec's hard limit on the chunk counter: a message
	// must abort rather than use chunk number 2^38.
	maxChunks = 1 << 38

	aeadName   = "AEAD_AES_256_GCM"
	infoPrefix = "c2sp.org/chunked-encryption@v1+" + aeadName + "\x00"
)

var (
	// ErrAuth is returned for every way a ciphertext can fail to decrypt:
	// wrong key or context, modified bytes, truncation and trailing data. It
	// deliberately says nothing about which.
	ErrAuth = errors.New("chunked-encryption: message authentication failed")

	// ErrKeySize is returned when the input key is not KeySize bytes long.
	ErrKeySize = errors.New("chunked-encryption: input key must be 32 bytes")

	errTooLarge = errors.New("chunked-encryption: message exceeds 2^38 chunks")
	errSaltSize = errors.New("chunked-encryption: salt must be 24 bytes")
)

// SealedSize returns the exact length of the ciphertext of a plaintext of
// plaintextLen bytes. It panics if plaintextLen is negative.
func SealedSize(plaintextLen int64) int64 {
	if plaintextLen < 0 {
		panic("cobblestone: negative plaintext length")
	}
	return HeaderSize + rawSealedSize(plaintextLen)
}

// Seal encrypts plaintext under key and context with a fresh random salt and
// appends the ciphertext to dst, returning the updated slice.
//
// To reuse plaintext's storage for the ciphertext, use plaintext[:0] as dst;
// otherwise the spare capacity of dst must not overlap plaintext.
//
// For many messages under one key, [NewKey] and [Key.Seal] are cheaper.
func Seal(dst, key, context, plaintext []byte) ([]byte, error) {
	k, err := NewKey(key)
	if err != nil {
		return nil, err
	}
	return k.Seal(dst, context, plaintext)
}

// SealWithSalt is like [Seal] with a caller-chosen salt. The salt must never
// repeat for a key; it exists for reproducing test vectors.
func SealWithSalt(dst, key, salt, context, plaintext []byte) ([]byte, error) {
	k, err := NewKey(key)
	if err != nil {
		return nil, err
	}
	return k.SealWithSalt(dst, salt, context, plaintext)
}

// Open decrypts and authenticates ciphertext under key and context and
// appends the plaintext to dst, returning the updated slice. It is all or
// nothing: on error it returns nil and no plaintext is left in dst's spare
// capacity.
//
// To reuse ciphertext's storage for the plaintext, use ciphertext[:0] as dst
// (ciphertext is then overwritten even on failure); otherwise the spare
// capacity of dst must not overlap ciphertext.
//
// For many messages under one key, [NewKey] and [Key.Open] are cheaper.
func Open(dst, key, context, ciphertext []byte) ([]byte, error) {
	k, err := NewKey(key)
	if err != nil {
		return nil, err
	}
	return k.Open(dst, context, ciphertext)
}

// Seal is the package's [Seal] under k.
func (k *Key) Seal(dst, context, plaintext []byte) ([]byte, error) {
	var salt [SaltSize]byte
	rand.Read(salt[:])
	return k.SealWithSalt(dst, salt[:], context, plaintext)
}

// SealWithSalt is the package's [SealWithSalt] under k.
func (k *Key) SealWithSalt(dst, salt, context, plaintext []byte) ([]byte, error) {
	if len(salt) != SaltSize {
		return nil, errSaltSize
	}
	if uint64(len(plaintext))/ChunkSize >= maxChunks {
		return nil, errTooLarge
	}
	// Copy the header first: salt may alias dst's spare capacity.
	var hdr [HeaderSize]byte
	copy(hdr[:], salt)
	r := k.derive(salt, context, (*[CommitmentSize]byte)(hdr[SaltSize:]))

	ret, out := grow(dst, int(SealedSize(int64(len(plaintext)))))
	r.seal(out[HeaderSize:], plaintext)
	copy(out, hdr[:])
	return ret, nil
}

// Open is the package's [Open] under k.
func (k *Key) Open(dst, context, ciphertext []byte) ([]byte, error) {
	if len(ciphertext) < HeaderSize {
		return nil, ErrAuth
	}
	body := ciphertext[HeaderSize:]
	n, ok := rawOpenedSize(int64(len(body)))
	if !ok {
		return nil, ErrAuth
	}
	var commitment [CommitmentSize]byte
	r := k.derive(ciphertext[:SaltSize], context, &commitment)
	if subtle.ConstantTimeCompare(commitment[:], ciphertext[SaltSize:HeaderSize]) != 1 {
		return nil, ErrAuth
	}
	ret, out := grow(dst, int(n))
	if err := r.open(out, body); err != nil {
		return nil, err
	}
	return ret, nil
}

// derive runs the key derivation for one message and writes its commitment
// into commitment. salt must be SaltSize bytes.
func (k *Key) derive(salt, context []byte, commitment *[CommitmentSize]byte) *raw {
	var out [expandSize]byte
	k.expand(&out, salt, context)
	r := newRaw(out[:KeySize], out[KeySize:KeySize+nonceSize])
	copy(commitment[:], out[KeySize+nonceSize:])
	clear(out[:])
	return r
}

// raw is the record layer without its header, the spec's "raw mode": a
// sequence of chunks under an AEAD key and base nonce. Seal, Open and the
// streaming and random-access types all encrypt and decrypt through it.
//
// A raw is safe for concurrent use: callers bring their own nonce scratch.
type raw struct {
	aead      cipher.AEAD
	baseNonce [nonceSize]byte
}

func newRaw(key, baseNonce []byte) *raw {
	if len(key) != KeySize || len(baseNonce) != nonceSize {
		panic("cobblestone: internal error: bad raw key or nonce size")
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		panic("cobblestone: internal error: " + err.Error())
	}
	a, err := cipher.NewGCM(b)
	if err != nil {
		panic("cobblestone: internal error: " + err.Error())
	}
	r := &raw{aead: a}
	copy(r.baseNonce[:], baseNonce)
	return r
}

// chunkNonce writes the nonce of chunk i into n: the base nonce XOR i as a
// big-endian integer. Since i < 2^38 only the low 8 bytes change.
func (r *raw) chunkNonce(n *[nonceSize]byte, i uint64) []byte {
	if i >= maxChunks {
		panic("cobblestone: internal error: chunk counter reached 2^38")
	}
	*n = r.baseNonce
	binary.BigEndian.PutUint64(n[4:], binary.BigEndian.Uint64(r.baseNonce[4:])^i)
	return n[:]
}

// sealChunk appends the encryption of chunk number i to dst.
func (r *raw) sealChunk(nonce *[nonceSize]byte, dst, chunk []byte, i uint64) []byte {
	return r.aead.Seal(dst, r.chunkNonce(nonce, i), chunk, nil)
}

// openChunk appends the decryption of chunk number i to dst.
func (r *raw) openChunk(nonce *[nonceSize]byte, dst, chunk []byte, i uint64) ([]byte, error) {
	out, err := r.aead.Open(dst, r.chunkNonce(nonce, i), chunk, nil)
	if err != nil {
		return nil, ErrAuth
	}
	return out, nil
}

// rawSealedSize is the length of the chunks of a plaintext of n bytes.
func rawSealedSize(n int64) int64 {
	return n + (n/ChunkSize+1)*TagSize
}

// rawOpenedSize is the plaintext length of n bytes of chunks, and whether n
// is a valid length at all: the final chunk must hold at least a tag.
func rawOpenedSize(n int64) (int64, bool) {
	full, final := n/encChunkSize, n%encChunkSize
	if n < 0 || final < TagSize || full >= maxChunks {
		return 0, false
	}
	return full*ChunkSize + final - TagSize, true
}

// seal encrypts plaintext into out, which must be exactly
// rawSealedSize(len(plaintext)) long.
//
// The two may overlap if plaintext starts no later than out: chunks are then
// processed last to first, so every chunk is moved forward into its slot and
// encrypted in place before anything still unread is overwritten.
func (r *raw) seal(out, plaintext []byte) {
	if int64(len(out)) != rawSealedSize(int64(len(plaintext))) {
		panic("cobblestone: internal error: wrong seal output size")
	}
	if overlaps(out, plaintext) && start(plaintext) > start(out) {
		panic("cobblestone: invalid buffer overlap")
	}
	var nonce [nonceSize]byte
	for i := len(plaintext) / ChunkSize; i >= 0; i-- {
		p := plaintext[i*ChunkSize : min((i+1)*ChunkSize, len(plaintext))]
		o := out[i*encChunkSize:][:len(p)+TagSize]
		if overlaps(o, p) {
			copy(o, p)
			p = o[:len(p)]
		}
		r.sealChunk(&nonce, o[:0], p, uint64(i))
	}
}

// open decrypts the chunks in ciphertext into out, which must be exactly as
// long as rawOpenedSize says. On error it clears out, and ciphertext where
// it was decrypted in place.
//
// The two may overlap if out starts no later than ciphertext: chunks are
// then processed first to last, and a chunk that overlaps its output slot is
// decrypted in place and moved back.
func (r *raw) open(out, ciphertext []byte) error {
	if n, ok := rawOpenedSize(int64(len(ciphertext))); !ok || n != int64(len(out)) {
		panic("cobblestone: internal error: wrong open output size")
	}
	if overlaps(out, ciphertext) && start(out) > start(ciphertext) {
		panic("cobblestone: invalid buffer overlap")
	}
	var nonce [nonceSize]byte
	touched := 0 // ciphertext[:touched] may hold plaintext
	for i := 0; i*encChunkSize < len(ciphertext); i++ {
		c := ciphertext[i*encChunkSize : min((i+1)*encChunkSize, len(ciphertext))]
		o := out[i*ChunkSize:][: len(c)-TagSize : len(c)-TagSize]
		var err error
		if overlaps(o, c) {
			touched = i*encChunkSize + len(c)
			var p []byte
			if p, err = r.openChunk(&nonce, c[:0], c, uint64(i)); err == nil {
				copy(o, p)
			}
		} else {
			_, err = r.openChunk(&nonce, o[:0], c, uint64(i))
		}
		if err != nil {
			clear(out)
			clear(ciphertext[:touched])
			return err
		}
	}
	return nil
}

// grow extends in by n bytes, reusing its capacity if it can, and returns
// the whole slice and the new tail.
func grow(in []byte, n int) (whole, tail []byte) {
	whole = slices.Grow(in, n)[:len(in)+n]
	return whole, whole[len(in):]
}

// overlaps reports whether x and y share any byte of memory.
func overlaps(x, y []byte) bool {
	if len(x) == 0 || len(y) == 0 {
		return false
	}
	return start(x) < start(y)+uintptr(len(y)) && start(y) < start(x)+uintptr(len(x))
}

func start(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }
