package archive

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Names of the two objects a signed shipment adds, written last.
const (
	SignedObject    = "signed"    // the statement: SHA-256 of every other object but the segments
	SignatureObject = "signature" // the armored SSH signature of the statement
)

const statementMagic = "# coldship-signed-v1"

// Limits on a statement: a shipment has a handful of small objects, plus
// one key slot per resumed attempt and one key copy per base key slot.
const (
	MaxStatement        = 1 << 20 // bytes
	maxStatementEntries = 8192
	maxObjectName       = 255
)

// Statement is what a shipment's signature vouches for: the SHA-256 of
// each of its objects except the segments (which the sealed manifest
// binds), the statement and the signature, and where the shipment stands in
// its chain (the shipments of the same sources to the same destination).
//
// Its encoding is the output of `sha256sum` (two spaces, names relative to
// the shipment folder, sorted), preceded by '#' lines, which
// `sha256sum -c` ignores: docs/FORMAT.md gives it byte for byte.
type Statement struct {
	ID      string
	Created time.Time // the header's, UTC, whole seconds
	Chain   string    // 32 lowercase hex digits, see NewChainID
	// Previous is the shipment signed before this one in the chain, and
	// PreviousSHA256 the SHA-256 of its statement; "" and zero for the
	// first one.
	Previous       string
	PreviousSHA256 Digest
	Objects        []StatementEntry // sorted by name, no name twice
}

// StatementEntry is one line of a statement.
type StatementEntry struct {
	Name   string // relative to the shipment folder
	SHA256 Digest
}

// StatementDigest returns the SHA-256 of a statement's bytes, by which the
// next statement of the chain names it.
func StatementDigest(b []byte) Digest { return sha256.Sum256(b) }

// NewChainID returns a new random chain id: 16 random bytes, hex.
func NewChainID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ValidChainID reports whether s has the form of a chain id.
func ValidChainID(s string) bool { return len(s) == 32 && isLowerHex(s) }

// InStatement reports whether a shipment's statement lists the object name
// (relative to the shipment folder): every object but the segments, the
// statement and the signature.
func InStatement(name string) bool {
	if _, ok := SegmentNumber(name); ok {
		return false
	}
	return name != SignedObject && name != SignatureObject
}

// checkStatementName accepts names of objects a statement may list:
// relative slash-separated paths of letters, digits, '.', '_' and '-', no
// element empty or starting with '.', at most 255 bytes.
func checkStatementName(name string) error {
	if name == "" || len(name) > maxObjectName || !InStatement(name) {
		return fmt.Errorf("statement: %q is not an object a statement lists", clip(name))
	}
	for _, el := range strings.Split(name, "/") {
		if el == "" || el[0] == '.' || strings.Trim(el, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" {
			return fmt.Errorf("statement: invalid object name %q", clip(name))
		}
	}
	return nil
}

// Lookup returns the SHA-256 the statement lists for object name.
func (s *Statement) Lookup(name string) (Digest, bool) {
	i, ok := slices.BinarySearchFunc(s.Objects, name, func(e StatementEntry, n string) int { return strings.Compare(e.Name, n) })
	if !ok {
		return Digest{}, false
	}
	return s.Objects[i].SHA256, true
}

// check enforces what Marshal writes and ParseStatement accepts.
func (s *Statement) check() error {
	switch {
	case !ValidID(s.ID):
		return fmt.Errorf("statement: invalid shipment id %q", clip(s.ID))
	case s.Created.Location() != time.UTC || s.Created.Nanosecond() != 0 || s.Created.Year() < 2000 || s.Created.Year() > 9999:
		return fmt.Errorf("statement: creation time %s is not in UTC whole seconds", s.Created)
	case !ValidChainID(s.Chain):
		return fmt.Errorf("statement: invalid chain id %q", clip(s.Chain))
	case s.Previous == "" && s.PreviousSHA256 != Digest{}:
		return fmt.Errorf("statement: a previous statement's digest without a previous shipment")
	case s.Previous != "" && (!ValidID(s.Previous) || s.Previous == s.ID || s.PreviousSHA256 == Digest{}):
		return fmt.Errorf("statement: invalid previous shipment %q", clip(s.Previous))
	case len(s.Objects) == 0 || len(s.Objects) > maxStatementEntries:
		return fmt.Errorf("statement: %d objects (1 to %d)", len(s.Objects), maxStatementEntries)
	}
	for i, o := range s.Objects {
		if err := checkStatementName(o.Name); err != nil {
			return err
		}
		if i > 0 && s.Objects[i-1].Name >= o.Name {
			return fmt.Errorf("statement: %q is not sorted or repeats", clip(o.Name))
		}
	}
	for _, name := range []string{HeaderObject, InventoryObject, ManifestObject} {
		if _, ok := s.Lookup(name); !ok {
			return fmt.Errorf("statement: does not list the %s", name)
		}
	}
	return nil
}

