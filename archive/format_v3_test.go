package archive_test

// An independent decoder of format 3 written from docs/FORMAT.md alone
// ("Format 3"): it decodes a fixed pair of shipments (testdata/fixture-v3,
// a full one and an incremental one on it, made once with -update) with
// nothing but the record layer, age, zstd, BLAKE3, CRC32C and
// encoding/json, so that neither the format nor its documentation can
// drift silently.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/local"
)

// v3Files is the content of the full shipment of the v3 fixture: blocks
// of every kind, at page granularity.
func v3Files() map[string][]byte {
	r := rand.New(rand.NewPCG(5, 6))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	disk := make([]byte, 7*fixtureBS+100)
	copy(disk[0:], random(fixtureBS)) // block 0: dense data
	// block 1: hole
	// block 2: allocated zeros
	copy(disk[3*fixtureBS:], bytes.Repeat([]byte("coldship fixture log line\n"), 2520)) // block 3: compressible
	copy(disk[4*fixtureBS:], random(4096))                                              // block 4: one page, the rest hole
	copy(disk[5*fixtureBS+8192:], random(4096))                                         // block 5: the third page only
	copy(disk[6*fixtureBS:], random(fixtureBS+100))                                     // block 6 and the short block 7
	return map[string][]byte{
		"vm/disk.img": disk,
		"vm/vm.xml":   []byte("<domain type='kvm'><name>fixture</name></domain>\n"),
	}
}

// v3Incremental is v3Files after the change that the incremental
// shipment carries: block 0 rewritten, a page added to block 4; the rest
// is unchanged and comes from the base.
func v3Incremental() map[string][]byte {
	files := v3Files()
	r := rand.New(rand.NewPCG(7, 8))
	disk := files["vm/disk.img"]
	for i := range fixtureBS {
		disk[i] = byte(r.Uint32())
	}
	for i := range 4096 {
		disk[4*fixtureBS+4096*8+i] = byte(r.Uint32())
	}
	return files
}

// writeV3Source writes files as sparse files: only the non-zero pages
// (and block 2's zeros) are written.
func writeV3Source(t *testing.T, dir string, files map[string][]byte) {
	for name, b := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		f.Truncate(int64(len(b)))
		for off := 0; off < len(b); off += 4096 {
			page := b[off:min(off+4096, len(b))]
			zero := bytes.Count(page, []byte{0}) == len(page)
			inZeroBlock := name == "vm/disk.img" && off/fixtureBS == 2
			if !zero || inZeroBlock {
				f.WriteAt(page, int64(off))
			}
		}
		f.Close()
	}
}

