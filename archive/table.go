package archive

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/zeebo/blake3"

	"github.com/coldship/coldship/cipher"
)

// The block table of a format 3 shipment is an object of its own,
// BlocksObject:
//
//	coldship-blocks-v3 key=NNNN\n
//	<one Cobblestone message (BlocksContext), sealed with the key of that slot>
//
// whose plaintext is a sequence of TableEntrySize-byte entries, one per
// data block of the shipment, in strictly ascending (file, block) order.
// A block that has no entry is zero (a hole at the destination). Being a
// chunked message, it is written and read as a stream: neither end ever
// holds the table whole, whatever the number of blocks.

// TableEntrySize is the size of one entry of a block table.
const TableEntrySize = 68

// TableEntry places one data block. Encoded big-endian:
//
//	u32 file | u64 block | u16 base | u32 base_file | u32 segment |
//	u64 offset | u32 length | u8 flags | u8 reserved (0) | [32] digest
//
// flags bit 0: the record's payload is zstd-compressed; the other bits and
// the reserved byte are 0.
type TableEntry struct {
	File       uint32 // index into Manifest.Files
	Block      uint64 // the block's index in the file
	Base       uint16 // 0: a record of this shipment; k > 0: of Manifest.Bases[k-1]
	BaseFile   uint32 // with Base: the file's index in the base (its block context)
	Segment    uint32 // index into the segments of this shipment, or of the base
	Offset     uint64 // of the sealed record in the segment
	Length     uint32 // of the sealed record
	Compressed bool
	Digest     Digest // FormDigest of the block (formats 1 and 2: BlockDigest)
}

func (e *TableEntry) put(b []byte) {
	binary.BigEndian.PutUint32(b[0:], e.File)
	binary.BigEndian.PutUint64(b[4:], e.Block)
	binary.BigEndian.PutUint16(b[12:], e.Base)
	binary.BigEndian.PutUint32(b[14:], e.BaseFile)
	binary.BigEndian.PutUint32(b[18:], e.Segment)
	binary.BigEndian.PutUint64(b[22:], e.Offset)
	binary.BigEndian.PutUint32(b[30:], e.Length)
	b[34], b[35] = 0, 0
	if e.Compressed {
		b[34] = 1
	}
	copy(b[36:68], e.Digest[:])
}

func parseEntry(b []byte) (TableEntry, error) {
	e := TableEntry{
		File:     binary.BigEndian.Uint32(b[0:]),
		Block:    binary.BigEndian.Uint64(b[4:]),
		Base:     binary.BigEndian.Uint16(b[12:]),
		BaseFile: binary.BigEndian.Uint32(b[14:]),
		Segment:  binary.BigEndian.Uint32(b[18:]),
		Offset:   binary.BigEndian.Uint64(b[22:]),
		Length:   binary.BigEndian.Uint32(b[30:]),
	}
	if b[34]&^1 != 0 || b[35] != 0 {
		return e, errors.New("reserved bits set")
	}
	e.Compressed = b[34] == 1
	copy(e.Digest[:], b[36:68])
	return e, nil
}

// before reports whether e sorts strictly before f.
func (e *TableEntry) before(f *TableEntry) bool {
	return e.File < f.File || e.File == f.File && e.Block < f.Block
}

// TableWriter writes a block table object as a stream. It refuses entries
// out of order. Close must be called to end the sealed message; it does not
// close the destination.
type TableWriter struct {
	out     io.WriteCloser // the sealing writer
	bw      *bufio.Writer
	hash    *blake3.Hasher // of the object's bytes
	size    int64
	last    TableEntry
	entries int64
	buf     [TableEntrySize]byte
}

// countingWriter hashes and counts what goes to the destination.
type countingWriter struct {
	w io.Writer
	t *TableWriter
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.t.hash.Write(p[:n])
	c.t.size += int64(n)
	return n, err
}