// Marshal encodes the statement (Objects sorted first).
func (s *Statement) Marshal() ([]byte, error) {
	c := *s
	c.Objects = slices.Clone(s.Objects)
	slices.SortFunc(c.Objects, func(a, b StatementEntry) int { return strings.Compare(a.Name, b.Name) })
	if err := c.check(); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\n# shipment %s\n# created %s\n# chain %s\n", statementMagic, c.ID, c.Created.Format(time.RFC3339), c.Chain)
	if c.Previous == "" {
		b.WriteString("# previous none\n")
	} else {
		fmt.Fprintf(&b, "# previous %s %s\n", c.Previous, c.PreviousSHA256)
	}
	for _, o := range c.Objects {
		fmt.Fprintf(&b, "%s  %s\n", o.SHA256, o.Name)
	}
	return b.Bytes(), nil
}

// ParseStatement decodes a statement strictly: exactly the lines Marshal
// writes, at most 1 MiB and 8192 objects. Errors wrap ErrIntegrity.
func ParseStatement(b []byte) (*Statement, error) {
	s, err := parseStatement(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, ErrIntegrity)
	}
	return s, nil
}

func parseStatement(b []byte) (*Statement, error) {
	if len(b) > MaxStatement {
		return nil, fmt.Errorf("statement: larger than %d bytes", MaxStatement)
	}
	text, ok := strings.CutSuffix(string(b), "\n")
	if !ok || strings.ContainsAny(text, "\r\x00") {
		return nil, fmt.Errorf("statement: not lines of text ending in a newline")
	}
	lines := strings.Split(text, "\n")
	if len(lines) < 6 || len(lines) > 5+maxStatementEntries || lines[0] != statementMagic {
		return nil, fmt.Errorf("statement: not a coldship statement")
	}
	s := &Statement{}
	var created, previous string
	for i, f := range []struct {
		key string
		val *string
	}{{"shipment", &s.ID}, {"created", &created}, {"chain", &s.Chain}, {"previous", &previous}} {
		v, ok := strings.CutPrefix(lines[1+i], "# "+f.key+" ")
		if !ok {
			return nil, fmt.Errorf("statement: line %d is not the %q line", 2+i, f.key)
		}
		*f.val = v
	}
	var err error
	if s.Created, err = time.Parse(time.RFC3339, created); err != nil || s.Created.Format(time.RFC3339) != created {
		return nil, fmt.Errorf("statement: invalid creation time %q", clip(created))
	}
	s.Created = s.Created.UTC()
	if previous != "none" {
		id, sum, ok := strings.Cut(previous, " ")
		if !ok || !parseHexDigest(sum, &s.PreviousSHA256) {
			return nil, fmt.Errorf("statement: invalid previous line %q", clip(previous))
		}
		s.Previous = id
	}
	for _, l := range lines[5:] {
		var e StatementEntry
		if len(l) < 67 || l[64:66] != "  " || !parseHexDigest(l[:64], &e.SHA256) {
			return nil, fmt.Errorf("statement: malformed line %q", clip(l))
		}
		e.Name = l[66:]
		s.Objects = append(s.Objects, e)
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	return s, nil
}

// clip keeps untrusted text in messages short.
func clip(s string) string {
	if len(s) > 100 {
		return s[:100] + "..."
	}
	return s
}

func parseHexDigest(s string, d *Digest) bool {
	if len(s) != 64 || !isLowerHex(s) {
		return false
	}
	hex.Decode(d[:], []byte(s))
	return true
}

func isLowerHex(s string) bool {
	return strings.Trim(s, "0123456789abcdef") == ""
}
