// Package v3test writes format 3 shipments for tests: a small encoder
// written from docs/FORMAT.md ("Format 3") with the archive package's
// primitives, independent of the sender, so that receive is tested against
// the specification (and the specification against the archive package).
// It writes into a local destination folder, one object per file.
//
// It keeps whole segments in memory: for tests only.
package v3test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"filippo.io/age"
	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
)

// File is one file or folder of a shipment.
type File struct {
	Path     string // slash-separated, relative
	Dir      bool
	Size     int64
	Mode     fs.FileMode // permission bits; 0: 0644 (files) or 0755 (folders)
	UID, GID uint32
	MTime    time.Time // zero: a fixed time
	// Content fills buf (the block's length) with block's bytes and
	// returns true, or returns false for a block of zeros (buf untouched);
	// nil: all zero. Pages that are zero are not shipped.
	Content func(block int64, buf []byte) bool
	// Blocks, if set, lists the only blocks Content is asked for (in
	// ascending order): a huge sparse file costs nothing to encode.
	Blocks  []int64
	Backing *archive.Backing
	Device  bool
}

// FromBytes returns a Content that serves b in blocks of bs bytes.
func FromBytes(b []byte, bs int64) func(int64, []byte) bool {
	return func(block int64, buf []byte) bool {
		copy(buf, b[block*bs:])
		return true
	}
}

// FromFile returns a File for the local file at path, read only where it
// holds data (SEEK_DATA), shipped as name.
func FromFile(path, name string, bs int64) (File, error) {
	fh, err := os.Open(path)
	if err != nil {
		return File{}, err
	}
	fi, err := fh.Stat()
	if err != nil {
		fh.Close()
		return File{}, err
	}
	f := File{Path: name, Size: fi.Size(), Mode: fi.Mode().Perm(), MTime: fi.ModTime()}
	f.Content = func(block int64, buf []byte) bool {
		off := block * bs
		if d, err := unix.Seek(int(fh.Fd()), off, unix.SEEK_DATA); err != nil || d >= off+int64(len(buf)) {
			return false
		}
		_, err := fh.ReadAt(buf, off)
		return err == nil || errors.Is(err, io.EOF)
	}
	return f, nil
}

// Options say how to encode.
type Options struct {
	BlockSize   int64 // 0: 1 MiB
	SegmentSize int64 // 0: 64 MiB
	Compress    bool
	Label       string
	Recipients  []age.Recipient
	// Slots spreads the segments over this many key slots (as resumed
	// sends do); the manifest and block table use the last. 0: 1.
	Slots int
	// Tamper, if set, changes the manifest before it is sealed (a
	// forgery by someone who holds the key: the manifest still opens).
	Tamper func(m *archive.Manifest)
	Now    time.Time // zero: time.Now()
}

// encoder is one shipment being written.
type encoder struct {
	dir   string // the shipment's folder
	id    string
	opts  Options
	keys  []*cipher.Key
	codec []*archive.Codec
	m     *archive.Manifest
	inv   archive.Inventory
	seg   bytes.Buffer
	table *archive.TableWriter
	tbuf  bytes.Buffer
}

