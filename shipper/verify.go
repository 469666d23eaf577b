package shipper

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync/atomic"

	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/archive"
)

// verify authenticates every block, checks every whole-file digest (from
// the table's digests, each block checked against its digest as it is
// opened), each format 3 file's data bytes, and every segment as a whole:
// format 3 segments by CRC32C (those the record pass read whole were
// checked as they went), formats 1 and 2 by BLAKE3, read again.
func (sh *Shipment) verify(ctx context.Context, streams, jobs int, cnt *Counters) error {
	m := sh.Manifest
	if cnt == nil {
		cnt = new(Counters)
	}
	jobs, streams = sh.clampPipeline(jobs, streams, nil)
	for _, f := range m.Files {
		cnt.Total.Add(f.Size)
	}
	data := make([]atomic.Int64, len(m.Files))
	digests := &fileDigests{m: m}
	crcs, err := sh.readBlocksTracked(ctx, fetch{
		streams: streams, jobs: jobs, cnt: cnt,
		want: func(e *archive.TableEntry) (bool, error) { return true, digests.add(e) },
		handle: func(e *archive.TableEntry, _ []byte, d int64) error {
			data[e.File].Add(d)
			n := archive.BlockLen(m.Files[e.File].Size, m.BlockSize, int64(e.Block))
			cnt.Data.Add(n)
			cnt.Done.Add(n)
			return nil
		},
	})
	if err != nil {
		return err
	}
	if err := digests.add(nil); err != nil {
		return err
	}
	for i := range m.Files {
		if f := &m.Files[i]; m.Format >= archive.FormatV3 && f.Type == archive.TypeFile && data[i].Load() != f.DataBytes {
			return fmt.Errorf("%s: holds %d bytes of data, the manifest says %d: %w", f.Path, data[i].Load(), f.DataBytes, archive.ErrIntegrity)
		}
	}
	cnt.Done.Store(cnt.Total.Load())
	return sh.checkSegments(ctx, streams, crcs, cnt)
}

// checkSegments reads whole, and checks, every segment the record pass
// did not check whole.
func (sh *Shipment) checkSegments(ctx context.Context, streams int, crcs *crcTracker, cnt *Counters) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(streams)
	for i, src := range crcs.srcs {
		if crcs.checked(i) {
			continue
		}
		g.Go(func() error { return sh.checkSegment(gctx, src, cnt) })
	}
	return g.Wait()
}

// checkSegment reads one segment whole and checks its size and checksum.
func (sh *Shipment) checkSegment(ctx context.Context, src segmentSource, cnt *Counters) error {
	rc, err := sh.tr.Open(ctx, src.obj, 0, -1)
	if err != nil {
		return transportErr(missingIsIntegrity(sh.ofBase(src.obj, err)))
	}
	defer rc.Close()
	var h hash.Hash
	if src.seg.CRC32C != "" {
		h = archive.NewCRC32C()
	} else {
		h = blake3.New()
	}
	n, err := io.Copy(h, transportReader{rc, src.obj})
	cnt.Shipped.Add(n)
	if err != nil {
		return segmentReadError(src.obj, err)
	}
	if n != src.seg.Size {
		return fmt.Errorf("%s: %d bytes, the manifest says %d: %w", src.obj, n, src.seg.Size, archive.ErrIntegrity)
	}
	ok := false
	if src.seg.CRC32C != "" {
		ok = archive.CRC32CString(h.(interface{ Sum32() uint32 }).Sum32()) == src.seg.CRC32C
	} else {
		var d archive.Digest
		h.Sum(d[:0])
		ok = d == src.seg.BLAKE3
	}
	if !ok {
		return fmt.Errorf("%s: checksum does not match the manifest: %w", src.obj, archive.ErrIntegrity)
	}
	return nil
}

// VerifyInventory checks, without any key, that every object listed in the
// shipment's inventory is present with its recorded size and checksum
// (BLAKE3 of the small objects; CRC32C of format 3 segments, BLAKE3 of
// earlier formats' segments), and that the manifest is there. For an
// incremental shipment that includes the objects of its bases that it
// needs. It proves the shipment consistent with its inventory, not
// authentic: anyone can write an inventory. It reads streams objects, or
// pieces of large segments, at once (0: a default).
func VerifyInventory(ctx context.Context, tr Transport, id string, streams int, cnt *Counters) error {
	if cnt == nil {
		cnt = new(Counters)
	}
	h, err := ReadHeader(ctx, tr, id)
	if err != nil {
		return err
	}
	limit := int64(maxLegacyObject)
	if h.Format >= archive.FormatV3 {
		limit = maxV3Inventory
	}
	ib, err := getObject(ctx, tr, id+"/"+archive.InventoryObject, limit)
	if errors.Is(err, ErrNotFound) {
		// A send puts the inventory before the manifest, and prune deletes
		// it after: without it, a shipment is incomplete unless its
		// inventory was lost.
		if _, serr := tr.Stat(ctx, id+"/"+archive.ManifestObject); serr == nil {
			return fmt.Errorf("%s/%s is missing, though the shipment's manifest is there: %w", id, archive.InventoryObject, archive.ErrIntegrity)
		}
		return fmt.Errorf("shipment %s: %w (%w)", id, archive.ErrIncomplete, archive.ErrIntegrity)
	}
	if err != nil {
		return err
	}
	inv, err := archive.ParseInventory(ib)
	if err != nil {
		return fmt.Errorf("%s/%s: %w", id, archive.InventoryObject, err)
	}
	return verifyInventory(ctx, tr, id, inv, streams, cnt)
}

