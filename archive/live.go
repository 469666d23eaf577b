package archive

// Live sessions (coldship send --live) stream a shipment's records straight
// into a receiver instead of storing them: there are no segments and no
// inventory, and a block position may be sent again, with new content, in
// a later pre-copy round. Every message of a session is therefore sealed
// under a context that binds it to the session's shipment, its kind, the
// lane it travels on (the SSH channel or one TCP connection), its position
// in that lane and its round, so that a record replayed, reordered,
// dropped, moved to another lane or carried over from an earlier round
// fails to open. docs/LIVE.md specifies the protocol.
//
// Protocols 2 and 3 carry format 3 block records: the payload of a block record
// is the block's form (see FormBuilder), or a zstd frame of it, so a block
// that is mostly hole costs what it holds in data on the wire and at the
// receiver; the live manifest's whole-file digest is format 3's (see
// FileDigester), and every context starts with "coldship/v3/live" 0x00.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"path"
	"time"
)

const liveContextPrefix = "coldship/v3/live\x00"

// LiveFormat is the version of the live protocol and of its manifest.
// Version 1 carried dense blocks under "coldship/v1/live" contexts; version
// 3 added heartbeats; peers of different versions refuse each other at the
// hello.
const LiveFormat = 3

// LiveBlock is the kind byte of a block record in live contexts.
const LiveBlock = 'D'

// LiveContext is the Cobblestone context of a message of a live session:
//
//	"coldship/v3/live" 0x00 || id || 0x00 || kind || u32be(lane) || u64be(seq) || u32be(round)
func LiveContext(id string, kind byte, lane uint32, seq uint64, round uint32) []byte {
	c := make([]byte, 0, 64+len(id))
	c = append(c, liveContextPrefix...)
	c = append(c, id...)
	c = append(c, 0, kind)
	c = binary.BigEndian.AppendUint32(c, lane)
	c = binary.BigEndian.AppendUint64(c, seq)
	return binary.BigEndian.AppendUint32(c, round)
}

// LiveBlockContext is the context of a block record of a live session: a
// LiveContext of kind LiveBlock followed by the block's place and whether
// its payload is compressed:
//
//	... || u32be(file) || u64be(block) || u8(compressed)
func LiveBlockContext(id string, lane uint32, seq uint64, round uint32, file uint32, block uint64, compressed bool) []byte {
	c := LiveContext(id, LiveBlock, lane, seq, round)
	c = binary.BigEndian.AppendUint32(c, file)
	c = binary.BigEndian.AppendUint64(c, block)
	if compressed {
		return append(c, 1)
	}
	return append(c, 0)
}

// SealLive is Seal for a live session: context gives the record's context
// once it is known whether the payload is compressed. In protocol 2, plain
// is the block's form.
func (c *Codec) SealLive(dst, scratch, plain []byte, context func(compressed bool) []byte) (record []byte, compressed bool, err error) {
	payload, compressed := c.payload(plain, scratch)
	record, err = c.key.Seal(dst, context(compressed), payload)
	return record, compressed, err
}

// OpenLive authenticates a record of a live session under context,
// decompresses it if needed into dst and checks that the plaintext is
// wantLen bytes long. The caller hashes it: the digest to expect is known
// only once the session's manifest arrives.
func (c *Codec) OpenLive(dst, scratch, record, context []byte, compressed bool, wantLen int64) ([]byte, error) {
	if !compressed {
		plain, err := c.key.Open(dst[:0], context, record)
		if err != nil {
			return nil, err
		}
		return checkLen(plain, wantLen)
	}
	if !c.compress {
		return nil, fmt.Errorf("compressed block in a session without compression: %w", ErrIntegrity)
	}
	z, err := c.key.Open(scratch[:0], context, record)
	if err != nil {
		return nil, err
	}
	if int64(len(z)) > wantLen+wantLen/8+1024 {
		return nil, fmt.Errorf("compressed block larger than its plaintext: %w", ErrIntegrity)
	}
	plain, err := c.decompress(dst, z, wantLen)
	if err != nil {
		return nil, err
	}
	return checkLen(plain, wantLen)
}

// OpenLiveForm authenticates a block record of a live session (protocol
// 2) under context, decompresses it if needed into dst (at least
// MaxFormLen(n) bytes), and checks that it is the canonical form of a
// block of n bytes that holds data. It returns the form and its data
// bytes; the caller computes FormDigest when it needs the digest.
func (c *Codec) OpenLiveForm(dst, scratch, record, context []byte, compressed bool, n int64) ([]byte, int64, error) {
	limit := int64(MaxFormLen(n))
	var form []byte
	var err error
	switch {
	case !compressed:
		form, err = c.key.Open(dst[:0], context, record)
	case !c.compress:
		return nil, 0, fmt.Errorf("compressed block in a session without compression: %w", ErrIntegrity)
	default:
		form, err = c.openCompressed(dst[:limit], scratch, record, context, limit)
	}
	if err != nil {
		return nil, 0, err
	}
	data, err := CheckForm(form, n)
	if err != nil {
		return nil, 0, err
	}
	return form, data, nil
}

