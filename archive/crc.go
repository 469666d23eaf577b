package archive

import (
	"fmt"
	"hash"
	"hash/crc32"
)

// castagnoli is the CRC32C table: the checksum format 3 keeps of every
// segment. Object stores compute and check the same checksum on upload
// (x-amz-checksum-crc32c), and the CPU computes it in hardware, so it costs
// next to nothing where a cryptographic digest of every segment cost a
// fifth of the send's CPU. Records are authenticated one by one; the
// checksum is for accidental damage of a segment as a whole, which is what
// a key-less check can tell.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// NewCRC32C returns a hash computing the CRC32C of what is written to it.
func NewCRC32C() hash.Hash32 { return crc32.New(castagnoli) }

// CRC32CString formats a CRC32C as format 3 records it: 8 lowercase hex digits.
func CRC32CString(sum uint32) string { return fmt.Sprintf("%08x", sum) }

// CRC32CSum returns the CRC32C of b.
func CRC32CSum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// CRC32C returns the CRC32C of b as format 3 records it.
func CRC32C(b []byte) string { return CRC32CString(CRC32CSum(b)) }

func validCRC(s string) bool {
	if len(s) != 8 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
