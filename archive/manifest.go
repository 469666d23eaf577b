package archive

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/coldship/coldship/cipher"
)

// Digest is a 32-byte digest, hex-encoded in JSON.
type Digest [32]byte

func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// MarshalText implements encoding.TextMarshaler.
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Digest) UnmarshalText(b []byte) error {
	if len(b) != 64 {
		return fmt.Errorf("digest: want 64 hex digits, got %d", len(b))
	}
	_, err := hex.Decode(d[:], b)
	return err
}

// Manifest is the sealed table of contents of a shipment, written last:
// a shipment without it is incomplete.
type Manifest struct {
	Format       int       `json:"format"`
	ID           string    `json:"id"`
	Created      time.Time `json:"created"`
	Label        string    `json:"label,omitempty"`
	HeaderDigest Digest    `json:"header_blake3"`
	BlockSize    int64     `json:"block_size"`
	Compression  string    `json:"compression"`
	Segments     []Segment `json:"segments"`
	Files        []File    `json:"files"`
	// Bases (format 2 only) are the earlier shipments whose records this
	// one uses for blocks that did not change, each with the segments that
	// hold them.
	Bases []Base `json:"bases,omitempty"`
}

// Base is an earlier shipment that an incremental shipment refers to. The
// keys that sealed its segments are copied, still wrapped, into the
// incremental shipment (BaseKeyObject), so that a receiver unwraps every
// key it needs from the newest shipment alone.
type Base struct {
	ID       string    `json:"id"`
	Segments []Segment `json:"segments"` // the referenced segments of the base, as in its own manifest
}

// Segment is one object of sealed blocks.
type Segment struct {
	Name   string `json:"name"` // relative to the shipment folder
	Size   int64  `json:"size"`
	BLAKE3 Digest `json:"blake3"`
	Key    int    `json:"key"` // key slot that sealed its blocks
}

// File types in a manifest.
const (
	TypeFile = "file"
	TypeDir  = "dir"
)

// Extent kinds.
const (
	KindData = "data"
	KindHole = "hole"
	KindZero = "zero"
)

// File is one regular file or directory of the shipment.
type File struct {
	Path    string      `json:"path"` // slash-separated, relative
	Type    string      `json:"type"`
	Size    int64       `json:"size,omitempty"`
	Mode    fs.FileMode `json:"mode"` // permission bits only
	MTime   time.Time   `json:"mtime"`
	BLAKE3  Digest      `json:"blake3"` // whole-file digest, see FileDigest
	Extents []Extent    `json:"extents,omitempty"`
	Blocks  []Block     `json:"blocks,omitempty"` // data blocks, ascending index
}

// Extent is a run of blocks of one kind; extents cover the file in order.
type Extent struct {
	Kind   string `json:"kind"`
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
}

// Block places one sealed data block: a record in a segment of this
// shipment or, when Base is set, of a base shipment, sealed there with the
// base's key and the block context of the base's file File.
type Block struct {
	Index      int64  `json:"i"`
	Base       int    `json:"b,omitempty"` // 0: this shipment; k > 0: Manifest.Bases[k-1]
	File       int    `json:"f,omitempty"` // with Base: the file's index in the base (its block context)
	Segment    int    `json:"s"`           // index into Manifest.Segments, or into the base's Segments
	Offset     int64  `json:"o"`           // of the sealed record in the segment
	Length     int64  `json:"n"`           // of the sealed record
	Compressed bool   `json:"z,omitempty"`
	BLAKE3     Digest `json:"h"` // of the block's plaintext
}

// Seal encodes the manifest as JSON, compresses it with zstd and seals it
// with key, giving the bytes of the manifest object.
func (m *Manifest) Seal(key *cipher.Key, slot int) ([]byte, error) {
	j, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	z := enc.EncodeAll(j, nil)
	enc.Close()
	out := fmt.Appendf(nil, "%s key=%04d\n", manifestMagic, slot)
	return key.Seal(out, ManifestContext(m.ID), z)
}

