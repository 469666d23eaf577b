package shipper

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/zeebo/blake3"
)

// TestRecordTagPooled checks that the tags made with pooled hashers are
// BLAKE3 keyed with the record key over the record's head and the sealed
// head, whatever hasher a call gets and whatever it hashed before.
func TestRecordTagPooled(t *testing.T) {
	k, err := loadStateKeys("", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		rec := make([]byte, journalRecord)
		head := make([]byte, sealedHead)
		rand.Read(rec)
		rand.Read(head)
		h, err := blake3.NewKeyed(k.recordMAC[:])
		if err != nil {
			t.Fatal(err)
		}
		h.Write(rec[:journalRecordHead])
		h.Write(head)
		want := h.Sum(nil)[:recordTagSize]
		if got := k.recordTag(rec, head); !bytes.Equal(got[:], want) {
			t.Fatalf("call %d: tag %x, want %x", i, got, want)
		}
		// The tag covers the head of the record only, and all of it.
		rec[journalRecordHead] ^= 1
		if got := k.recordTag(rec, head); !bytes.Equal(got[:], want) {
			t.Fatalf("call %d: tag depends on the bytes past the record's head", i)
		}
		head[len(head)-1] ^= 1
		if got := k.recordTag(rec, head); bytes.Equal(got[:], want) {
			t.Fatalf("call %d: tag does not cover the sealed head", i)
		}
	}
}
