package cobblestone

import (
	"crypto/hmac"
	"crypto/sha512"
	"hash"
	"sync"
)

// Key is an input key made ready for many messages. Each message derives
// its AEAD key, base nonce and commitment from the input key with
// HKDF-Expand over HMAC-SHA-512; a Key keys HMAC once (the compression of
// its inner and outer padded key blocks) and gives every message a copy of
// that state, rather than keying HMAC again, which costs two SHA-512 blocks
// and a dozen allocations per message: a sparse image has a record, and so
// a message, per 4 KiB page. The output is the same, byte for byte.
//
// A Key is safe for concurrent use.
type Key struct {
	proto hash.Hash // HMAC keyed with the input key; only cloned, never written
	key   [KeySize]byte
	prfs  sync.Pool // of *prf: copies of proto with their scratch
}

// prf is one copy of a Key's HMAC with what a derivation needs besides.
type prf struct {
	h   hash.Hash
	msg []byte // T(i-1) || info || i, info = infoPrefix || salt || context
	t   [sha512.Size]byte
}

// maxPooledMsg bounds the scratch a pooled prf keeps: contexts are short.
const maxPooledMsg = 1024

// NewKey prepares key, which must be KeySize bytes, for Seal, Open and
// the streaming and random-access types.
func NewKey(key []byte) (*Key, error) {
	if len(key) != KeySize {
		return nil, ErrKeySize
	}
	k := &Key{}
	copy(k.key[:], key)
	k.proto = newHMAC(k.key[:])
	k.prfs.New = func() any { return &prf{h: k.clone()} }
	return k, nil
}

// newHMAC returns HMAC-SHA-512 keyed with key, reset once so that it keeps
// its keyed state and restores it on every Reset and Sum (crypto/hmac does
// this for hashes whose state can be saved, as SHA-512's can).
func newHMAC(key []byte) hash.Hash {
	h := hmac.New(sha512.New, key)
	h.Reset()
	return h
}

// clone returns a copy of the keyed HMAC state, or a newly keyed HMAC where
// crypto/hmac cannot copy one.
func (k *Key) clone() hash.Hash {
	if c, ok := k.proto.(hash.Cloner); ok {
		if h, err := c.Clone(); err == nil {
			return h
		}
	}
	return newHMAC(k.key[:])
}

// expandSize is what a message derives: AEAD key, base nonce, commitment.
const expandSize = KeySize + nonceSize + CommitmentSize

// expand computes HKDF-Expand(PRK = the input key, info = infoPrefix ||
// salt || context, L = expandSize) with SHA-512 (RFC 5869, section 2.3):
// T(i) = HMAC(PRK, T(i-1) || info || i), T(0) empty, output T(1) || T(2)
// || ... cut to L bytes.
func (k *Key) expand(out *[expandSize]byte, salt, context []byte) {
	p := k.prfs.Get().(*prf)
	n := sha512.Size + len(infoPrefix) + len(salt) + len(context) + 1
	if cap(p.msg) < n {
		p.msg = make([]byte, n)
	}
	msg := p.msg[:n]
	w := sha512.Size + copy(msg[sha512.Size:], infoPrefix)
	w += copy(msg[w:], salt)
	copy(msg[w:], context)
	for i, done := 1, 0; done < len(out); i++ {
		m := msg
		if i == 1 {
			m = msg[sha512.Size:] // T(0) is empty
		} else {
			copy(msg, p.t[:])
		}
		m[len(m)-1] = byte(i)
		p.h.Reset()
		p.h.Write(m)
		p.h.Sum(p.t[:0])
		done += copy(out[done:], p.t[:])
	}
	clear(p.t[:])
	clear(msg[:sha512.Size])
	if cap(p.msg) > maxPooledMsg {
		p.msg = nil
	}
	k.prfs.Put(p)
}