// ManifestKeySlot returns the key slot named by a manifest object's first line.
func ManifestKeySlot(b []byte) (int, error) {
	line, _, ok := bytes.Cut(b, []byte("\n"))
	if !ok || len(line) > 64 {
		return 0, fmt.Errorf("manifest: malformed: %w", ErrIntegrity)
	}
	rest, ok := strings.CutPrefix(string(line), manifestMagic+" key=")
	if !ok || len(rest) != 4 {
		return 0, fmt.Errorf("manifest: not a coldship manifest: %w", ErrIntegrity)
	}
	slot, err := strconv.Atoi(rest)
	if err != nil || slot < 0 {
		return 0, fmt.Errorf("manifest: bad key slot %q: %w", rest, ErrIntegrity)
	}
	return slot, nil
}

// OpenManifest authenticates and decodes a manifest object of shipment h
// whose header object bytes are header.
func OpenManifest(b []byte, key *cipher.Key, h *Header, header []byte) (*Manifest, error) {
	line, sealed, _ := bytes.Cut(b, []byte("\n"))
	_ = line
	z, err := key.Open(nil, ManifestContext(h.ID), sealed)
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxManifest))
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	j, err := dec.DecodeAll(z, nil)
	if err != nil {
		return nil, fmt.Errorf("manifest: decompress: %v: %w", err, ErrIntegrity)
	}
	m, err := ParseManifest(j)
	if err != nil {
		return nil, err
	}
	if m.Format != h.Format || m.ID != h.ID || m.BlockSize != h.BlockSize || m.Compression != h.Compression || !m.Created.Equal(h.Created) || m.Label != h.Label {
		return nil, fmt.Errorf("manifest: does not match the shipment header: %w", ErrIntegrity)
	}
	if m.HeaderDigest != ObjectDigest(header) {
		return nil, fmt.Errorf("manifest: header object was changed: %w", ErrIntegrity)
	}
	return m, nil
}

// ParseManifest decodes manifest JSON and checks every invariant a
// receiver relies on, so that a hostile manifest (anyone holding a
// recipient's public key can write one) cannot escape the output
// directory, overlap blocks or exhaust memory.
func ParseManifest(j []byte) (*Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("manifest: %v: %w", err, ErrIntegrity)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("manifest: trailing data: %w", ErrIntegrity)
	}
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("manifest: %v: %w", err, ErrIntegrity)
	}
	return &m, nil
}