// VerifyInventory is the key-less check of the shipment against the
// inventory its signature vouches for (not one read again): proof that
// every object is present and consistent with what the signer shipped,
// the segments by their CRC32C (format 3), which only the sealed manifest
// binds cryptographically.
func (t *TrustInfo) VerifyInventory(ctx context.Context, tr Transport, streams int, cnt *Counters) error {
	if cnt == nil {
		cnt = new(Counters)
	}
	return verifyInventory(ctx, tr, t.Statement.ID, t.Inventory, streams, cnt)
}

func verifyInventory(ctx context.Context, tr Transport, id string, inv *archive.Inventory, streams int, cnt *Counters) error {
	hasManifest := false
	for _, o := range inv.Objects {
		cnt.Total.Add(o.Size)
		if o.Name == archive.ManifestObject {
			hasManifest = true
		}
	}
	if !hasManifest {
		return fmt.Errorf("%s/%s: does not list the manifest: %w", id, archive.InventoryObject, archive.ErrIntegrity)
	}
	// The objects of the shipment, then those of its bases that it needs.
	var objects []objectRef
	for _, o := range inv.Objects {
		objects = append(objects, objectRef{id + "/" + o.Name, o})
	}
	for _, b := range inv.Bases {
		for _, o := range b.Objects {
			cnt.Total.Add(o.Size)
			objects = append(objects, objectRef{b.ID + "/" + o.Name, o})
		}
	}
	for _, o := range objects {
		if err := CheckName(o.name); err != nil {
			return fmt.Errorf("%s/%s: %v: %w", id, archive.InventoryObject, err, archive.ErrIntegrity)
		}
	}
	checks, err := readObjects(ctx, tr, objects, streams, cnt)
	if err != nil {
		return err
	}
	for i, o := range objects {
		c := checks[i]
		switch {
		case c.err != nil && o.want.Name == archive.ManifestObject:
			return fmt.Errorf("shipment %s: %w (%w)", id, archive.ErrIncomplete, archive.ErrIntegrity)
		case c.err != nil:
			return missingIsIntegrity(c.err)
		case !c.matches(o.want):
			return fmt.Errorf("%s: size or checksum does not match the inventory: %w", o.name, archive.ErrIntegrity)
		}
	}
	return nil
}

// wantSum is the sum inventory entry o records, in entrySum's form.
func wantSum(o archive.InventoryEntry) string {
	_, sum := entrySum(o)
	return sum
}

// ReadHeader reads and checks the plaintext header of shipment id (no
// key needed); a shipment that is not there is ErrNotFound ("no shipment
// ID at DEST"), not an integrity failure.
func ReadHeader(ctx context.Context, tr Transport, id string) (*archive.Header, error) {
	h, _, err := readHeader(ctx, tr, id)
	if err != nil && errors.Is(err, ErrNotFound) && absent(ctx, tr, id) {
		return nil, fmt.Errorf("no shipment %s at %s: %w", id, tr, ErrNotFound)
	}
	return h, err
}

// entrySum returns the kind of checksum an inventory entry records (CRC32C
// for the segments of format 3, BLAKE3 otherwise) and its value in the
// form objectSum gives.
func entrySum(o archive.InventoryEntry) (crc bool, sum string) {
	if o.CRC32C != "" {
		return true, o.CRC32C
	}
	return false, o.BLAKE3.String()
}

// objectSum reads r to its end and returns its size and its CRC32C (crc)
// or BLAKE3, as inventories record them.
func objectSum(r io.Reader, crc bool) (int64, string, error) {
	if crc {
		h := archive.NewCRC32C()
		n, err := io.Copy(h, r)
		return n, archive.CRC32CString(h.Sum32()), err
	}
	h := blake3.New()
	n, err := io.Copy(h, r)
	var d archive.Digest
	h.Sum(d[:0])
	return n, d.String(), err
}
