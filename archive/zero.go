package archive

// IsZero reports whether b holds only zero bytes: the test that tells a
// zero page, or a zero block, from data.
func IsZero(b []byte) bool { return isZero(b) }