func (m *Manifest) check() error {
	if m.Format != FormatVersion && m.Format != FormatIncremental {
		return fmt.Errorf("format version %d", m.Format)
	}
	if !ValidID(m.ID) {
		return fmt.Errorf("invalid id %q", m.ID)
	}
	if m.BlockSize < MinBlockSize || m.BlockSize > MaxBlockSize {
		return fmt.Errorf("block size %d out of range", m.BlockSize)
	}
	if err := checkSegments(m.Segments); err != nil {
		return err
	}
	if m.Format == FormatVersion && len(m.Bases) > 0 {
		return fmt.Errorf("bases in a format %d manifest", m.Format)
	}
	baseIDs := map[string]bool{m.ID: true}
	for _, b := range m.Bases {
		if !ValidID(b.ID) || baseIDs[b.ID] {
			return fmt.Errorf("base %q: invalid or repeated id", b.ID)
		}
		baseIDs[b.ID] = true
		if err := checkSegments(b.Segments); err != nil {
			return fmt.Errorf("base %s: %v", b.ID, err)
		}
	}
	seen := map[string]string{}
	for fi := range m.Files {
		f := &m.Files[fi]
		if err := checkPath(f.Path); err != nil {
			return err
		}
		if _, dup := seen[f.Path]; dup {
			return fmt.Errorf("path %q appears twice", f.Path)
		}
		seen[f.Path] = f.Type
		if f.Mode&^fs.ModePerm != 0 {
			return fmt.Errorf("%s: mode %v has more than permission bits", f.Path, f.Mode)
		}
		switch f.Type {
		case TypeDir:
			if f.Size != 0 || len(f.Blocks) != 0 || len(f.Extents) != 0 {
				return fmt.Errorf("%s: directory with data", f.Path)
			}
			continue
		case TypeFile:
		default:
			return fmt.Errorf("%s: unknown type %q", f.Path, f.Type)
		}
		if f.Size < 0 || f.Size > 1<<56 {
			return fmt.Errorf("%s: size %d out of range", f.Path, f.Size)
		}
		nblocks := (f.Size + m.BlockSize - 1) / m.BlockSize
		off := int64(0)
		for _, e := range f.Extents {
			if e.Offset != off || e.Length <= 0 || (e.Kind != KindData && e.Kind != KindHole && e.Kind != KindZero) {
				return fmt.Errorf("%s: extents do not tile the file", f.Path)
			}
			off += e.Length
		}
		if off != f.Size {
			return fmt.Errorf("%s: extents cover %d of %d bytes", f.Path, off, f.Size)
		}
		prev := int64(-1)
		for _, b := range f.Blocks {
			if b.Index <= prev || b.Index >= nblocks {
				return fmt.Errorf("%s: block index %d out of order or range", f.Path, b.Index)
			}
			prev = b.Index
			segs := m.Segments
			switch {
			case b.Base < 0 || b.Base > len(m.Bases):
				return fmt.Errorf("%s: block %d refers to missing base %d", f.Path, b.Index, b.Base)
			case b.Base == 0 && b.File != 0:
				return fmt.Errorf("%s: block %d names a base file without a base", f.Path, b.Index)
			case b.Base > 0:
				if b.File < 0 || int64(b.File) > math.MaxUint32 {
					return fmt.Errorf("%s: block %d: base file index %d out of range", f.Path, b.Index, b.File)
				}
				segs = m.Bases[b.Base-1].Segments
			}
			if b.Segment < 0 || b.Segment >= len(segs) {
				return fmt.Errorf("%s: block %d refers to missing segment %d", f.Path, b.Index, b.Segment)
			}
			s := segs[b.Segment]
			if b.Offset < 0 || b.Length <= 0 || b.Length > cipher.SealedSize(m.BlockSize) || b.Offset > s.Size-b.Length {
				return fmt.Errorf("%s: block %d lies outside segment %s", f.Path, b.Index, s.Name)
			}
		}
	}
	// Every parent of a path must be a directory of the shipment or absent,
	// never a file: otherwise a file would have to be written inside a file.
	for p := range seen {
		for dir := path.Dir(p); dir != "."; dir = path.Dir(dir) {
			if t, ok := seen[dir]; ok && t != TypeDir {
				return fmt.Errorf("%q lies inside file %q", p, dir)
			}
		}
	}
	return nil
}

func checkSegments(segs []Segment) error {
	prev := 0
	for _, s := range segs {
		n, ok := SegmentNumber(s.Name)
		if !ok || n <= prev {
			return fmt.Errorf("segment %q: not a segment name in ascending order", s.Name)
		}
		prev = n
		if s.Size < 0 || s.Key < 0 || s.Key > 9999 {
			return fmt.Errorf("segment %s: bad size or key slot", s.Name)
		}
	}
	return nil
}

// checkPath accepts only clean, relative, slash-separated paths.
func checkPath(p string) error {
	if p == "" || p == "." || path.Clean(p) != p || strings.HasPrefix(p, "/") || p == ".." || strings.HasPrefix(p, "../") ||
		strings.ContainsAny(p, "\\\x00") {
		return fmt.Errorf("unsafe path %q", p)
	}
	return nil
}

// NumBlocks returns how many blocks a file of size bytes has.
func (m *Manifest) NumBlocks(size int64) int64 { return (size + m.BlockSize - 1) / m.BlockSize }

// BaseIDs returns the ids of the shipments whose records this one uses.
func (m *Manifest) BaseIDs() []string {
	ids := make([]string, len(m.Bases))
	for i, b := range m.Bases {
		ids[i] = b.ID
	}
	return ids
}

// DataSize returns the sum of the sizes of the segments.
func (m *Manifest) DataSize() int64 {
	var n int64
	for _, s := range m.Segments {
		n += s.Size
	}
	return n
}
