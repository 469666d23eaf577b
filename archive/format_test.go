package archive_test

// This test is an independent decoder written from docs/FORMAT.md alone:
// it parses a fixed shipment (testdata/fixture, made once with -update)
// with nothing but the record layer, age, zstd, BLAKE3 and encoding/json,
// so neither the format nor its documentation can drift silently.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"

	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/local"
)

var update = flag.Bool("update", false, "regenerate testdata/fixture")

const fixtureBS = 64 << 10

// fixtureFiles is the content of the fixture shipment, generated
// deterministically.
func fixtureFiles() map[string][]byte {
	r := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	disk := make([]byte, 5*fixtureBS+100)
	copy(disk[0:], random(fixtureBS)) // block 0: data
	// block 1: hole
	// block 2: allocated zeros
	copy(disk[3*fixtureBS:], bytes.Repeat([]byte("coldship fixture log line\n"), 2520)) // block 3: compressible
	copy(disk[4*fixtureBS:], random(fixtureBS+100))                                     // block 4 and the short block 5
	return map[string][]byte{
		"vm/disk.img": disk,
		"vm/vm.xml":   []byte("<domain type='kvm'><name>fixture</name></domain>\n"),
	}
}

func TestFixtureDecodesPerFormatDoc(t *testing.T) {
	// Format 1 and 2 fixtures are frozen: coldship writes format 3 now.
	dir := filepath.Join("testdata", "fixture")
	idb, err := os.ReadFile(filepath.Join(dir, "identity.txt"))
	if err != nil {
		t.Fatalf("fixture: %v", err)
	}
	ids, err := age.ParseIdentities(bytes.NewReader(idb))
	if err != nil {
		t.Fatal(err)
	}
	ships, _ := filepath.Glob(filepath.Join(dir, "2*"))
	if len(ships) != 1 {
		t.Fatalf("fixture holds %d shipments, want 1", len(ships))
	}
	ship := ships[0]
	id := filepath.Base(ship)
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(ship, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	// header: magic line, then one JSON line.
	hb := read("header")
	line1, rest, _ := bytes.Cut(hb, []byte("\n"))
	if string(line1) != "coldship-shipment-v1" {
		t.Fatalf("header magic %q", line1)
	}
	var hdr map[string]any
	if err := json.Unmarshal(rest, &hdr); err != nil {
		t.Fatal(err)
	}
	if hdr["format"] != 1.0 || hdr["id"] != id || hdr["block_size"] != float64(fixtureBS) || hdr["cipher"] != "cobblestone-256" || hdr["compression"] != "zstd" {
		t.Fatalf("header fields: %v", hdr)
	}

	// manifest: first line names the key slot.
	mb := read("manifest")
	mline, sealed, _ := bytes.Cut(mb, []byte("\n"))
	slot, ok := strings.CutPrefix(string(mline), "coldship-manifest-v1 key=")
	if !ok || len(slot) != 4 {
		t.Fatalf("manifest first line %q", mline)
	}
	key, err := cipher.UnwrapKey(read("keys/"+slot), ids...)
	if err != nil {
		t.Fatal(err)
	}
	z, err := key.Open(nil, []byte("coldship/v1/manifest\x00"+id), sealed)
	if err != nil {
		t.Fatalf("open manifest with the documented context: %v", err)
	}
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	mj, err := dec.DecodeAll(z, nil)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Format       int    `json:"format"`
		Created      string `json:"created"`
		Label        string `json:"label"`
		Compression  string `json:"compression"`
		ID           string `json:"id"`
		HeaderBLAKE3 string `json:"header_blake3"`
		BlockSize    int64  `json:"block_size"`
		Segments     []struct {
			Name   string `json:"name"`
			Size   int64  `json:"size"`
			BLAKE3 string `json:"blake3"`
			Key    int    `json:"key"`
		} `json:"segments"`
		Files []struct {
			Path    string `json:"path"`
			Type    string `json:"type"`
			Size    int64  `json:"size"`
			Mode    int    `json:"mode"`
			MTime   string `json:"mtime"`
			BLAKE3  string `json:"blake3"`
			Extents []struct {
				Kind           string
				Offset, Length int64
			} `json:"extents"`
			Blocks []struct {
				I int64  `json:"i"`
				S int    `json:"s"`
				O int64  `json:"o"`
				N int64  `json:"n"`
				Z bool   `json:"z"`
				H string `json:"h"`
			} `json:"blocks"`
		} `json:"files"`
	}
	d := json.NewDecoder(bytes.NewReader(mj))
	d.DisallowUnknownFields()
	if err := d.Decode(&m); err != nil {
		t.Fatalf("manifest JSON does not match the documented fields: %v", err)
	}
	b3 := func(b []byte) string { s := blake3.Sum256(b); return hex.EncodeToString(s[:]) }
	if m.Format != 1 || m.Label != "fixture" || m.Compression != "zstd" || m.Created != hdr["created"] {
		t.Errorf("manifest fields: format %d label %q compression %q created %q", m.Format, m.Label, m.Compression, m.Created)
	}
	if m.ID != id || m.HeaderBLAKE3 != b3(hb) {
		t.Fatalf("manifest id %q / header digest mismatch", m.ID)
	}
	for _, s := range m.Segments {
		if b := read(s.Name); int64(len(b)) != s.Size || b3(b) != s.BLAKE3 {
			t.Errorf("segment %s: size or digest differs from the manifest", s.Name)
		}
	}

	want := fixtureFiles()
	kinds := map[string][]string{}
	for fi, f := range m.Files {
		if f.Type == "dir" {
			if f.Path != "vm" || f.Mode != 0o755 {
				t.Errorf("dir entry %+v", f)
			}
			continue
		}
		out := make([]byte, f.Size)
		for _, b := range f.Blocks {
			seg := read(m.Segments[b.S].Name)
			ctx := append([]byte("coldship/v1/block\x00"+id+"\x00"), binary.BigEndian.AppendUint32(nil, uint32(fi))...)
			ctx = binary.BigEndian.AppendUint64(ctx, uint64(b.I))
			p, err := key.Open(nil, ctx, seg[b.O:b.O+b.N])
			if err != nil {
				t.Fatalf("%s block %d: %v", f.Path, b.I, err)
			}
			if b.Z {
				if p, err = dec.DecodeAll(p, nil); err != nil {
					t.Fatal(err)
				}
			}
			if b3(p) != b.H {
				t.Errorf("%s block %d: digest", f.Path, b.I)
			}
			copy(out[b.I*m.BlockSize:], p)
		}
		if !bytes.Equal(out, want[f.Path]) {
			t.Errorf("%s decodes to different bytes", f.Path)
		}
		// whole-file digest
		h := blake3.New()
		h.WriteString("coldship/v1/file\x00")
		binary.Write(h, binary.BigEndian, uint64(f.Size))
		binary.Write(h, binary.BigEndian, uint64(m.BlockSize))
		for off := int64(0); off < f.Size; off += m.BlockSize {
			s := blake3.Sum256(out[off:min(off+m.BlockSize, f.Size)])
			h.Write(s[:])
		}
		if hex.EncodeToString(h.Sum(nil)) != f.BLAKE3 {
			t.Errorf("%s: whole-file digest differs from the documented construction", f.Path)
		}
		for _, e := range f.Extents {
			kinds[f.Path] = append(kinds[f.Path], e.Kind)
		}
	}
	if got := strings.Join(kinds["vm/disk.img"], ","); got != "data,hole,zero,data" {
		t.Errorf("disk.img extents = %s, want data,hole,zero,data", got)
	}
	compressed := 0
	for _, f := range m.Files {
		for _, b := range f.Blocks {
			if b.Z {
				compressed++
			}
		}
	}
	if compressed == 0 {
		t.Error("no block of the fixture is compressed; the compressible block should be")
	}

	// And the real receiver agrees.
	tr, _ := local.New(dir)
	sh, err := shipper.OpenShipment(context.Background(), tr, id, ids)
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Verify(context.Background(), 1, 1, nil); err != nil {
		t.Fatal(err)
	}
	if err := shipper.VerifyInventory(context.Background(), tr, id, 0, nil); err != nil {
		t.Fatal(err)
	}
}

