package archive

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"path"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

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
	// Bases (formats 2 and 3) are the earlier shipments whose records this
	// one uses for blocks that did not change, each with the segments that
	// hold them.
	Bases []Base `json:"bases,omitempty"`

	// Format 3 only.
	// Table is the block table object (BlocksObject): its size and digest.
	Table *ObjectRef `json:"table,omitempty"`
	// Keys lists every key object of the shipment: its key slots
	// (keys/NNNN) and its copies of its bases' keys
	// (bases/<id>/keys/NNNN), so that a key object swapped or re-wrapped
	// is caught before it is used, whoever re-sealed the records.
	Keys []ObjectRef `json:"keys,omitempty"`
}

// ObjectRef names an object of a shipment with its size and BLAKE3 digest.
type ObjectRef struct {
	Name   string `json:"name,omitempty"`
	Size   int64  `json:"size"`
	BLAKE3 Digest `json:"blake3"`
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
	Name string `json:"name"` // relative to the shipment folder
	Size int64  `json:"size"`
	// BLAKE3 (formats 1 and 2) or CRC32C (format 3, 8 lowercase hex
	// digits, the Castagnoli CRC that object stores check and keep) of
	// the segment's bytes. Each record in it is authenticated on its own;
	// the checksum catches accidental damage of a segment as a whole.
	BLAKE3 Digest `json:"blake3,omitzero"`
	CRC32C string `json:"crc32c,omitempty"`
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
	BLAKE3  Digest      `json:"blake3"`            // whole-file digest, see FileDigest
	Extents []Extent    `json:"extents,omitempty"` // formats 1 and 2
	Blocks  []Block     `json:"blocks,omitempty"`  // formats 1 and 2: data blocks, ascending index

	// Format 3 only.
	UID        *uint32  `json:"uid,omitempty"` // numeric owner and group, as the source had them
	GID        *uint32  `json:"gid,omitempty"`
	DataBlocks int64    `json:"data_blocks,omitempty"` // entries of the block table for this file
	DataBytes  int64    `json:"data_bytes,omitempty"`  // bytes in the non-zero pages of those blocks
	Backing    *Backing `json:"backing,omitempty"`     // the image this one is an overlay of
	Device     bool     `json:"device,omitempty"`      // read from a block device
	// DataFiles are the files of the shipment that this image keeps its
	// data in (a vmdk descriptor's extent files), by path.
	DataFiles []string `json:"data_files,omitempty"`
}

// Backing names the layer below an overlay image (a qcow2 backing file)
// by its path in the same shipment, so that a receiver can point the
// restored overlay at the restored layer.
type Backing struct {
	Path   string `json:"path"`
	Format string `json:"format"` // qcow2, raw or vmdk: the backing layer's format
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
	return key.Seal(out, manifestContext(m.Format, m.ID), z)
}

// ManifestKeySlot returns the key slot named by a manifest object's first line.
func ManifestKeySlot(b []byte) (int, error) {
	return keySlotLine(b, manifestMagic, "manifest")
}

// keySlotLine parses the first line of a sealed object, "<magic> key=NNNN".
func keySlotLine(b []byte, magic, what string) (int, error) {
	line, _, ok := bytes.Cut(b, []byte("\n"))
	if !ok || len(line) > 64 {
		return 0, fmt.Errorf("%s: malformed: %w", what, ErrIntegrity)
	}
	rest, ok := strings.CutPrefix(string(line), magic+" key=")
	if !ok || len(rest) != 4 {
		return 0, fmt.Errorf("%s: not a coldship %s: %w", what, what, ErrIntegrity)
	}
	slot, err := strconv.Atoi(rest)
	if err != nil || slot < 0 {
		return 0, fmt.Errorf("%s: bad key slot %q: %w", what, rest, ErrIntegrity)
	}
	return slot, nil
}

