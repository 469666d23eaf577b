package archive

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Format versions. A full shipment is version 1; a shipment that refers to
// records of earlier shipments (an incremental one, with a base) is version
// 2, so that a reader of version 1 refuses it plainly instead of failing on
// fields it does not know.
//
// Version 3 is what coldship writes now, full or incremental alike (a
// base in the header makes it incremental): records carry only the
// non-zero pages of their block (see FormBuilder), the per-block table is
// a sealed object of its own, read as a stream (see TableWriter), and the
// manifest binds every key object and records owners and backing chains.
// Versions 1 and 2 are still read.
const (
	FormatVersion     = 1 // full shipments, dense records
	FormatIncremental = 2 // shipments with bases, dense records
	FormatV3          = 3 // page-sparse records, streamed block table
)

// Names of the objects of a shipment, relative to the shipment's folder.
const (
	HeaderObject    = "header"
	InventoryObject = "inventory"
	ManifestObject  = "manifest"
	BlocksObject    = "blocks"   // format 3: the sealed block table
	SegmentFolder   = "segments" // the folder of the segments
	keyPrefix       = "keys/"
	segmentPrefix   = SegmentFolder + "/"
	basePrefix      = "bases/"
)

// Magic lines that start the plaintext objects.
const (
	headerMagic    = "coldship-shipment-v1\n"
	manifestMagic  = "coldship-manifest-v1"
	inventoryMagic = "coldship-inventory-v1\n"
	blocksMagic    = "coldship-blocks-v3"
)

// Limits that keep a hostile manifest from exhausting memory.
const (
	MinBlockSize = 64 << 10
	MaxBlockSize = 64 << 20
	maxManifest  = 1 << 30
	maxHeader    = 64 << 10
	// A format 3 manifest holds no per-block data: files and segments.
	maxManifestV3 = 64 << 20
	// MaxFileSize and MaxFileBlocks bound what a manifest may claim of a
	// file, so that no claim makes a reader loop or allocate for ever.
	MaxFileSize   = 1 << 56
	MaxFileBlocks = 1 << 32
	// MaxKeyObject bounds a wrapped key object.
	MaxKeyObject = 1 << 20
)

// ErrIntegrity marks data that is tampered, corrupted, truncated or missing.
// Callers map it to exit status 5. It matches cipher.ErrIntegrity too.
var ErrIntegrity = errors.New("integrity check failed")

// ErrUnsupported marks a shipment of a format this coldship does not read
// (a newer one): not damage, so not ErrIntegrity.
var ErrUnsupported = errors.New("unsupported format")

// ErrIncomplete marks a shipment without its manifest: its send did not
// finish (or is still running).
var ErrIncomplete = errors.New("shipment is incomplete (no manifest)")

// KeyObject returns the name of the wrapped key of a key slot.
func KeyObject(slot int) string { return fmt.Sprintf("%s%04d", keyPrefix, slot) }

// BaseKeyObject returns the name, inside an incremental shipment, of its
// copy of key slot slot of its base shipment baseID.
func BaseKeyObject(baseID string, slot int) string {
	return fmt.Sprintf("%s%s/%s", basePrefix, baseID, KeyObject(slot))
}

// KeySlot returns slot for a name KeyObject(slot).
func KeySlot(name string) (int, bool) {
	digits, ok := strings.CutPrefix(name, keyPrefix)
	if !ok || len(digits) != 4 {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	if err != nil || n < 0 || KeyObject(n) != name {
		return 0, false
	}
	return n, true
}

// ParseBaseKeyObject returns the base id and slot of a name
// BaseKeyObject(id, slot).
func ParseBaseKeyObject(name string) (id string, slot int, ok bool) {
	rest, ok := strings.CutPrefix(name, basePrefix)
	if !ok {
		return "", 0, false
	}
	id, key, ok := strings.Cut(rest, "/")
	if !ok || !ValidID(id) {
		return "", 0, false
	}
	slot, ok = KeySlot(key)
	return id, slot, ok
}

// SegmentObject returns the name of the n-th segment (n from 1).
func SegmentObject(n int) string { return fmt.Sprintf("%s%08d", segmentPrefix, n) }

// SegmentNumber returns n for a name SegmentObject(n).
func SegmentNumber(name string) (int, bool) {
	digits, ok := strings.CutPrefix(name, segmentPrefix)
	if !ok || len(digits) != 8 {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	if err != nil || n < 1 || SegmentObject(n) != name {
		return 0, false
	}
	return n, true
}

var idPattern = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$`)

// NewID returns a shipment id that sorts by creation time, such as
// 20261121T233000Z-3f9a1c2e.
//
// The 8 hex digits are the milliseconds (3 digits, 000 to 3e7) and 20
// random bits, so that ids made within one second still sort by time.
func NewID(now time.Time) (string, error) {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	now = now.UTC()
	ms := now.Nanosecond() / 1e6
	return fmt.Sprintf("%s-%03x%s", now.Format("20060102T150405Z"), ms, hex.EncodeToString(b[:])[:5]), nil
}

// ValidID reports whether s has the form of a shipment id.
func ValidID(s string) bool { return idPattern.MatchString(s) }

// BlockContext is the Cobblestone context of one block: it binds the format
// version, the shipment, the file's index in the manifest and the block's
// index in the file, so a block moved anywhere else fails to open.
func BlockContext(id string, file uint32, block uint64) []byte {
	return placeContext("coldship/v1/block\x00", id, file, block)
}

// placeContext is prefix || id || 0x00 || u32be(file) || u64be(block).
func placeContext(prefix, id string, file uint32, block uint64) []byte {
	c := make([]byte, 0, len(prefix)+len(id)+13)
	c = append(c, prefix...)
	c = append(c, id...)
	c = append(c, 0)
	c = binary.BigEndian.AppendUint32(c, file)
	c = binary.BigEndian.AppendUint64(c, block)
	return c
}

// ManifestContext is the Cobblestone context of a shipment's manifest.
func ManifestContext(id string) []byte {
	return []byte("coldship/v1/manifest\x00" + id)
}

// BlockContextV3 is the context of a block of a format 3 shipment:
//
//	"coldship/v3/block" 0x00 || id || 0x00 || u32be(file) || u64be(block)
//
// The version in the prefix keeps a record of one format from ever
// opening as a record of another.
func BlockContextV3(id string, file uint32, block uint64) []byte {
	return placeContext("coldship/v3/block\x00", id, file, block)
}

// ManifestContextV3 is the context of a format 3 manifest.
func ManifestContextV3(id string) []byte {
	return []byte("coldship/v3/manifest\x00" + id)
}

// BlocksContext is the context of a format 3 block table.
func BlocksContext(id string) []byte {
	return []byte("coldship/v3/blocks\x00" + id)
}

// blockContext returns the context of a block of a shipment of format.
func blockContext(format int, id string, file uint32, block uint64) []byte {
	if format >= FormatV3 {
		return BlockContextV3(id, file, block)
	}
	return BlockContext(id, file, block)
}

// manifestContext returns the context of a manifest of format.
func manifestContext(format int, id string) []byte {
	if format >= FormatV3 {
		return ManifestContextV3(id)
	}
	return ManifestContext(id)
}
