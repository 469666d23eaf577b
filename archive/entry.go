package archive

// EncodeTableEntry writes e into b (TableEntrySize bytes) as the block
// table encodes it, for callers that keep entries of their own in the same
// layout (the sender's local state).
func EncodeTableEntry(b []byte, e *TableEntry) {
	_ = b[TableEntrySize-1]
	e.put(b)
}

// DecodeTableEntry parses one encoded entry (TableEntrySize bytes). It
// checks only the flags and the reserved byte; order and places are the
// reader's to check.
func DecodeTableEntry(b []byte) (TableEntry, error) {
	_ = b[TableEntrySize-1]
	return parseEntry(b)
}
