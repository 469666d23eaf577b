package archive

// CRC32CCombine returns the CRC32C of the concatenation A || B from the
// CRC32C of A (crcA), that of B (crcB) and the length of B, so that a
// segment read as ranges, in any order and in parallel, is still checked
// against its CRC32C as a whole. It is the polynomial arithmetic of
// zlib's crc32_combine: crcA times x^(8*lenB) modulo the polynomial, plus
// crcB.
func CRC32CCombine(crcA, crcB uint32, lenB int64) uint32 {
	if lenB <= 0 {
		return crcA
	}
	return crcMulMod(crcX2n(lenB, 3), crcA) ^ crcB
}

// crcPoly is the Castagnoli polynomial, bit-reflected.
const crcPoly = 0x82f63b78

// crcMulMod returns a*b modulo the polynomial (bit-reflected, the x^0
// term in the top bit).
func crcMulMod(a, b uint32) uint32 {
	m := uint32(1) << 31
	var p uint32
	for a != 0 {
		if a&m != 0 {
			p ^= b
			a ^= m
		}
		m >>= 1
		if b&1 != 0 {
			b = b>>1 ^ crcPoly
		} else {
			b >>= 1
		}
	}
	return p
}

// crcX2nTable[k] is x^(2^k) modulo the polynomial.
var crcX2nTable = func() (t [32]uint32) {
	p := uint32(1) << 30 // x^1
	t[0] = p
	for k := 1; k < 32; k++ {
		p = crcMulMod(p, p)
		t[k] = p
	}
	return t
}()

// crcX2n returns x^(n * 2^k) modulo the polynomial.
func crcX2n(n int64, k uint) uint32 {
	p := uint32(1) << 31 // x^0
	for n != 0 {
		if n&1 != 0 {
			p = crcMulMod(crcX2nTable[k&31], p)
		}
		n >>= 1
		k++
	}
	return p
}