// incrementalFiles is fixtureFiles after the change that the incremental
// fixture ships: block 0 rewritten, the zero block 2 now data; blocks 3, 4
// and 5 and vm.xml unchanged, so they come from the base.
func incrementalFiles() map[string][]byte {
	files := fixtureFiles()
	r := rand.New(rand.NewPCG(3, 4))
	disk := files["vm/disk.img"]
	for i := range fixtureBS {
		disk[i] = byte(r.Uint32())
		disk[2*fixtureBS+i] = byte(r.Uint32())
	}
	return files
}

// TestIncrementalFixtureDecodesPerFormatDoc decodes the incremental
// shipment of testdata/fixture-incremental as docs/FORMAT.md describes,
// following its blocks into its base with the keys copied into it.
func TestIncrementalFixtureDecodesPerFormatDoc(t *testing.T) {
	dir := filepath.Join("testdata", "fixture-incremental")
	idb, err := os.ReadFile(filepath.Join(dir, "identity.txt"))
	if err != nil {
		t.Fatalf("fixture: %v", err)
	}
	ids, _ := age.ParseIdentities(bytes.NewReader(idb))
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	b3 := func(b []byte) string { s := blake3.Sum256(b); return hex.EncodeToString(s[:]) }

	// The incremental shipment is the one whose header names a base.
	var id, baseID string
	ships, _ := filepath.Glob(filepath.Join(dir, "2*"))
	for _, s := range ships {
		var h map[string]any
		_, j, _ := bytes.Cut(read(filepath.Base(s)+"/header"), []byte("\n"))
		if err := json.Unmarshal(j, &h); err != nil {
			t.Fatal(err)
		}
		if b, ok := h["base"].(string); ok {
			if h["format"] != 2.0 {
				t.Errorf("header with a base has format %v, want 2", h["format"])
			}
			id, baseID = filepath.Base(s), b
		} else if h["format"] != 1.0 {
			t.Errorf("header without a base has format %v, want 1", h["format"])
		}
	}
	if len(ships) != 2 || id == "" {
		t.Fatalf("fixture holds %d shipments, want a full one and an incremental one on it", len(ships))
	}
	if filepath.Base(ships[0]) != baseID && filepath.Base(ships[1]) != baseID {
		t.Fatalf("the base %s is not in the fixture", baseID)
	}

	mb := read(id + "/manifest")
	mline, sealed, _ := bytes.Cut(mb, []byte("\n"))
	slot := strings.TrimPrefix(string(mline), "coldship-manifest-v1 key=")
	key, err := cipher.UnwrapKey(read(id+"/keys/"+slot), ids...)
	if err != nil {
		t.Fatal(err)
	}
	z, err := key.Open(nil, []byte("coldship/v1/manifest\x00"+id), sealed)
	if err != nil {
		t.Fatal(err)
	}
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	mj, _ := dec.DecodeAll(z, nil)
	type segment struct {
		Name   string `json:"name"`
		Size   int64  `json:"size"`
		BLAKE3 string `json:"blake3"`
		Key    int    `json:"key"`
	}
	var m struct {
		Format       int       `json:"format"`
		ID           string    `json:"id"`
		Created      string    `json:"created"`
		Label        string    `json:"label"`
		HeaderBLAKE3 string    `json:"header_blake3"`
		BlockSize    int64     `json:"block_size"`
		Compression  string    `json:"compression"`
		Segments     []segment `json:"segments"`
		Files        []struct {
			Path    string          `json:"path"`
			Type    string          `json:"type"`
			Size    int64           `json:"size"`
			Mode    int             `json:"mode"`
			MTime   string          `json:"mtime"`
			BLAKE3  string          `json:"blake3"`
			Extents json.RawMessage `json:"extents"`
			Blocks  []struct {
				I int64  `json:"i"`
				B int    `json:"b"`
				F int    `json:"f"`
				S int    `json:"s"`
				O int64  `json:"o"`
				N int64  `json:"n"`
				Z bool   `json:"z"`
				H string `json:"h"`
			} `json:"blocks"`
		} `json:"files"`
		Bases []struct {
			ID       string    `json:"id"`
			Segments []segment `json:"segments"`
		} `json:"bases"`
	}
	d := json.NewDecoder(bytes.NewReader(mj))
	d.DisallowUnknownFields()
	if err := d.Decode(&m); err != nil {
		t.Fatalf("manifest JSON does not match the documented fields: %v", err)
	}
	if m.Format != 2 || len(m.Bases) != 1 || m.Bases[0].ID != baseID {
		t.Fatalf("manifest: format %d, bases %+v; want 2 and the base %s", m.Format, m.Bases, baseID)
	}
	// The keys of the base's records, from the copies in this shipment.
	baseKeys := map[int]*cipher.Key{}
	for _, s := range m.Bases[0].Segments {
		if b := read(baseID + "/" + s.Name); int64(len(b)) != s.Size || b3(b) != s.BLAKE3 {
			t.Errorf("base segment %s: size or digest differs from the manifest", s.Name)
		}
		if baseKeys[s.Key] == nil {
			k, err := cipher.UnwrapKey(read(fmt.Sprintf("%s/bases/%s/keys/%04d", id, baseID, s.Key)), ids...)
			if err != nil {
				t.Fatalf("copy of the base's key slot %d: %v", s.Key, err)
			}
			baseKeys[s.Key] = k
		}
	}
	want := incrementalFiles()
	fromBase := 0
	for fi, f := range m.Files {
		if f.Type != "file" {
			continue
		}
		out := make([]byte, f.Size)
		for _, b := range f.Blocks {
			shipID, file, k, seg := id, fi, key, m.Segments[b.S]
			if b.B > 0 {
				fromBase++
				seg = m.Bases[b.B-1].Segments[b.S]
				shipID, file, k = m.Bases[b.B-1].ID, b.F, baseKeys[seg.Key]
			}
			rec := read(shipID + "/" + seg.Name)[b.O : b.O+b.N]
			ctx := append([]byte("coldship/v1/block\x00"+shipID+"\x00"), binary.BigEndian.AppendUint32(nil, uint32(file))...)
			ctx = binary.BigEndian.AppendUint64(ctx, uint64(b.I))
			p, err := k.Open(nil, ctx, rec)
			if err != nil {
				t.Fatalf("%s block %d (base %d): %v", f.Path, b.I, b.B, err)
			}
			if b.Z {
				if p, err = dec.DecodeAll(p, nil); err != nil {
					t.Fatal(err)
				}
			}
			if b3(p) != b.H {
				t.Errorf("%s block %d: digest", f.Path, b.I)
			}
			copy(out[b.I*m.BlockSize:], p)
		}
		if !bytes.Equal(out, want[f.Path]) {
			t.Errorf("%s decodes to different bytes", f.Path)
		}
	}
	if fromBase != 4 {
		t.Errorf("%d blocks come from the base, want 4 (disk.img blocks 3, 4, 5 and vm.xml)", fromBase)
	}

	// The inventory lists the key copy and the base's segments.
	var inv struct {
		Format  int `json:"format"`
		Objects []struct {
			Name string `json:"name"`
		} `json:"objects"`
		Bases []struct {
			ID      string `json:"id"`
			Objects []struct {
				Name string `json:"name"`
			} `json:"objects"`
		} `json:"bases"`
	}
	_, ij, _ := bytes.Cut(read(id+"/inventory"), []byte("\n"))
	if err := json.Unmarshal(ij, &inv); err != nil {
		t.Fatal(err)
	}
	if inv.Format != 2 || len(inv.Bases) != 1 || inv.Bases[0].ID != baseID || len(inv.Bases[0].Objects) != len(m.Bases[0].Segments) ||
		!strings.Contains(string(ij), `"bases/`+baseID+`/keys/0000"`) {
		t.Errorf("inventory: %s", ij)
	}

	// And the real receiver agrees.
	tr, _ := local.New(dir)
	sh, err := shipper.OpenShipment(context.Background(), tr, id, ids)
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Verify(context.Background(), 1, 1, nil); err != nil {
		t.Fatal(err)
	}
	if err := shipper.VerifyInventory(context.Background(), tr, id, 0, nil); err != nil {
		t.Fatal(err)
	}
}