// Write writes a format 3 shipment of files into dest and returns its id.
func Write(dest string, files []File, opts Options) (string, error) {
	if opts.BlockSize == 0 {
		opts.BlockSize = 1 << 20
	}
	if opts.SegmentSize == 0 {
		opts.SegmentSize = 64 << 20
	}
	if opts.Slots == 0 {
		opts.Slots = 1
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	id, err := archive.NewID(opts.Now)
	if err != nil {
		return "", err
	}
	e := &encoder{dir: filepath.Join(dest, id), id: id, opts: opts}
	if err := e.start(); err != nil {
		return "", err
	}
	defer func() {
		for _, c := range e.codec {
			c.Close()
		}
	}()
	for i, f := range files {
		if err := e.file(uint32(i), f); err != nil {
			return "", err
		}
	}
	return id, e.finish()
}

// start writes the header and the key slots.
func (e *encoder) start() error {
	o := e.opts
	compression := map[bool]string{false: "none", true: "zstd"}[o.Compress]
	h := archive.Header{Format: archive.FormatV3, ID: e.id, Created: o.Now.UTC().Truncate(time.Second), Label: o.Label,
		BlockSize: o.BlockSize, Cipher: archive.CipherName, Compression: compression}
	hb, err := h.Marshal()
	if err != nil {
		return err
	}
	if err := e.put(archive.HeaderObject, hb, ""); err != nil {
		return err
	}
	e.m = &archive.Manifest{Format: archive.FormatV3, ID: e.id, Created: h.Created, Label: o.Label,
		HeaderDigest: archive.ObjectDigest(hb), BlockSize: o.BlockSize, Compression: compression}
	for slot := range o.Slots {
		k, err := cipher.NewKey()
		if err != nil {
			return err
		}
		wrapped, err := k.Wrap(o.Recipients...)
		if err != nil {
			return err
		}
		name := archive.KeyObject(slot)
		if err := e.put(name, wrapped, ""); err != nil {
			return err
		}
		e.m.Keys = append(e.m.Keys, archive.ObjectRef{Name: name, Size: int64(len(wrapped)), BLAKE3: archive.ObjectDigest(wrapped)})
		c, err := archive.NewCodec(k, e.id, archive.FormatV3, o.Compress, 1)
		if err != nil {
			return err
		}
		e.keys, e.codec = append(e.keys, k), append(e.codec, c)
	}
	e.table, err = archive.NewTableWriter(&e.tbuf, e.keys[o.Slots-1], o.Slots-1, e.id)
	return err
}

// file encodes one file's blocks into segments and table entries.
func (e *encoder) file(index uint32, f File) error {
	mode, mtime := f.Mode, f.MTime
	if mtime.IsZero() {
		mtime = time.Date(2026, 11, 30, 12, 0, 0, 123456789, time.UTC)
	}
	uid, gid := f.UID, f.GID
	mf := archive.File{Path: f.Path, Mode: mode, MTime: mtime, UID: &uid, GID: &gid, Backing: f.Backing, Device: f.Device}
	if f.Dir {
		mf.Type = archive.TypeDir
		if mf.Mode == 0 {
			mf.Mode = 0o755
		}
		e.m.Files = append(e.m.Files, mf)
		return nil
	}
	mf.Type, mf.Size = archive.TypeFile, f.Size
	if mf.Mode == 0 {
		mf.Mode = 0o644
	}
	bs := e.opts.BlockSize
	fd := archive.NewFileDigester(archive.FormatV3, f.Size, bs)
	plain := make([]byte, bs)
	formBuf := make([]byte, archive.MaxFormLen(bs))
	var fb archive.FormBuilder
	for k, b := 0, int64(0); b*bs < f.Size && f.Content != nil; b++ {
		if f.Blocks != nil {
			if k == len(f.Blocks) {
				break
			}
			b, k = f.Blocks[k], k+1
		}
		n := archive.BlockLen(f.Size, bs, b)
		if !f.Content(b, plain[:n]) {
			continue
		}
		fb.Reset(formBuf, n)
		copy(fb.Next(0, archive.Pages(n)), plain[:n])
		data := fb.Commit(0, archive.Pages(n))
		form := fb.Form()
		if form == nil {
			continue
		}
		d := archive.FormDigest(form, n)
		if err := e.record(index, uint64(b), form, d); err != nil {
			return err
		}
		if err := fd.Add(b, d); err != nil {
			return err
		}
		mf.DataBlocks++
		mf.DataBytes += data
	}
	mf.BLAKE3 = fd.Sum()
	e.m.Files = append(e.m.Files, mf)
	return nil
}

// record seals a form into the current segment and lists it in the table.
func (e *encoder) record(file uint32, block uint64, form []byte, d archive.Digest) error {
	segIndex := len(e.m.Segments)
	slot := segIndex % e.opts.Slots
	off := e.seg.Len()
	rec, z, err := e.codec[slot].SealForm(nil, make([]byte, len(form)), form, file, block)
	if err != nil {
		return err
	}
	e.seg.Write(rec)
	err = e.table.Add(archive.TableEntry{File: file, Block: block, Segment: uint32(segIndex), Offset: uint64(off),
		Length: uint32(len(rec)), Compressed: z, Digest: d})
	if err != nil {
		return err
	}
	if int64(e.seg.Len()) >= e.opts.SegmentSize {
		return e.closeSegment()
	}
	return nil
}

func (e *encoder) closeSegment() error {
	if e.seg.Len() == 0 {
		return nil
	}
	n := len(e.m.Segments)
	s := archive.Segment{Name: archive.SegmentObject(n + 1), Size: int64(e.seg.Len()), CRC32C: archive.CRC32C(e.seg.Bytes()),
		Key: n % e.opts.Slots}
	if err := e.put(s.Name, e.seg.Bytes(), s.CRC32C); err != nil {
		return err
	}
	e.m.Segments = append(e.m.Segments, s)
	e.seg.Reset()
	return nil
}

// finish writes the last segment, the block table, the inventory and the
// manifest.
func (e *encoder) finish() error {
	if err := e.closeSegment(); err != nil {
		return err
	}
	ref, err := e.table.Close()
	if err != nil {
		return err
	}
	e.m.Table = &ref
	if err := e.put(archive.BlocksObject, e.tbuf.Bytes(), ""); err != nil {
		return err
	}
	slot := e.opts.Slots - 1
	if e.opts.Tamper != nil {
		e.opts.Tamper(e.m)
	}
	mb, err := e.m.Seal(e.keys[slot], slot)
	if err != nil {
		return err
	}
	e.inv.Format, e.inv.ID = archive.FormatV3, e.id
	e.inv.Objects = append(e.inv.Objects, archive.InventoryEntry{Name: archive.ManifestObject, Size: int64(len(mb)), BLAKE3: archive.ObjectDigest(mb)})
	ib, err := e.inv.Marshal()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(e.dir, archive.InventoryObject), ib, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(e.dir, archive.ManifestObject), mb, 0o644)
}

