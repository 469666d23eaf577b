package archive

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/coldship/coldship/cipher"
)

// block makes a block of n bytes whose pages are data where pattern says
// 'd' and zero where it says '0' (the pattern repeats).
func block(n int64, pattern string, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for p := int64(0); p < Pages(n); p++ {
		if pattern[p%int64(len(pattern))] == 'd' {
			for i := p * PageSize; i < min((p+1)*PageSize, n); i++ {
				b[i] = byte(r.Uint32() | 1)
			}
		}
	}
	return b
}

// buildForm packs plain as a reader of only its non-hole pages would:
// runs of pages read in chunks, some pages (hole) never read.
func buildForm(t *testing.T, plain []byte, holes map[int64]bool) []byte {
	t.Helper()
	n := int64(len(plain))
	var fb FormBuilder
	fb.Reset(make([]byte, MaxFormLen(n)), n)
	for p := int64(0); p < Pages(n); {
		if holes[p] {
			p++
			continue
		}
		q := p + 1
		for q < Pages(n) && !holes[q] && q-p < 3 {
			q++
		}
		dst := fb.Next(p, q-p)
		copy(dst, plain[p*PageSize:])
		fb.Commit(p, q-p)
		p = q
	}
	return fb.Form()
}

// unform restores a block from its form with WalkForm.
func unform(t *testing.T, form []byte, n int64) []byte {
	t.Helper()
	out := bytes.Repeat([]byte{0xee}, int(n))
	err := WalkForm(form, n, func(off int64, b []byte) error {
		copy(out[off:], b)
		return nil
	}, func(off, l int64) error {
		clear(out[off : off+l])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestFormRoundTrip(t *testing.T) {
	for _, n := range []int64{1, PageSize - 1, PageSize, PageSize + 1, 7 * PageSize, 64<<10 + 100, 1 << 20} {
		for _, pattern := range []string{"d", "0d", "d0", "dd0", "0000000d", "d000000000000000"} {
			t.Run(fmt.Sprintf("%d/%s", n, pattern), func(t *testing.T) {
				plain := block(n, pattern, uint64(n))
				// Pages read but zero, and pages never read, end alike.
				holes := map[int64]bool{}
				for p := int64(0); p < Pages(n); p += 3 {
					if isZero(plain[p*PageSize : min((p+1)*PageSize, n)]) {
						holes[p] = true
					}
				}
				form := buildForm(t, plain, holes)
				if isZero(plain) {
					if form != nil {
						t.Fatalf("zero block has a form of %d bytes", len(form))
					}
					return
				}
				data, err := CheckForm(form, n)
				if err != nil {
					t.Fatal(err)
				}
				var want int64
				for p := int64(0); p < Pages(n); p++ {
					if !isZero(plain[p*PageSize : min((p+1)*PageSize, n)]) {
						want += int64(pageLen(n, p))
					}
				}
				if data != want || int64(len(form)) != int64(MapLen(n))+want {
					t.Fatalf("form holds %d data bytes in %d bytes, want %d", data, len(form), want)
				}
				if got := unform(t, form, n); !bytes.Equal(got, plain) {
					t.Fatal("WalkForm does not restore the block")
				}
				// The form does not depend on which zero pages were read.
				if again := buildForm(t, plain, nil); !bytes.Equal(again, form) {
					t.Fatal("form depends on what was read")
				}
				if FormDigest(form, n) == FormDigest(form, n+1) || FormDigest(form, n) == ZeroFormDigest(n) {
					t.Fatal("digest does not bind the length or the content")
				}
				var dense []byte
				WalkDense(plain, func(off int64, b []byte) error {
					dense = append(dense, b...)
					return nil
				}, nil)
				if !bytes.Equal(dense, form[MapLen(n):]) {
					t.Fatal("WalkDense sees other data runs than the form")
				}
			})
		}
	}
}

func TestCheckFormRejectsNonCanonical(t *testing.T) {
	n := int64(5*PageSize + 10)
	plain := block(n, "d0d", 1)
	form := buildForm(t, plain, nil)
	if _, err := CheckForm(form, n); err != nil {
		t.Fatal(err)
	}
	bad := map[string][]byte{
		"empty":         nil,
		"map only":      make([]byte, MapLen(n)),
		"truncated":     form[:len(form)-1],
		"trailing byte": append(append([]byte{}, form...), 1),
		"bit past end":  func() []byte { b := append([]byte{}, form...); b[0] |= 1 << 7; return b }(),
		"zero page kept": func() []byte {
			b := append([]byte{}, form...)
			b[0] |= 1 << 1
			return append(b[:MapLen(n)+PageSize], append(make([]byte, PageSize), b[MapLen(n)+PageSize:]...)...)
		}(),
		"length lies": form, // checked against another length below
	}
	for name, f := range bad {
		m := n
		if name == "length lies" {
			m = n + PageSize
		}
		if _, err := CheckForm(f, m); !errors.Is(err, ErrIntegrity) {
			t.Errorf("%s: CheckForm = %v, want an integrity error", name, err)
		}
	}
}

func TestFileDigester(t *testing.T) {
	const bs = 64 << 10
	size := int64(5*bs + 100)
	d := []Digest{{1}, ZeroDigest(bs), {3}, ZeroDigest(bs), ZeroDigest(bs), ZeroDigest(100)}
	fd := NewFileDigester(FormatVersion, size, bs)
	fd.Add(0, Digest{1})
	fd.Add(2, Digest{3})
	if fd.Sum() != FileDigest(size, bs, d) {
		t.Fatal("format 1 digester differs from FileDigest")
	}
	a := NewFileDigester(FormatV3, size, bs)
	a.Add(0, Digest{1})
	a.Add(2, Digest{3})
	b := NewFileDigester(FormatV3, size, bs)
	b.Add(0, Digest{1})
	b.Add(3, Digest{3}) // the same data one block further
	if a.Sum() == b.Sum() {
		t.Fatal("format 3 digest does not bind block indexes")
	}
	c := NewFileDigester(FormatV3, size, bs)
	if err := c.Add(6, Digest{}); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("block past the end: %v", err)
	}
	c.Add(1, Digest{})
	if err := c.Add(1, Digest{}); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("repeated block: %v", err)
	}
	// A huge sparse file costs nothing to digest.
	huge := NewFileDigester(FormatV3, MaxFileSize, MinBlockSize)
	huge.Add(MaxFileSize/MinBlockSize-1, Digest{9})
	huge.Sum()
}

func TestCodecForm(t *testing.T) {
	key, _ := cipher.NewKey()
	const id = "20261130T120000Z-00000001"
	n := int64(1 << 20)
	for _, compress := range []bool{false, true} {
		c, err := NewCodec(key, id, FormatV3, compress, 2)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		plain := block(n, "d000000000000000", 3)
		copy(plain[2*PageSize:], bytes.Repeat([]byte("log line "), 40000)) // compressible
		form := buildForm(t, plain, nil)
		d := FormDigest(form, n)
		rec, z, err := c.SealForm(nil, make([]byte, len(form)), form, 2, 5)
		if err != nil || z != compress {
			t.Fatalf("SealForm: compressed=%v err=%v", z, err)
		}
		out := make([]byte, MaxFormLen(n))
		got, data, err := c.OpenForm(out, make([]byte, 0, MaxFormLen(n)), rec, 2, 5, z, n, d)
		if err != nil || !bytes.Equal(got, form) || data != int64(len(form)-MapLen(n)) {
			t.Fatalf("OpenForm: %v", err)
		}
		if _, _, err := c.OpenForm(out, nil, rec, 2, 6, z, n, d); !errors.Is(err, cipher.ErrIntegrity) {
			t.Fatalf("record moved to another block: %v", err)
		}
		if _, _, err := c.OpenForm(out, nil, rec, 2, 5, z, n, Digest{1}); !errors.Is(err, ErrIntegrity) {
			t.Fatalf("wrong digest: %v", err)
		}
		v1, _ := NewCodec(key, id, FormatVersion, compress, 1)
		if _, err := v1.Open(out, nil, rec, 2, 5, z, n, d); err == nil {
			t.Fatal("a format 3 record opens as format 1")
		}
		v1.Close()
	}
}

// v3Manifest is a valid format 3 manifest with two files.
func v3Manifest() *Manifest {
	u := uint32(0)
	return &Manifest{
		Format: FormatV3, ID: "20261130T120000Z-00000001", Created: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC),
		BlockSize: 64 << 10, Compression: "zstd",
		Segments: []Segment{{Name: SegmentObject(1), Size: 1 << 20, CRC32C: "0a0b0c0d", Key: 0}},
		Keys:     []ObjectRef{{Name: KeyObject(0), Size: 200, BLAKE3: Digest{1}}},
		Table:    &ObjectRef{Size: 100, BLAKE3: Digest{2}},
		Files: []File{
			{Path: "vm", Type: TypeDir, Mode: 0o755, UID: &u, GID: &u},
			{Path: "vm/disk", Type: TypeFile, Size: 10 << 20, Mode: 0o644, UID: &u, GID: &u, DataBlocks: 2, DataBytes: 8192},
			{Path: "vm/top", Type: TypeFile, Size: 1 << 20, Mode: 0o644, UID: &u, GID: &u, Backing: &Backing{Path: "vm/disk", Format: "raw"}},
		},
	}
}