// NewTableWriter starts the block table of shipment id, sealed with the key
// of slot (the manifest's), written to dst.
func NewTableWriter(dst io.Writer, key *cipher.Key, slot int, id string) (*TableWriter, error) {
	t := &TableWriter{hash: blake3.New()}
	cw := countingWriter{dst, t}
	if _, err := fmt.Fprintf(cw, "%s key=%04d\n", blocksMagic, slot); err != nil {
		return nil, err
	}
	sw, err := key.NewWriter(BlocksContext(id), cw)
	if err != nil {
		return nil, err
	}
	t.out = sw
	t.bw = bufio.NewWriterSize(sw, 64<<10)
	return t, nil
}

// Add appends an entry; entries must come in strictly ascending (file,
// block) order.
func (t *TableWriter) Add(e TableEntry) error {
	if t.entries > 0 && !t.last.before(&e) {
		panic("archive: internal error: block table entries out of order")
	}
	e.put(t.buf[:])
	if _, err := t.bw.Write(t.buf[:]); err != nil {
		return err
	}
	t.last = e
	t.entries++
	return nil
}

// Close ends the table and returns the reference to it that the manifest
// records (size and BLAKE3 of the whole object).
func (t *TableWriter) Close() (ObjectRef, error) {
	if err := t.bw.Flush(); err != nil {
		return ObjectRef{}, err
	}
	if err := t.out.Close(); err != nil {
		return ObjectRef{}, err
	}
	var d Digest
	t.hash.Sum(d[:0])
	return ObjectRef{Size: t.size, BLAKE3: d}, nil
}

// BlockTable yields the data blocks of a shipment in ascending (file,
// block) order, each checked against the manifest: its file is a file of
// the shipment, its index within it, its record inside a listed segment.
// Next returns io.EOF after the last entry, once the whole table has been
// checked (a format 3 table against its manifest entry, every file's count
// of data blocks), and the same error from every later call.
type BlockTable interface {
	Next() (TableEntry, error)
}

// TableReader reads a format 3 block table as a stream.
type TableReader struct {
	m       *Manifest
	raw     *hashingReader
	r       *bufio.Reader
	last    TableEntry
	started bool
	count   int64 // entries of the current file
	err     error
	buf     [TableEntrySize]byte
}

type hashingReader struct {
	r    io.Reader
	h    *blake3.Hasher
	size int64
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	h.size += int64(n)
	return n, err
}

// OpenTable starts reading the block table object of shipment m from src.
// key must be the key of the manifest's slot, which the table's first line
// must name (slot).
func OpenTable(src io.Reader, key *cipher.Key, slot int, m *Manifest) (*TableReader, error) {
	if m.Format < FormatV3 || m.Table == nil {
		return nil, fmt.Errorf("%s: format %d has no block table object: %w", BlocksObject, m.Format, ErrIntegrity)
	}
	raw := &hashingReader{r: io.LimitReader(src, m.Table.Size+1), h: blake3.New()}
	br := bufio.NewReaderSize(raw, 64<<10)
	line, err := br.ReadSlice('\n')
	if err != nil {
		return nil, fmt.Errorf("%s: %w", BlocksObject, integrityEOF(err))
	}
	got, err := keySlotLine(line, blocksMagic, BlocksObject)
	if err != nil {
		return nil, err
	}
	if got != slot {
		return nil, fmt.Errorf("%s: sealed with key slot %d, the manifest with %d: %w", BlocksObject, got, slot, ErrIntegrity)
	}
	sr, err := key.NewReader(BlocksContext(m.ID), br)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", BlocksObject, integrityEOF(err))
	}
	return &TableReader{m: m, raw: raw, r: bufio.NewReaderSize(sr, 64<<10)}, nil
}

func integrityEOF(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("truncated: %w", ErrIntegrity)
	}
	if errors.Is(err, cipher.ErrIntegrity) {
		return fmt.Errorf("%w (%w)", err, ErrIntegrity)
	}
	return err
}

// Next returns the next entry; see BlockTable.
func (t *TableReader) Next() (TableEntry, error) {
	if t.err != nil {
		return TableEntry{}, t.err
	}
	e, err := t.next()
	if err != nil {
		t.err = err
		return TableEntry{}, err
	}
	return e, nil
}