// put writes an object and lists it in the inventory (a segment with its
// CRC32C, anything else with its BLAKE3).
func (e *encoder) put(name string, b []byte, crc string) error {
	p := filepath.Join(e.dir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		return err
	}
	ent := archive.InventoryEntry{Name: name, Size: int64(len(b)), CRC32C: crc}
	if crc == "" {
		ent.BLAKE3 = archive.ObjectDigest(b)
	}
	e.inv.Objects = append(e.inv.Objects, ent)
	return nil
}

// ReplaceObject replaces object name of shipment id at dest with b and
// makes the inventory agree, as someone with write access to the
// destination can.
func ReplaceObject(dest, id, name string, b []byte) error {
	dir := filepath.Join(dest, id)
	if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(name)), b, 0o644); err != nil {
		return err
	}
	ib, err := os.ReadFile(filepath.Join(dir, archive.InventoryObject))
	if err != nil {
		return err
	}
	inv, err := archive.ParseInventory(ib)
	if err != nil {
		return err
	}
	found := false
	for i := range inv.Objects {
		if o := &inv.Objects[i]; o.Name == name {
			found = true
			o.Size = int64(len(b))
			if o.CRC32C != "" {
				o.CRC32C = archive.CRC32C(b)
			} else {
				o.BLAKE3 = archive.ObjectDigest(b)
			}
		}
	}
	if !found {
		return errors.New("not in the inventory: " + name)
	}
	ib, err = inv.Marshal()
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, archive.InventoryObject), ib, 0o644)
}

// Pattern returns a Content whose blocks hold, in the pages that data
// marks 'd' (page index modulo len(data)), bytes derived from seed, the
// block and the page (never zero), and zeros in the others.
func Pattern(seed byte, data string) func(int64, []byte) bool {
	return func(block int64, buf []byte) bool {
		for p := int64(0); p*archive.PageSize < int64(len(buf)); p++ {
			page := buf[p*archive.PageSize : min((p+1)*archive.PageSize, int64(len(buf)))]
			if data[p%int64(len(data))] != 'd' {
				clear(page)
				continue
			}
			for i := range page {
				page[i] = byte(int64(i)*7+block*13+p*3+int64(seed)) | 1
			}
		}
		return true
	}
}

// Expand writes what a file's Content describes into the local file at
// path (holes where blocks are zero), to compare a restore with.
func Expand(path string, f File, bs int64) error {
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := out.Truncate(f.Size); err != nil {
		return err
	}
	buf := make([]byte, bs)
	for b := int64(0); b*bs < f.Size && f.Content != nil; b++ {
		n := archive.BlockLen(f.Size, bs, b)
		if !f.Content(b, buf[:n]) {
			continue
		}
		for off := int64(0); off < n; off += archive.PageSize {
			page := buf[off:min(off+archive.PageSize, n)]
			if archive.IsZero(page) {
				continue
			}
			if _, err := out.WriteAt(page, b*bs+off); err != nil {
				return err
			}
		}
	}
	return out.Close()
}