func TestManifestV3Check(t *testing.T) {
	if err := v3Manifest().check(); err != nil {
		t.Fatal(err)
	}
	for name, spoil := range map[string]func(m *Manifest){
		"no table":             func(m *Manifest) { m.Table = nil },
		"segment key unlisted": func(m *Manifest) { m.Keys = nil },
		"blake3 segment":       func(m *Manifest) { m.Segments[0].CRC32C = "" },
		"bad crc":              func(m *Manifest) { m.Segments[0].CRC32C = "XYZ" },
		"no owner":             func(m *Manifest) { m.Files[1].UID = nil },
		"extents":              func(m *Manifest) { m.Files[1].Extents = []Extent{{KindData, 0, 10 << 20}} },
		"more data than size":  func(m *Manifest) { m.Files[1].DataBytes = 11 << 20 },
		"blocks without bytes": func(m *Manifest) { m.Files[1].DataBytes = 0 },
		"backing loop":         func(m *Manifest) { m.Files[1].Backing = &Backing{Path: "vm/top", Format: "qcow2"} },
		"backing to dir":       func(m *Manifest) { m.Files[2].Backing.Path = "vm" },
		"backing format":       func(m *Manifest) { m.Files[2].Backing.Format = "nbd" },
		"huge file":            func(m *Manifest) { m.Files[1].Size = MaxFileSize + 1 },
		"key of unknown base": func(m *Manifest) {
			m.Keys = append(m.Keys, ObjectRef{Name: BaseKeyObject("20261101T000000Z-00000001", 0), Size: 1})
		},
	} {
		m := v3Manifest()
		spoil(m)
		if err := m.check(); err == nil {
			t.Errorf("%s: check passed", name)
		}
	}
}

