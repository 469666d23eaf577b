package archive

import "github.com/coldship/coldship/cipher"

// RecordLen returns the length of the record that SealForm would make of
// form, and whether its payload would be compressed, without sealing it:
// compression is deterministic, so a sender can check that a record it
// put earlier (whose key it no longer has) has the length the form it
// reads now gives. scratch holds at least len(form) bytes.
func (c *Codec) RecordLen(scratch, form []byte) (int64, bool) {
	payload, compressed := c.payload(form, scratch)
	return cipher.SealedSize(int64(len(payload))), compressed
}
