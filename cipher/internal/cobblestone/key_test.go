package cobblestone

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha512"
	"math/rand/v2"
	"sync"
	"testing"
)

// referenceExpand is the spec's key derivation written the plain way:
// crypto/hkdf keyed afresh for every message.
func referenceExpand(t testing.TB, key, salt, context []byte) []byte {
	t.Helper()
	out, err := hkdf.Expand(sha512.New, key, infoPrefix+string(salt)+string(context), expandSize)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestExpandMatchesHKDF: the pooled, pre-keyed derivation gives exactly
// what crypto/hkdf gives, for random keys, salts and contexts of every
// length up to past the pooled scratch, on one Key used again and again
// (so that pooled state is reused) and from several goroutines at once.
func TestExpandMatchesHKDF(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	for range 20 {
		key := random(KeySize)
		k, err := NewKey(key)
		if err != nil {
			t.Fatal(err)
		}
		type input struct{ salt, context []byte }
		var inputs []input
		for _, n := range []int{0, 1, 15, 16, 17, 40, 55, 56, 57, 127, 128, 129, 300, maxPooledMsg, maxPooledMsg + 1, 5000, 40, 0} {
			inputs = append(inputs, input{random(SaltSize), random(n)})
		}
		var wg sync.WaitGroup
		for g := range 3 {
			wg.Go(func() {
				for i, in := range inputs {
					var got [expandSize]byte
					k.expand(&got, in.salt, in.context)
					if want := referenceExpand(t, key, in.salt, in.context); !bytes.Equal(got[:], want) {
						t.Errorf("goroutine %d, input %d (context of %d bytes): expand %x, want %x", g, i, len(in.context), got, want)
					}
				}
			})
		}
		wg.Wait()
	}
}

// TestKeyMatchesFunctions: a message sealed with a Key opens with the
// package's functions and the other way round, and a Key reproduces the
// vectors' ciphertexts with their salts.
func TestKeyMatchesFunctions(t *testing.T) {
	for _, v := range loadVectors(t) {
		if !v.Valid {
			continue
		}
		msg, err := Open(nil, v.Key, v.Ctx, v.CT)
		if err != nil {
			t.Fatalf("tc%d: %v", v.ID, err)
		}
		k, err := NewKey(v.Key)
		if err != nil {
			t.Fatalf("tc%d: %v", v.ID, err)
		}
		for range 2 { // the second time from pooled state
			got, err := k.Open(nil, v.Ctx, v.CT)
			if err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("tc%d: Key.Open: %v", v.ID, err)
			}
			ct, err := k.SealWithSalt(nil, v.CT[:SaltSize], v.Ctx, msg)
			if err != nil || !bytes.Equal(ct, v.CT) {
				t.Fatalf("tc%d: Key.SealWithSalt did not reproduce the vector: %v", v.ID, err)
			}
		}
		ct, err := k.Seal(nil, v.Ctx, msg)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := Open(nil, v.Key, v.Ctx, ct); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("tc%d: Key.Seal does not open with Open: %v", v.ID, err)
		}
	}
	if _, err := NewKey(make([]byte, KeySize-1)); err != ErrKeySize {
		t.Fatalf("NewKey of a short key: %v, want ErrKeySize", err)
	}
}

// TestDeriveAllocations: a Key's derivation allocates only the AEAD (its
// key schedule), not HMAC state, once the pool holds a state.
func TestDeriveAllocations(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation counts")
	}
	k, _ := NewKey(testKey())
	salt, context := make([]byte, SaltSize), make([]byte, 40)
	var c [CommitmentSize]byte
	k.derive(salt, context, &c)
	n := testing.AllocsPerRun(100, func() { k.derive(salt, context, &c) })
	t.Logf("allocations per derivation: %v", n)
	if n > 6 {
		t.Fatalf("%v allocations per derivation, want at most 6", n)
	}
}