// writeTable writes entries as a sealed table and returns the object and
// the manifest that references it.
func writeTable(t *testing.T, key *cipher.Key, m *Manifest, entries []TableEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw, err := NewTableWriter(&buf, key, 0, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := tw.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	ref, err := tw.Close()
	if err != nil {
		t.Fatal(err)
	}
	if ref.Size != int64(buf.Len()) || ref.BLAKE3 != ObjectDigest(buf.Bytes()) {
		t.Fatal("table reference does not describe the object")
	}
	m.Table = &ref
	return buf.Bytes()
}

func readTable(key *cipher.Key, m *Manifest, b []byte) ([]TableEntry, error) {
	tr, err := OpenTable(bytes.NewReader(b), key, 0, m)
	if err != nil {
		return nil, err
	}
	var out []TableEntry
	for {
		e, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, e)
	}
}

func TestTableRoundTrip(t *testing.T) {
	key, _ := cipher.NewKey()
	m := v3Manifest()
	entries := []TableEntry{
		{File: 1, Block: 3, Segment: 0, Offset: 0, Length: 5000, Digest: Digest{1}},
		{File: 1, Block: 100, Segment: 0, Offset: 5000, Length: 6000, Compressed: true, Digest: Digest{2}},
	}
	b := writeTable(t, key, m, entries)
	got, err := readTable(key, m, b)
	if err != nil || len(got) != 2 || got[0] != entries[0] || got[1] != entries[1] {
		t.Fatalf("read back %v, %v", got, err)
	}
	for name, tc := range map[string]struct {
		entries []TableEntry
		spoil   func(m *Manifest, b []byte) []byte
	}{
		"count differs":  {entries[:1], nil},
		"not a file":     {[]TableEntry{{File: 0, Block: 0, Length: 100}, entries[1]}, nil},
		"past the end":   {[]TableEntry{entries[0], {File: 1, Block: 160, Length: 100}}, nil},
		"outside seg":    {[]TableEntry{entries[0], {File: 1, Block: 9, Offset: 1 << 20, Length: 100}}, nil},
		"missing seg":    {[]TableEntry{entries[0], {File: 1, Block: 9, Segment: 1, Length: 100}}, nil},
		"missing base":   {[]TableEntry{entries[0], {File: 1, Block: 9, Base: 1, Length: 100}}, nil},
		"file w/o data":  {append(entries[:2:2], TableEntry{File: 2, Block: 0, Length: 100}), nil},
		"flipped byte":   {entries, func(m *Manifest, b []byte) []byte { b[len(b)-20] ^= 1; return b }},
		"truncated":      {entries, func(m *Manifest, b []byte) []byte { return b[:len(b)-17] }},
		"other slot":     {entries, func(m *Manifest, b []byte) []byte { return bytes.Replace(b, []byte("key=0000"), []byte("key=0001"), 1) }},
		"other manifest": {entries, func(m *Manifest, b []byte) []byte { m.Table.BLAKE3[0] ^= 1; return b }},
	} {
		t.Run(name, func(t *testing.T) {
			m := v3Manifest()
			b := writeTable(t, key, m, tc.entries)
			if tc.spoil != nil {
				b = tc.spoil(m, b)
			}
			if _, err := readTable(key, m, b); !errors.Is(err, ErrIntegrity) {
				t.Fatalf("got %v, want an integrity error", err)
			}
		})
	}
}

