package archive

import "github.com/coldship/coldship/cipher"

// RecordLen returns the length of the record that SealForm would make of
// form, and whether its payload would be compressed, without sealing it:
// compression is deterministic, so a sender can check that a record it
// put earlier (whose key it no longer has) has the length the form it
// reads now gives. scratch holds at least len(form) bytes.
func (c *Codec) RecordLen(scratch, form []byte) (int64, bool) {
	payload := len(form)
	compressed := false
	if c.compress && c.worthCompressing(form, scratch) {
		z := c.enc.EncodeAll(form, scratch[:0])
		if len(z) <= len(form)-len(form)/16 {
			payload, compressed = len(z), true
		}
	}
	return cipher.SealedSize(int64(payload)), compressed
}