// OpenManifest authenticates and decodes a manifest object of shipment h
// whose header object bytes are header.
func OpenManifest(b []byte, key *cipher.Key, h *Header, header []byte) (*Manifest, error) {
	_, sealed, _ := bytes.Cut(b, []byte("\n"))
	z, err := key.Open(nil, manifestContext(h.Format, h.ID), sealed)
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	limit := uint64(maxManifest)
	if h.Format >= FormatV3 {
		limit = maxManifestV3
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(limit))
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
	if m.Format != FormatVersion && m.Format != FormatIncremental && m.Format != FormatV3 {
		return fmt.Errorf("format version %d", m.Format)
	}
	if !ValidID(m.ID) {
		return fmt.Errorf("invalid id %q", m.ID)
	}
	if m.BlockSize < MinBlockSize || m.BlockSize > MaxBlockSize || m.BlockSize%PageSize != 0 && m.Format >= FormatV3 {
		return fmt.Errorf("block size %d out of range", m.BlockSize)
	}
	v3 := m.Format >= FormatV3
	if err := checkSegments(m.Segments, v3); err != nil {
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
		if err := checkSegments(b.Segments, v3); err != nil {
			return fmt.Errorf("base %s: %v", b.ID, err)
		}
	}
	if err := m.checkV3Objects(); err != nil {
		return err
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
		if err := m.checkFile(f); err != nil {
			return err
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
	if err := checkDataFiles(m.Files, seen); err != nil {
		return err
	}
	return checkBacking(m.Files, seen)
}

// checkFile checks one entry of files.
func (m *Manifest) checkFile(f *File) error {
	v3 := m.Format >= FormatV3
	if v3 != (f.UID != nil && f.GID != nil) {
		return fmt.Errorf("%s: owner missing or not expected in format %d", f.Path, m.Format)
	}
	if !v3 && (f.DataBlocks != 0 || f.DataBytes != 0 || f.Backing != nil || f.Device || f.DataFiles != nil) {
		return fmt.Errorf("%s: format 3 fields in a format %d manifest", f.Path, m.Format)
	}
	switch f.Type {
	case TypeDir:
		if f.Size != 0 || len(f.Blocks) != 0 || len(f.Extents) != 0 || f.DataBlocks != 0 || f.DataBytes != 0 || f.Backing != nil || f.Device || f.DataFiles != nil {
			return fmt.Errorf("%s: directory with data", f.Path)
		}
		return nil
	case TypeFile:
	default:
		return fmt.Errorf("%s: unknown type %q", f.Path, f.Type)
	}
	nblocks := m.NumBlocks(f.Size)
	if f.Size < 0 || f.Size > MaxFileSize || nblocks > MaxFileBlocks {
		return fmt.Errorf("%s: size %d out of range", f.Path, f.Size)
	}
	if v3 {
		if len(f.Extents) != 0 || len(f.Blocks) != 0 {
			return fmt.Errorf("%s: extents or blocks in a format %d manifest", f.Path, m.Format)
		}
		if f.DataBlocks < 0 || f.DataBlocks > nblocks || f.DataBytes < f.DataBlocks || f.DataBytes > f.Size ||
			(f.DataBlocks == 0) != (f.DataBytes == 0) || f.DataBytes > f.DataBlocks*m.BlockSize {
			return fmt.Errorf("%s: %d data blocks of %d bytes do not fit a file of %d bytes", f.Path, f.DataBlocks, f.DataBytes, f.Size)
		}
		return nil
	}
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
		if err := m.checkPlace(b.Base, b.File, b.Segment, b.Offset, b.Length); err != nil {
			return fmt.Errorf("%s: block %d: %v", f.Path, b.Index, err)
		}
	}
	return nil
}

// checkPlace checks where a record is said to be: in this shipment (base
// 0) or a listed base, within one of its segments.
func (m *Manifest) checkPlace(base, baseFile, segment int, offset, length int64) error {
	segs := m.Segments
	switch {
	case base < 0 || base > len(m.Bases):
		return fmt.Errorf("refers to missing base %d", base)
	case base == 0 && baseFile != 0:
		return errors.New("names a base file without a base")
	case base > 0:
		if baseFile < 0 || int64(baseFile) > math.MaxUint32 {
			return fmt.Errorf("base file index %d out of range", baseFile)
		}
		segs = m.Bases[base-1].Segments
	}
	if segment < 0 || segment >= len(segs) {
		return fmt.Errorf("refers to missing segment %d", segment)
	}
	s := segs[segment]
	if offset < 0 || length <= 0 || length > m.MaxRecordLen() || offset > s.Size-length {
		return fmt.Errorf("lies outside segment %s", s.Name)
	}
	return nil
}

// MaxRecordLen is the longest record a block of this shipment can have.
func (m *Manifest) MaxRecordLen() int64 {
	if m.Format >= FormatV3 {
		// A compressed form may be a little longer than the form.
		n := int64(MaxFormLen(m.BlockSize))
		return cipher.SealedSize(n + n/8 + 1024)
	}
	return cipher.SealedSize(m.BlockSize)
}

// checkV3Objects checks the objects only format 3 lists: the block table
// and every key object.
func (m *Manifest) checkV3Objects() error {
	if m.Format < FormatV3 {
		if m.Table != nil || len(m.Keys) != 0 {
			return fmt.Errorf("format 3 objects in a format %d manifest", m.Format)
		}
		return nil
	}
	if m.Table == nil || m.Table.Name != "" || m.Table.Size <= 0 {
		return errors.New("no block table")
	}
	bases := map[string]bool{}
	for _, b := range m.Bases {
		bases[b.ID] = true
	}
	names := map[string]bool{}
	for _, k := range m.Keys {
		if names[k.Name] || k.Size <= 0 || k.Size > MaxKeyObject {
			return fmt.Errorf("key object %q: repeated or of a bad size", k.Name)
		}
		names[k.Name] = true
		if _, ok := KeySlot(k.Name); ok {
			continue
		}
		id, slot, ok := ParseBaseKeyObject(k.Name)
		if !ok || !bases[id] || slot < 0 {
			return fmt.Errorf("key object %q: not a key slot of this shipment or of a listed base", k.Name)
		}
	}
	// Every slot a segment names has its key object listed.
	for _, s := range m.Segments {
		if !names[KeyObject(s.Key)] {
			return fmt.Errorf("segment %s: key slot %d is not listed", s.Name, s.Key)
		}
	}
	for _, b := range m.Bases {
		for _, s := range b.Segments {
			if !names[BaseKeyObject(b.ID, s.Key)] {
				return fmt.Errorf("base %s segment %s: key slot %d is not listed", b.ID, s.Name, s.Key)
			}
		}
	}
	return nil
}

// checkDataFiles checks that every data file of files names another file
// of them (types: the type of each path), once, and that no data file has
// data files of its own.
func checkDataFiles(files []File, types map[string]string) error {
	isData := map[string]bool{}
	for _, f := range files {
		for _, d := range f.DataFiles {
			if types[d] != TypeFile || d == f.Path || isData[d] {
				return fmt.Errorf("%s: data file %q is not a file of the shipment, or is listed twice", f.Path, d)
			}
			isData[d] = true
		}
	}
	for _, f := range files {
		if isData[f.Path] && f.DataFiles != nil {
			return fmt.Errorf("%s: a data file with data files of its own", f.Path)
		}
	}
	return nil
}

// checkBacking checks that every backing reference of files names another
// file of them (types: the type of each path) and that following them
// never loops.
func checkBacking(files []File, types map[string]string) error {
	next := map[string]string{}
	for _, f := range files {
		if f.Backing == nil {
			continue
		}
		switch f.Backing.Format {
		case "qcow2", "raw", "vmdk":
		default:
			return fmt.Errorf("%s: backing format %q", f.Path, f.Backing.Format)
		}
		if types[f.Backing.Path] != TypeFile || f.Backing.Path == f.Path {
			return fmt.Errorf("%s: backing file %q is not a file of the shipment", f.Path, f.Backing.Path)
		}
		next[f.Path] = f.Backing.Path
	}
	for start := range next {
		p, steps := start, 0
		for ; next[p] != "" && steps <= len(next); steps++ {
			p = next[p]
		}
		if steps > len(next) {
			return fmt.Errorf("%s: backing chain loops", start)
		}
	}
	return nil
}

// KeyObjectRef returns the entry of Keys for object name, if listed.
func (m *Manifest) KeyObjectRef(name string) (ObjectRef, bool) {
	for _, k := range m.Keys {
		if k.Name == name {
			return k, true
		}
	}
	return ObjectRef{}, false
}

func checkSegments(segs []Segment, v3 bool) error {
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
		if v3 != (s.CRC32C != "") || (v3 && (!validCRC(s.CRC32C) || s.BLAKE3 != Digest{})) {
			return fmt.Errorf("segment %s: checksum does not fit the format", s.Name)
		}
	}
	return nil
}

// CheckName reports why the relative, slash-separated name cannot be a
// file's path in a shipment, nil if it can: a receive refuses a path
// holding a backslash (checkPath), and the manifest, which is JSON, keeps
// UTF-8 only (any other byte would come back as U+FFFD, another name).
// Send checks every source's name with it before shipping anything.
func CheckName(name string) error {
	switch {
	case strings.Contains(name, `\`):
		return errors.New("it holds a backslash, which no receive accepts in a path")
	case !utf8.ValidString(name):
		return errors.New("it is not valid UTF-8, and a shipment's manifest keeps UTF-8 names only")
	case checkPath(name) != nil:
		return errors.New("it is not a clean relative path")
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
