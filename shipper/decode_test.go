package shipper_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/shipper"
)

// decodeV3 is a reference reader of format 3 shipments for the send
// tests, written with the archive package's primitives only: it checks
// every object against the inventory without a key (as verify does), then
// opens the manifest, every key object against the manifest's keys, the
// block table as a stream and every record it lists, and rebuilds every
// file, checking its data bytes and whole-file digest. It returns the
// files by path.
func decodeV3(t *testing.T, tr shipper.Transport, id string, ids []age.Identity) map[string][]byte {
	t.Helper()
	files, err := tryDecodeV3(tr, id, ids)
	if err != nil {
		t.Fatalf("decode shipment %s: %v", id, err)
	}
	return files
}

func get(tr shipper.Transport, name string) ([]byte, error) {
	rc, err := tr.Open(context.Background(), name, 0, -1)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// checkInventory checks every object of the inventory: size, and BLAKE3
// or (segments) CRC32C.
func checkInventory(tr shipper.Transport, id string) (*archive.Inventory, error) {
	ib, err := get(tr, id+"/"+archive.InventoryObject)
	if err != nil {
		return nil, err
	}
	inv, err := archive.ParseInventory(ib)
	if err != nil {
		return nil, err
	}
	check := func(ship string, o archive.InventoryEntry) error {
		b, err := get(tr, ship+"/"+o.Name)
		if err != nil {
			return err
		}
		if int64(len(b)) != o.Size || (o.CRC32C != "" && archive.CRC32C(b) != o.CRC32C) || (o.CRC32C == "" && archive.ObjectDigest(b) != o.BLAKE3) {
			return fmt.Errorf("%s/%s does not match the inventory", ship, o.Name)
		}
		return nil
	}
	for _, o := range inv.Objects {
		if err := check(id, o); err != nil {
			return nil, err
		}
	}
	for _, b := range inv.Bases {
		for _, o := range b.Objects {
			if err := check(b.ID, o); err != nil {
				return nil, err
			}
		}
	}
	return inv, nil
}

func unwrap(tr shipper.Transport, m *archive.Manifest, ship, name string, ids []age.Identity) (*cipher.Key, error) {
	b, err := get(tr, ship+"/"+name)
	if err != nil {
		return nil, err
	}
	ref, ok := m.KeyObjectRef(name)
	if !ok || ref.Size != int64(len(b)) || ref.BLAKE3 != archive.ObjectDigest(b) {
		return nil, fmt.Errorf("key object %s is not the one the manifest lists", name)
	}
	return cipher.UnwrapKey(b, ids...)
}

func tryDecodeV3(tr shipper.Transport, id string, ids []age.Identity) (map[string][]byte, error) {
	if _, err := checkInventory(tr, id); err != nil {
		return nil, fmt.Errorf("key-less check: %w", err)
	}
	hb, err := get(tr, id+"/"+archive.HeaderObject)
	if err != nil {
		return nil, err
	}
	h, err := archive.ParseHeader(hb)
	if err != nil || h.Format != archive.FormatV3 {
		return nil, fmt.Errorf("header: format %v, %v", h, err)
	}
	mb, err := get(tr, id+"/"+archive.ManifestObject)
	if err != nil {
		return nil, err
	}
	slot, err := archive.ManifestKeySlot(mb)
	if err != nil {
		return nil, err
	}
	kb, err := get(tr, id+"/"+archive.KeyObject(slot))
	if err != nil {
		return nil, err
	}
	key, err := cipher.UnwrapKey(kb, ids...)
	if err != nil {
		return nil, err
	}
	m, err := archive.OpenManifest(mb, key, h, hb)
	if err != nil {
		return nil, err
	}
	codecs := map[string]*archive.Codec{} // by "ship/slot"
	codec := func(ship, keyName string, slot int) (*archive.Codec, error) {
		k := fmt.Sprintf("%s/%d", ship, slot)
		if c := codecs[k]; c != nil {
			return c, nil
		}
		key, err := unwrap(tr, m, id, keyName, ids)
		if err != nil {
			return nil, err
		}
		c, err := archive.NewCodec(key, ship, archive.FormatV3, true, 1)
		codecs[k] = c
		return c, err
	}
	tb, err := get(tr, id+"/"+archive.BlocksObject)
	if err != nil {
		return nil, err
	}
	table, err := archive.OpenTable(bytes.NewReader(tb), key, slot, m)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	digesters := map[uint32]*archive.FileDigester{}
	data := map[uint32]int64{}
	for fi, f := range m.Files {
		if f.Type == archive.TypeFile {
			out[f.Path] = make([]byte, f.Size)
			digesters[uint32(fi)] = archive.NewFileDigester(archive.FormatV3, f.Size, m.BlockSize)
		}
	}
	for {
		e, err := table.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		f := &m.Files[e.File]
		ship, seg, keyName, file := id, archive.Segment{}, "", e.File
		if e.Base == 0 {
			seg = m.Segments[e.Segment]
			keyName = archive.KeyObject(seg.Key)
		} else {
			b := m.Bases[e.Base-1]
			ship, seg, file = b.ID, b.Segments[e.Segment], e.BaseFile
			keyName = archive.BaseKeyObject(b.ID, seg.Key)
		}
		c, err := codec(ship, keyName, seg.Key)
		if err != nil {
			return nil, err
		}
		sb, err := get(tr, ship+"/"+seg.Name)
		if err != nil {
			return nil, err
		}
		n := archive.BlockLen(f.Size, m.BlockSize, int64(e.Block))
		dst := make([]byte, archive.MaxFormLen(n))
		form, dn, err := c.OpenForm(dst, make([]byte, 0, 2*len(dst)), sb[e.Offset:e.Offset+uint64(e.Length)], file, e.Block, e.Compressed, n, e.Digest)
		if err != nil {
			return nil, fmt.Errorf("%s block %d: %w", f.Path, e.Block, err)
		}
		data[e.File] += dn
		digesters[e.File].Add(int64(e.Block), e.Digest)
		archive.WalkForm(form, n, func(off int64, b []byte) error {
			copy(out[f.Path][int64(e.Block)*m.BlockSize+off:], b)
			return nil
		}, nil)
	}
	for fi, f := range m.Files {
		if f.Type != archive.TypeFile {
			continue
		}
		if d := digesters[uint32(fi)].Sum(); d != f.BLAKE3 || data[uint32(fi)] != f.DataBytes {
			return nil, fmt.Errorf("%s: whole-file digest or data bytes differ from the manifest", f.Path)
		}
	}
	return out, nil
}

// keyObjectNames lists the key objects of shipment id at tr.
func keyObjectNames(t *testing.T, tr shipper.Transport, id string) []string {
	var names []string
	tr.List(context.Background(), id+"/keys/", func(oi shipper.ObjectInfo) error {
		names = append(names, strings.TrimPrefix(oi.Name, id+"/"))
		return nil
	})
	return names
}