func regenerateV3(t *testing.T, dir string) {
	os.RemoveAll(dir)
	os.MkdirAll(dir, 0o755)
	ident, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "identity.txt"), []byte("# test-only identity of the format fixture; never use it for data\n"+ident.String()+"\n"), 0o600)
	src, state := t.TempDir(), t.TempDir()
	tr, _ := local.New(dir)
	for _, files := range []map[string][]byte{v3Files(), v3Incremental()} {
		writeV3Source(t, src, files)
		sources, err := archive.CollectSources([]string{filepath.Join(src, "vm")})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := shipper.Send(context.Background(), tr, sources, shipper.SendOptions{
			Recipients: []age.Recipient{ident.Recipient()}, BlockSize: fixtureBS, Compress: true, Jobs: 1, Streams: 1, Label: "fixture",
			StateDir: state, Dest: "fixture", RecipientsID: "fixture", Base: "latest",
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// v3Reader reads the objects of the fixture.
type v3Reader struct {
	t   *testing.T
	dir string
	ids []age.Identity
	dec *zstd.Decoder
}

func (r *v3Reader) read(name string) []byte {
	b, err := os.ReadFile(filepath.Join(r.dir, name))
	if err != nil {
		r.t.Fatal(err)
	}
	return b
}

func b3hex(b []byte) string { s := blake3.Sum256(b); return hex.EncodeToString(s[:]) }

func crc32c(b []byte) string {
	return fmt.Sprintf("%08x", crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
}

type v3Segment struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	CRC32C string `json:"crc32c"`
	Key    int    `json:"key"`
}

type v3Manifest struct {
	Format       int    `json:"format"`
	ID           string `json:"id"`
	Created      string `json:"created"`
	Label        string `json:"label"`
	HeaderBLAKE3 string `json:"header_blake3"`
	BlockSize    int64  `json:"block_size"`
	Compression  string `json:"compression"`
	Table        struct {
		Size   int64  `json:"size"`
		BLAKE3 string `json:"blake3"`
	} `json:"table"`
	Keys []struct {
		Name   string `json:"name"`
		Size   int64  `json:"size"`
		BLAKE3 string `json:"blake3"`
	} `json:"keys"`
	Segments []v3Segment `json:"segments"`
	Files    []struct {
		Path       string  `json:"path"`
		Type       string  `json:"type"`
		Size       int64   `json:"size"`
		Mode       int     `json:"mode"`
		UID        *uint32 `json:"uid"`
		GID        *uint32 `json:"gid"`
		MTime      string  `json:"mtime"`
		BLAKE3     string  `json:"blake3"`
		DataBlocks int64   `json:"data_blocks"`
		DataBytes  int64   `json:"data_bytes"`
	} `json:"files"`
	Bases []struct {
		ID       string      `json:"id"`
		Segments []v3Segment `json:"segments"`
	} `json:"bases"`
}

// sealedObject splits "<magic> key=NNNN\n<sealed>" and returns the slot.
func (r *v3Reader) sealedObject(b []byte, magic string) (string, []byte) {
	line, sealed, _ := bytes.Cut(b, []byte("\n"))
	slot, ok := strings.CutPrefix(string(line), magic+" key=")
	if !ok || len(slot) != 4 {
		r.t.Fatalf("first line %q, want %q key=NNNN", line, magic)
	}
	return slot, sealed
}

// manifest opens shipment id's manifest and checks it against its header
// and every key object against its keys.
func (r *v3Reader) manifest(id string) (*v3Manifest, *cipher.Key, string) {
	t := r.t
	hb := r.read(id + "/header")
	_, hj, _ := bytes.Cut(hb, []byte("\n"))
	var hdr map[string]any
	if err := json.Unmarshal(hj, &hdr); err != nil || hdr["format"] != 3.0 {
		t.Fatalf("header %s: %v", hj, err)
	}
	slot, sealed := r.sealedObject(r.read(id+"/manifest"), "coldship-manifest-v1")
	key, err := cipher.UnwrapKey(r.read(id+"/keys/"+slot), r.ids...)
	if err != nil {
		t.Fatal(err)
	}
	z, err := key.Open(nil, []byte("coldship/v3/manifest\x00"+id), sealed)
	if err != nil {
		t.Fatalf("open manifest with the documented context: %v", err)
	}
	mj, err := r.dec.DecodeAll(z, nil)
	if err != nil {
		t.Fatal(err)
	}
	var m v3Manifest
	d := json.NewDecoder(bytes.NewReader(mj))
	d.DisallowUnknownFields()
	if err := d.Decode(&m); err != nil {
		t.Fatalf("manifest JSON does not match the documented fields: %v", err)
	}
	if m.Format != 3 || m.ID != id || m.HeaderBLAKE3 != b3hex(hb) || m.Label != "fixture" || m.Compression != "zstd" || m.Created != hdr["created"] {
		t.Fatalf("manifest fields: %+v", m)
	}
	listed := map[string]bool{}
	for _, k := range m.Keys {
		if b := r.read(id + "/" + k.Name); int64(len(b)) != k.Size || b3hex(b) != k.BLAKE3 {
			t.Errorf("key object %s differs from the manifest's keys", k.Name)
		}
		listed[k.Name] = true
	}
	if !listed["keys/"+slot] {
		t.Error("the manifest's own key slot is not in keys")
	}
	for _, s := range m.Segments {
		if b := r.read(id + "/" + s.Name); int64(len(b)) != s.Size || crc32c(b) != s.CRC32C {
			t.Errorf("segment %s: size or CRC32C differs from the manifest", s.Name)
		}
		if !listed[fmt.Sprintf("keys/%04d", s.Key)] {
			t.Errorf("segment %s: its key slot is not in keys", s.Name)
		}
	}
	return &m, key, slot
}

// entry is one 68-byte entry of a block table.
type entry struct {
	file, baseFile, segment, length uint32
	block, offset                   uint64
	base                            uint16
	compressed                      bool
	digest                          []byte
}

// table opens the blocks object and parses its entries.
func (r *v3Reader) table(id string, m *v3Manifest, key *cipher.Key, slot string) []entry {
	t := r.t
	b := r.read(id + "/blocks")
	if int64(len(b)) != m.Table.Size || b3hex(b) != m.Table.BLAKE3 {
		t.Fatal("blocks object differs from the manifest's table")
	}
	tslot, sealed := r.sealedObject(b, "coldship-blocks-v3")
	if tslot != slot {
		t.Fatalf("blocks sealed with slot %s, manifest with %s", tslot, slot)
	}
	plain, err := key.Open(nil, []byte("coldship/v3/blocks\x00"+id), sealed)
	if err != nil || len(plain)%68 != 0 {
		t.Fatalf("open blocks with the documented context: %v (%d bytes)", err, len(plain))
	}
	var out []entry
	for p := plain; len(p) > 0; p = p[68:] {
		e := entry{file: binary.BigEndian.Uint32(p), block: binary.BigEndian.Uint64(p[4:]), base: binary.BigEndian.Uint16(p[12:]),
			baseFile: binary.BigEndian.Uint32(p[14:]), segment: binary.BigEndian.Uint32(p[18:]), offset: binary.BigEndian.Uint64(p[22:]),
			length: binary.BigEndian.Uint32(p[30:]), compressed: p[34] == 1, digest: p[36:68]}
		if p[34]&^1 != 0 || p[35] != 0 {
			t.Errorf("entry with reserved bits set")
		}
		if n := len(out); n > 0 && !(out[n-1].file < e.file || out[n-1].file == e.file && out[n-1].block < e.block) {
			t.Errorf("entries out of order at file %d block %d", e.file, e.block)
		}
		out = append(out, e)
	}
	return out
}

// unform checks a form per FORMAT.md and returns the block it stands for.
func (r *v3Reader) unform(form []byte, n int64) []byte {
	pages := (n + 4095) / 4096
	ml := int((pages + 7) / 8)
	block := make([]byte, n)
	p := form[ml:]
	for i := range pages {
		if form[i/8]&(1<<(i%8)) == 0 {
			continue
		}
		l := min(4096, n-i*4096)
		page := p[:l]
		if bytes.Count(page, []byte{0}) == len(page) {
			r.t.Errorf("form carries a zero page")
		}
		copy(block[i*4096:], page)
		p = p[l:]
	}
	if len(p) != 0 {
		r.t.Errorf("form longer than its page map says")
	}
	return block
}

func TestFixtureV3DecodesPerFormatDoc(t *testing.T) {
	dir := filepath.Join("testdata", "fixture-v3")
	if *update {
		regenerateV3(t, dir)
	}
	idb, err := os.ReadFile(filepath.Join(dir, "identity.txt"))
	if err != nil {
		t.Fatalf("fixture: %v (regenerate with go test ./archive -run FixtureV3 -update)", err)
	}
	ids, _ := age.ParseIdentities(bytes.NewReader(idb))
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	r := &v3Reader{t: t, dir: dir, ids: ids, dec: dec}
	var full, inc string
	ships, _ := filepath.Glob(filepath.Join(dir, "2*"))
	for _, s := range ships {
		_, hj, _ := bytes.Cut(r.read(filepath.Base(s)+"/header"), []byte("\n"))
		if strings.Contains(string(hj), `"base":`) {
			inc = filepath.Base(s)
		} else {
			full = filepath.Base(s)
		}
	}
	if len(ships) != 2 || full == "" || inc == "" {
		t.Fatalf("fixture holds %v, want a full shipment and an incremental one", ships)
	}
	r.check(full, v3Files(), 0)
	r.check(inc, v3Incremental(), 5) // disk.img blocks 3, 5, 6, 7 and vm.xml
}

// check decodes shipment id, compares it with want, checks its inventory,
// and that fromBase blocks came from its bases.
func (r *v3Reader) check(id string, want map[string][]byte, fromBase int) {
	t := r.t
	m, key, slot := r.manifest(id)
	entries := r.table(id, m, key, slot)
	baseKeys := map[string]*cipher.Key{}
	got, compressed, based := map[string][]byte{}, 0, 0
	digests := map[uint32][]entry{}
	for _, e := range entries {
		f := m.Files[e.file]
		if got[f.Path] == nil {
			got[f.Path] = make([]byte, f.Size)
		}
		ship, seg, k, file := id, v3Segment{}, key, e.file
		if e.base == 0 {
			seg = m.Segments[e.segment]
		} else {
			b := m.Bases[e.base-1]
			ship, seg, file = b.ID, b.Segments[e.segment], e.baseFile
			name := fmt.Sprintf("bases/%s/keys/%04d", b.ID, seg.Key)
			if baseKeys[name] == nil {
				var err error
				if baseKeys[name], err = cipher.UnwrapKey(r.read(id+"/"+name), r.ids...); err != nil {
					t.Fatal(err)
				}
			}
			k = baseKeys[name]
			based++
		}
		if e.base == 0 && seg.Key != 0 {
			kk, err := cipher.UnwrapKey(r.read(fmt.Sprintf("%s/keys/%04d", id, seg.Key)), r.ids...)
			if err != nil {
				t.Fatal(err)
			}
			k = kk
		}
		rec := r.read(ship + "/" + seg.Name)[e.offset : e.offset+uint64(e.length)]
		ctx := append([]byte("coldship/v3/block\x00"+ship+"\x00"), binary.BigEndian.AppendUint32(nil, file)...)
		ctx = binary.BigEndian.AppendUint64(ctx, e.block)
		form, err := k.Open(nil, ctx, rec)
		if err != nil {
			t.Fatalf("%s block %d: %v", f.Path, e.block, err)
		}
		if e.compressed {
			compressed++
			if form, err = r.dec.DecodeAll(form, nil); err != nil {
				t.Fatal(err)
			}
		}
		n := min(m.BlockSize, f.Size-int64(e.block)*m.BlockSize)
		h := blake3.New()
		h.WriteString("coldship/v3/block\x00")
		binary.Write(h, binary.BigEndian, uint64(n))
		h.Write(form)
		if !bytes.Equal(h.Sum(nil), e.digest) {
			t.Errorf("%s block %d: digest differs from the documented construction", f.Path, e.block)
		}
		copy(got[f.Path][int64(e.block)*m.BlockSize:], r.unform(form, n))
		digests[e.file] = append(digests[e.file], e)
	}
	for fi, f := range m.Files {
		if f.UID == nil || f.GID == nil {
			t.Errorf("%s: no uid or gid", f.Path)
		}
		if f.Type != "file" {
			continue
		}
		if got[f.Path] == nil {
			got[f.Path] = make([]byte, f.Size)
		}
		if !bytes.Equal(got[f.Path], want[f.Path]) {
			t.Errorf("%s decodes to different bytes", f.Path)
		}
		h := blake3.New()
		h.WriteString("coldship/v3/file\x00")
		binary.Write(h, binary.BigEndian, uint64(f.Size))
		binary.Write(h, binary.BigEndian, uint64(m.BlockSize))
		var data int64
		for _, e := range digests[uint32(fi)] {
			binary.Write(h, binary.BigEndian, e.block)
			h.Write(e.digest)
		}
		for off := int64(0); off < f.Size; off += 4096 {
			page := want[f.Path][off:min(off+4096, f.Size)]
			if bytes.Count(page, []byte{0}) != len(page) {
				data += int64(len(page))
			}
		}
		if hex.EncodeToString(h.Sum(nil)) != f.BLAKE3 || int64(len(digests[uint32(fi)])) != f.DataBlocks || data != f.DataBytes {
			t.Errorf("%s: whole-file digest, data_blocks or data_bytes differ from the documented ones", f.Path)
		}
	}
	if compressed == 0 && fromBase == 0 {
		t.Error("no block of the fixture is compressed; the compressible block should be")
	}
	if based != fromBase {
		t.Errorf("%d blocks come from a base, want %d", based, fromBase)
	}
	r.inventory(id, m)
}

// inventory checks the inventory object: every object with its size and
// BLAKE3, segments with CRC32C, and the bases' segments.
func (r *v3Reader) inventory(id string, m *v3Manifest) {
	t := r.t
	line, ij, _ := bytes.Cut(r.read(id+"/inventory"), []byte("\n"))
	if string(line) != "coldship-inventory-v1" {
		t.Fatalf("inventory magic %q", line)
	}
	type obj struct {
		Name   string `json:"name"`
		Size   int64  `json:"size"`
		BLAKE3 string `json:"blake3"`
		CRC32C string `json:"crc32c"`
	}
	var inv struct {
		Format  int    `json:"format"`
		ID      string `json:"id"`
		Objects []obj  `json:"objects"`
		Bases   []struct {
			ID      string `json:"id"`
			Objects []obj  `json:"objects"`
		} `json:"bases"`
	}
	d := json.NewDecoder(bytes.NewReader(ij))
	d.DisallowUnknownFields()
	if err := d.Decode(&inv); err != nil || inv.Format != 3 || inv.ID != id {
		t.Fatalf("inventory: %v", err)
	}
	check := func(ship string, o obj) {
		b := r.read(ship + "/" + o.Name)
		seg := strings.HasPrefix(o.Name, "segments/")
		if int64(len(b)) != o.Size || seg && (o.CRC32C != crc32c(b) || o.BLAKE3 != "") || !seg && o.BLAKE3 != b3hex(b) {
			t.Errorf("inventory entry %s/%s does not match the object", ship, o.Name)
		}
	}
	names := map[string]bool{}
	for _, o := range inv.Objects {
		check(id, o)
		names[o.Name] = true
	}
	for _, n := range []string{"header", "blocks", "manifest"} {
		if !names[n] {
			t.Errorf("inventory does not list %s", n)
		}
	}
	for _, k := range m.Keys {
		if !names[k.Name] {
			t.Errorf("inventory does not list key object %s", k.Name)
		}
	}
	if len(inv.Bases) != len(m.Bases) {
		t.Errorf("inventory lists %d bases, the manifest %d", len(inv.Bases), len(m.Bases))
	}
	for _, b := range inv.Bases {
		for _, o := range b.Objects {
			check(b.ID, o)
		}
	}
}