func TestTableOutOfOrderPanics(t *testing.T) {
	key, _ := cipher.NewKey()
	tw, _ := NewTableWriter(io.Discard, key, 0, "20261130T120000Z-00000001")
	tw.Add(TableEntry{File: 1, Block: 2})
	defer func() {
		if recover() == nil {
			t.Fatal("an entry out of order was taken")
		}
	}()
	tw.Add(TableEntry{File: 1, Block: 2})
}

func TestLegacyTable(t *testing.T) {
	m := validManifest()
	var got []TableEntry
	lt := m.LegacyTable()
	for {
		e, err := lt.Next()
		if err == io.EOF {
			break
		}
		got = append(got, e)
	}
	var want int
	for _, f := range m.Files {
		want += len(f.Blocks)
	}
	if len(got) != want {
		t.Fatalf("legacy table has %d entries, want %d", len(got), want)
	}
}

func FuzzCheckForm(f *testing.F) {
	f.Add([]byte{1, 2, 3}, int64(1))
	f.Add(append([]byte{5}, make([]byte, 3*PageSize)...), int64(3*PageSize))
	f.Fuzz(func(t *testing.T, form []byte, n int64) {
		if n <= 0 || n > 1<<20 {
			return
		}
		data, err := CheckForm(form, n)
		if err != nil {
			return
		}
		if data <= 0 || data > n {
			t.Fatalf("CheckForm accepted %d data bytes for a block of %d", data, n)
		}
		var seen int64
		WalkForm(form, n, func(off int64, b []byte) error { seen += int64(len(b)); return nil }, nil)
		if seen != data {
			t.Fatalf("WalkForm saw %d bytes, CheckForm %d", seen, data)
		}
	})
}

func FuzzTableReader(f *testing.F) {
	key := func() *cipher.Key { k, _ := cipher.NewKey(); return k }()
	m := v3Manifest()
	var buf bytes.Buffer
	tw, _ := NewTableWriter(&buf, key, 0, m.ID)
	tw.Add(TableEntry{File: 1, Block: 3, Length: 100})
	tw.Add(TableEntry{File: 1, Block: 4, Offset: 100, Length: 100})
	tw.Close()
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		m := v3Manifest()
		m.Table = &ObjectRef{Size: int64(len(b)), BLAKE3: ObjectDigest(b)}
		readTable(key, m, b) // must not panic or loop
	})
}
