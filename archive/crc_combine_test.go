package archive

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

func TestCRC32CCombine(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 2, 7, 64, 1000, 4096, 65537} {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		whole := crc32.Checksum(b, castagnoli)
		for _, cut := range []int{0, n / 3, n / 2, n} {
			a, c := crc32.Checksum(b[:cut], castagnoli), crc32.Checksum(b[cut:], castagnoli)
			if got := CRC32CCombine(a, c, int64(n-cut)); got != whole {
				t.Fatalf("n=%d cut=%d: combined %08x, whole %08x", n, cut, got, whole)
			}
		}
	}
}
