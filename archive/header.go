package archive

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// Header is the plaintext description of a shipment, readable without a
// key so that `coldship list` can show it. The sealed manifest records the
// header's digest, so a changed header fails at receive.
type Header struct {
	Format      int       `json:"format"`
	ID          string    `json:"id"`
	Created     time.Time `json:"created"`
	Label       string    `json:"label,omitempty"`
	BlockSize   int64     `json:"block_size"`
	Cipher      string    `json:"cipher"`
	Compression string    `json:"compression"`
	// Base is, in an incremental shipment (format 2), the shipment it was
	// compared with. It is plaintext so that list and prune see the chain
	// without a key; the manifest lists every shipment whose records it uses.
	Base string `json:"base,omitempty"`
}

// CipherName names the record layer in headers.
const CipherName = "cobblestone-256"

// Marshal encodes the header object: the magic line, then one JSON line.
func (h *Header) Marshal() ([]byte, error) {
	j, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	out := append([]byte(headerMagic), j...)
	return append(out, '\n'), nil
}

// ParseHeader decodes and checks a header object.
func ParseHeader(b []byte) (*Header, error) {
	if len(b) > maxHeader {
		return nil, fmt.Errorf("header: %d bytes is too large: %w", len(b), ErrIntegrity)
	}
	rest, ok := bytes.CutPrefix(b, []byte(headerMagic))
	if !ok {
		return nil, fmt.Errorf("header: not a coldship shipment header: %w", ErrIntegrity)
	}
	if len(rest) == 0 || rest[len(rest)-1] != '\n' || bytes.IndexByte(rest[:len(rest)-1], '\n') >= 0 {
		return nil, fmt.Errorf("header: malformed: %w", ErrIntegrity)
	}
	var h Header
	dec := json.NewDecoder(bytes.NewReader(rest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return nil, fmt.Errorf("header: %v: %w", err, ErrIntegrity)
	}
	if h.Format != FormatVersion && h.Format != FormatIncremental && h.Format != FormatV3 {
		return nil, fmt.Errorf("header: format version %d is not supported (this coldship reads versions %d to %d): %w",
			h.Format, FormatVersion, FormatV3, ErrUnsupported)
	}
	if !ValidID(h.ID) {
		return nil, fmt.Errorf("header: invalid shipment id %q: %w", h.ID, ErrIntegrity)
	}
	if (h.Format != FormatV3 && (h.Format == FormatIncremental) != (h.Base != "")) || (h.Base != "" && (!ValidID(h.Base) || h.Base == h.ID)) {
		return nil, fmt.Errorf("header: base %q does not fit format %d: %w", h.Base, h.Format, ErrIntegrity)
	}
	if h.BlockSize < MinBlockSize || h.BlockSize > MaxBlockSize {
		return nil, fmt.Errorf("header: block size %d out of range: %w", h.BlockSize, ErrIntegrity)
	}
	if h.Cipher != CipherName {
		return nil, fmt.Errorf("header: unknown cipher %q", h.Cipher)
	}
	switch h.Compression {
	case "none", "zstd":
	default:
		return nil, fmt.Errorf("header: unknown compression %q", h.Compression)
	}
	return &h, nil
}