func checkLen(plain []byte, wantLen int64) ([]byte, error) {
	if int64(len(plain)) != wantLen {
		return nil, fmt.Errorf("block has %d bytes, want %d: %w", len(plain), wantLen, ErrIntegrity)
	}
	return plain, nil
}

// LiveManifest is the manifest of a live session, sent after its final
// round: the files as they were then. Its Files carry extents (runs of
// whole blocks: data, hole, zero), whole-file digests, and, as in format
// 3, owners, the device flag and backing layers, but no Blocks:
// the receiver has the FormDigest of the form it wrote last for every
// data block, and the format 3 whole-file digest (FileDigester(FormatV3))
// over those, in index order, proves that what it holds is the sender's
// file.
type LiveManifest struct {
	Format      int       `json:"format"`
	ID          string    `json:"id"`
	Created     time.Time `json:"created"`
	Label       string    `json:"label,omitempty"`
	BlockSize   int64     `json:"block_size"`
	Compression string    `json:"compression"`
	Rounds      int       `json:"rounds"`
	Files       []File    `json:"files"`
}

// ParseLiveManifest decodes a live manifest and checks every invariant a
// receiver relies on, as ParseManifest does for stored shipments.
func ParseLiveManifest(j []byte) (*LiveManifest, error) {
	var m LiveManifest
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("live manifest: %v: %w", err, ErrIntegrity)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("live manifest: trailing data: %w", ErrIntegrity)
	}
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("live manifest: %v: %w", err, ErrIntegrity)
	}
	return &m, nil
}

func (m *LiveManifest) check() error {
	if m.Format != LiveFormat {
		return fmt.Errorf("format version %d", m.Format)
	}
	if !ValidID(m.ID) {
		return fmt.Errorf("invalid id %q", m.ID)
	}
	if m.BlockSize < MinBlockSize || m.BlockSize > MaxBlockSize {
		return fmt.Errorf("block size %d out of range", m.BlockSize)
	}
	if m.Compression != "none" && m.Compression != "zstd" {
		return fmt.Errorf("compression %q", m.Compression)
	}
	if m.Rounds < 1 {
		return fmt.Errorf("%d rounds", m.Rounds)
	}
	if err := CheckLiveFiles(m.Files); err != nil {
		return err
	}
	types := map[string]string{}
	for i := range m.Files {
		f := &m.Files[i]
		types[f.Path] = f.Type
		if len(f.Blocks) != 0 || f.DataBlocks != 0 || f.DataBytes != 0 {
			return fmt.Errorf("%s: block table in a live manifest", f.Path)
		}
		if (f.UID == nil) != (f.GID == nil) {
			return fmt.Errorf("%s: owner without group", f.Path)
		}
		if f.Type != TypeFile {
			if len(f.Extents) != 0 || f.Backing != nil || f.Device || f.DataFiles != nil {
				return fmt.Errorf("%s: directory with data", f.Path)
			}
			continue
		}
		off := int64(0)
		for _, e := range f.Extents {
			if e.Offset != off || e.Length <= 0 || (e.Kind != KindData && e.Kind != KindHole && e.Kind != KindZero) {
				return fmt.Errorf("%s: extents do not tile the file", f.Path)
			}
			if e.Offset%m.BlockSize != 0 || (e.Length%m.BlockSize != 0 && e.Offset+e.Length != f.Size) {
				return fmt.Errorf("%s: extent at %d is not a run of whole blocks", f.Path, e.Offset)
			}
			off += e.Length
			if off > f.Size {
				break
			}
		}
		if off != f.Size {
			return fmt.Errorf("%s: extents cover %d of %d bytes", f.Path, off, f.Size)
		}
	}
	if err := checkDataFiles(m.Files, types); err != nil {
		return err
	}
	return checkBacking(m.Files, types)
}

// CheckLiveFiles checks the file table of a live session (paths, types,
// modes and sizes): paths are clean, relative and unique, none lies under a
// file, directories have no size.
func CheckLiveFiles(files []File) error {
	seen := map[string]string{}
	for i := range files {
		f := &files[i]
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
			if f.Size != 0 {
				return fmt.Errorf("%s: directory with a size", f.Path)
			}
		case TypeFile:
			if f.Size < 0 || f.Size > 1<<56 {
				return fmt.Errorf("%s: size %d out of range", f.Path, f.Size)
			}
		default:
			return fmt.Errorf("%s: unknown type %q", f.Path, f.Type)
		}
	}
	for p := range seen {
		for dir := path.Dir(p); dir != "."; dir = path.Dir(dir) {
			if t, ok := seen[dir]; ok && t != TypeDir {
				return fmt.Errorf("%q lies inside file %q", p, dir)
			}
		}
	}
	return nil
}
