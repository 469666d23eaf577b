package archive

// FormLen returns the largest length of the form of a block of n bytes
// whose data lies in pages that hold dataLen bytes in all (the pages a
// reader will hand to FormBuilder.Next): its page map plus those pages.
func FormLen(n int64, dataLen int) int { return MapLen(n) + dataLen }

// ResetFor starts the form of a block of n bytes in buf, like Reset, for a
// caller that will hand Next only pages holding dataLen bytes in all (the
// data extents of a sparse block): buf must hold FormLen(n, dataLen)
// bytes, not MaxFormLen(n), so a block that is mostly hole needs a buffer
// the size of its data.
func (b *FormBuilder) ResetFor(buf []byte, n int64, dataLen int) {
	if n <= 0 || dataLen < 0 || int64(dataLen) > n || len(buf) < FormLen(n, dataLen) {
		panic("archive: internal error: form buffer too small")
	}
	b.buf, b.n, b.ml, b.next = buf[:FormLen(n, dataLen)], n, MapLen(n), 0
	b.w = b.ml
	clear(buf[:b.ml])
}
