package cobblestone

import (
	"bytes"
	"testing"
)

// vectorKey is the input key of most Wycheproof vectors, so that vector
// ciphertexts make meaningful seeds.
var vectorKey = []byte("YELLOW SUBMARINE YELLOW SUBMARIN")

// addVectorSeeds seeds a fuzz corpus with the small vector ciphertexts.
func addVectorSeeds(f *testing.F, add func(v *vector)) {
	for _, v := range loadVectors(f) {
		if len(v.Key) == KeySize && len(v.CT) < 3*encChunkSize {
			add(v)
		}
	}
}

// FuzzOpen checks that Open never panics on arbitrary input, and that
// sealed messages round-trip, also in place, and fail once modified.
func FuzzOpen(f *testing.F) {
	addVectorSeeds(f, func(v *vector) { f.Add(v.CT, v.Ctx, []byte("message"), uint16(0)) })
	f.Add([]byte{}, []byte{}, []byte{}, uint16(ChunkSize))
	f.Fuzz(func(t *testing.T, ct, context, msg []byte, pad uint16) {
		key := vectorKey
		if pt, err := Open(nil, key, context, ct); err != nil && pt != nil {
			t.Fatal("Open returned plaintext with an error")
		}

		msg = append(msg, make([]byte, pad)...)
		sealed, err := Seal(nil, key, context, msg)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(sealed)) != SealedSize(int64(len(msg))) {
			t.Fatal("wrong sealed size")
		}
		pt, err := Open(nil, key, context, sealed)
		if err != nil || !bytes.Equal(pt, msg) {
			t.Fatalf("round trip: %v", err)
		}
		pt, err = Open(make([]byte, 5, 5+len(msg)), key, context, sealed)
		if err != nil || !bytes.Equal(pt[5:], msg) {
			t.Fatalf("round trip appending to dst: %v", err)
		}
		buf := append(make([]byte, 0, len(sealed)), msg...)
		inPlace, err := Seal(buf[:0], key, context, buf)
		if err != nil {
			t.Fatal(err)
		}
		if pt, err = Open(inPlace[:0], key, context, inPlace); err != nil || !bytes.Equal(pt, msg) {
			t.Fatalf("round trip in place: %v", err)
		}

		i := int(pad) % len(sealed)
		sealed[i] ^= 1
		if _, err := Open(nil, key, context, sealed); err != ErrAuth {
			t.Fatalf("Open with byte %d modified: %v", i, err)
		}
	})
}

// FuzzReader checks that the streaming decoder never panics, and that what
// it produces is always a prefix of the message, all of it exactly when
// Open succeeds.
func FuzzReader(f *testing.F) {
	addVectorSeeds(f, func(v *vector) { f.Add(v.CT, v.Ctx, uint8(0), uint16(0), uint16(100)) })
	for mode := range uint8(5) {
		f.Add([]byte("message"), []byte("ctx"), mode, uint16(ChunkSize), uint16(1))
	}
	f.Fuzz(func(t *testing.T, data, context []byte, mode uint8, pos, bufSize uint16) {
		key := vectorKey
		// Mode 0 decodes data as is; the others seal data (padded to span
		// chunks) and then leave, flip, truncate or extend the ciphertext.
		msg := append(bytes.Clone(data), make([]byte, pos)...)
		ct := data
		if mode%5 != 0 {
			ct, _ = Seal(nil, key, context, msg)
		}
		switch mode % 5 {
		case 2:
			ct[int(pos)%len(ct)] ^= 0x80
		case 3:
			ct = ct[:int(pos)%len(ct)]
		case 4:
			ct = append(ct, data...)
			ct = append(ct, 0)
		}

		want, openErr := Open(nil, key, context, ct)
		r, err := NewReader(key, context, bytes.NewReader(ct))
		var got []byte
		if err == nil {
			got, err = readAll(t, r, max(1, int(bufSize)))
		}
		if (err == nil) != (openErr == nil) {
			t.Fatalf("Reader error %v, Open error %v", err, openErr)
		}
		if openErr == nil && !bytes.Equal(got, want) {
			t.Fatal("Reader and Open disagree")
		}
		if mode%5 == 0 {
			if err != nil && len(got) > 0 && len(ct) < HeaderSize+encChunkSize {
				t.Fatal("plaintext released from a failing single-chunk message")
			}
		} else if !bytes.HasPrefix(msg, got) {
			t.Fatal("Reader produced bytes that are not a prefix of the message")
		}

		if err != nil && err != ErrAuth {
			t.Fatalf("Reader failed with %v, want ErrAuth", err)
		}
	})
}