func (t *TableReader) next() (TableEntry, error) {
	_, err := io.ReadFull(t.r, t.buf[:])
	if err == io.EOF {
		return TableEntry{}, t.end()
	}
	if err != nil {
		return TableEntry{}, fmt.Errorf("%s: %w", BlocksObject, integrityEOF(err))
	}
	e, err := parseEntry(t.buf[:])
	if err == nil {
		err = t.check(&e)
	}
	if err != nil {
		return TableEntry{}, fmt.Errorf("%s: entry for file %d block %d: %v: %w", BlocksObject, e.File, e.Block, err, ErrIntegrity)
	}
	return e, nil
}

// check checks an entry against the manifest and the one before it.
func (t *TableReader) check(e *TableEntry) error {
	m := t.m
	if t.started && !t.last.before(e) {
		return errors.New("out of order")
	}
	if int64(e.File) >= int64(len(m.Files)) || m.Files[e.File].Type != TypeFile {
		return errors.New("not a file of the shipment")
	}
	f := &m.Files[e.File]
	if int64(e.Block) >= m.NumBlocks(f.Size) {
		return errors.New("past the end of the file")
	}
	if t.started && e.File != t.last.File {
		if err := t.closeFile(t.last.File, e.File); err != nil {
			return err
		}
	}
	if !t.started {
		if err := t.closeFile(0, e.File); err != nil {
			return err
		}
	}
	if err := m.checkPlace(int(e.Base), int(e.BaseFile), int(e.Segment), int64(e.Offset), int64(e.Length)); err != nil {
		return err
	}
	t.started, t.last = true, *e
	t.count++
	return nil
}

// closeFile checks the count of data blocks of every file from the one
// whose entries just ended up to (not including) next: files without
// entries must have no data blocks.
func (t *TableReader) closeFile(done, next uint32) error {
	m := t.m
	for fi := done; fi < next; fi++ {
		want := m.Files[fi].DataBlocks
		got := int64(0)
		if t.started && fi == t.last.File {
			got = t.count
		}
		if got != want {
			return fmt.Errorf("%s has %d data blocks, the manifest says %d", m.Files[fi].Path, got, want)
		}
	}
	t.count = 0
	return nil
}

// end checks, once the sealed message has ended cleanly, the files after
// the last entry and the object as a whole.
func (t *TableReader) end() error {
	from := uint32(0)
	if t.started {
		from = t.last.File
	}
	if err := t.closeFile(from, uint32(len(t.m.Files))); err != nil {
		return fmt.Errorf("%s: %v: %w", BlocksObject, err, ErrIntegrity)
	}
	// The sealed message authenticated every byte of the table; the
	// object's size and digest bind it to the manifest too.
	io.Copy(io.Discard, t.raw)
	var d Digest
	t.raw.h.Sum(d[:0])
	if t.raw.size != t.m.Table.Size || d != t.m.Table.BLAKE3 {
		return fmt.Errorf("%s: does not match the manifest: %w", BlocksObject, ErrIntegrity)
	}
	return io.EOF
}

// LegacyTable returns the block table of a format 1 or 2 manifest, read
// from its files' blocks.
func (m *Manifest) LegacyTable() BlockTable {
	return &legacyTable{m: m}
}

type legacyTable struct {
	m     *Manifest
	file  int
	block int
}

func (t *legacyTable) Next() (TableEntry, error) {
	for t.file < len(t.m.Files) {
		f := &t.m.Files[t.file]
		if t.block < len(f.Blocks) {
			b := &f.Blocks[t.block]
			t.block++
			return TableEntry{
				File: uint32(t.file), Block: uint64(b.Index), Base: uint16(b.Base), BaseFile: uint32(b.File),
				Segment: uint32(b.Segment), Offset: uint64(b.Offset), Length: uint32(b.Length),
				Compressed: b.Compressed, Digest: b.BLAKE3,
			}, nil
		}
		t.file, t.block = t.file+1, 0
	}
	return TableEntry{}, io.EOF
}
