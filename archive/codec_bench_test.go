package archive

import (
	"crypto/rand"
	"strings"
	"testing"

	"github.com/coldship/coldship/cipher"
)

// benchForms are block forms as the send builds them: a 4 KiB page in a
// 64 KiB block (a sparse image), random or log-like, and a whole 1 MiB
// block of random data.
func benchForms(b *testing.B) map[string][]byte {
	page := pageForm
	rnd := make([]byte, 1<<20)
	rand.Read(rnd)
	text := []byte(strings.Repeat("Nov 30 17:15:48 host kernel: [12345.678] eth0: link up, 1000 Mbps\n", 100))[:PageSize]
	var fb FormBuilder
	dense := make([]byte, MaxFormLen(1<<20))
	fb.Reset(dense, 1<<20)
	copy(fb.Next(0, 256), rnd)
	fb.Commit(0, 256)
	return map[string][]byte{"page-random": page(rnd[:PageSize]), "page-text": page(text), "block-random-1MiB": fb.Form()}
}

// BenchmarkSealForm is the sealing of one block: compression attempt,
// key derivation and AES-GCM.
func BenchmarkSealForm(b *testing.B) {
	key, _ := cipher.NewKey()
	c, err := NewCodec(key, "20261130T000000Z-00000000", FormatV3, true, 1)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	for name, form := range benchForms(b) {
		b.Run(name, func(b *testing.B) {
			dst := make([]byte, 0, cipher.SealedSize(int64(len(form))))
			scratch := make([]byte, len(form)+len(form)/8+1024)
			b.SetBytes(int64(len(form)))
			b.ReportAllocs()
			var rec []byte
			for b.Loop() {
				rec, _, _ = c.SealForm(dst[:0], scratch, form, 1, 7)
			}
			b.ReportMetric(float64(len(rec)), "record-bytes")
		})
	}
}
