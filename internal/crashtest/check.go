package crashtest

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// shipmentID is the form of a shipment's folder name.
var shipmentID = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$`)

// Audit is what a destination holds, read beside coldship.
type Audit struct {
	Complete   []string // shipments with a manifest, oldest first
	Incomplete []string // shipments without one
	// Unreferenced are objects that no complete shipment's inventory
	// lists: outside any shipment's folder, or inside a complete one's.
	// (Objects of incomplete shipments are theirs.)
	Unreferenced []string
	// Missing are objects an inventory lists that are not there at their
	// size.
	Missing   []string
	Leftovers []string // temporaries and unfinished uploads
	Objects   map[string]int64
}

// inventory is the part of a shipment's inventory object (docs/FORMAT.md)
// the driver reads.
type inventory struct {
	ID      string `json:"id"`
	Objects []struct {
		Name string `json:"name"`
		Size int64  `json:"size"`
	} `json:"objects"`
}

const inventoryMagic = "coldship-inventory-v1\n"

// AuditStore lists the store and sorts its objects by shipment.
func AuditStore(ctx context.Context, s Store) (*Audit, error) {
	objs, err := s.Objects(ctx)
	if err != nil {
		return nil, err
	}
	a := &Audit{Objects: objs}
	if a.Leftovers, err = s.Leftovers(ctx); err != nil {
		return nil, err
	}
	ships := map[string]bool{}
	for name := range objs {
		id, _, ok := strings.Cut(name, "/")
		if !ok && strings.HasPrefix(name, ".coldship-probe-") {
			// The S3 transport's probe of conditional writes: a killed
			// send may leave one, which the next send or prune removes.
			a.Leftovers = append(a.Leftovers, name)
			continue
		}
		if !ok || !shipmentID.MatchString(id) {
			a.Unreferenced = append(a.Unreferenced, name)
			continue
		}
		ships[id] = true
	}
	referenced := map[string]bool{}
	for id := range ships {
		if _, ok := objs[id+"/manifest"]; !ok {
			a.Incomplete = append(a.Incomplete, id)
			continue
		}
		a.Complete = append(a.Complete, id)
		b, err := s.Get(ctx, id+"/inventory")
		if err != nil {
			return nil, fmt.Errorf("shipment %s: inventory: %w", id, err)
		}
		var inv inventory
		if err := json.Unmarshal(bytes.TrimPrefix(b, []byte(inventoryMagic)), &inv); err != nil || inv.ID != id {
			return nil, fmt.Errorf("shipment %s: inventory does not parse (%v)", id, err)
		}
		referenced[id+"/inventory"] = true
		for _, o := range inv.Objects {
			name := id + "/" + o.Name
			referenced[name] = true
			if size, ok := objs[name]; !ok || size != o.Size {
				a.Missing = append(a.Missing, name)
			}
		}
	}
	for name := range objs {
		id, _, _ := strings.Cut(name, "/")
		if ships[id] && !referenced[name] && !contains(a.Incomplete, id) {
			a.Unreferenced = append(a.Unreferenced, name)
		}
	}
	for _, l := range [][]string{a.Complete, a.Incomplete, a.Unreferenced, a.Missing, a.Leftovers} {
		sort.Strings(l)
	}
	return a, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Problems lists what a destination must not hold once every send
// succeeded: unreferenced objects, missing ones, leftovers, and
// incomplete shipments other than those allowed.
func (a *Audit) Problems(allowIncomplete ...string) []string {
	var out []string
	for _, n := range a.Unreferenced {
		out = append(out, "unreferenced object "+n)
	}
	for _, n := range a.Missing {
		out = append(out, "missing or of another size: "+n)
	}
	for _, n := range a.Leftovers {
		id, _, _ := strings.Cut(strings.TrimPrefix(n, "upload of "), "/")
		if !contains(allowIncomplete, id) {
			out = append(out, "left over: "+n)
		}
	}
	for _, id := range a.Incomplete {
		if !contains(allowIncomplete, id) {
			out = append(out, "incomplete shipment "+id)
		}
	}
	return out
}

// ShipmentBytes is the sum of the sizes of a shipment's objects.
func (a *Audit) ShipmentBytes(id string) int64 {
	var n int64
	for name, size := range a.Objects {
		if strings.HasPrefix(name, id+"/") {
			n += size
		}
	}
	return n
}

// ShipmentObjects returns the sizes of a shipment's objects at the
// destination, by name within the shipment.
func (a *Audit) ShipmentObjects(id string) map[string]int64 {
	out := map[string]int64{}
	for name, size := range a.Objects {
		if rest, ok := strings.CutPrefix(name, id+"/"); ok {
			out[rest] = size
		}
	}
	return out
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CheckJournalSegments checks that every segment the journal says is
// complete is at the destination with the size and CRC32C it records:
// the journal never runs ahead of the destination.
func CheckJournalSegments(ctx context.Context, s Store, j *Journal) error {
	id := j.ShipmentID()
	for _, seg := range j.Segments() {
		b, err := s.Get(ctx, id+"/"+seg.Name())
		if err != nil {
			return fmt.Errorf("the journal says %s/%s is complete: %v", id, seg.Name(), err)
		}
		if int64(len(b)) != seg.Size || crc32.Checksum(b, castagnoli) != seg.CRC32C {
			return fmt.Errorf("the journal says %s/%s is complete with %d bytes and CRC32C %08x; it holds %d bytes, CRC32C %08x",
				id, seg.Name(), seg.Size, seg.CRC32C, len(b), crc32.Checksum(b, castagnoli))
		}
	}
	return nil
}

// SameTree compares every regular file under src with the file of the
// same relative name under out, byte for byte, and checks that out holds
// no other visible file.
func SameTree(src, out string) error {
	want := map[string]bool{}
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(filepath.Dir(src), p)
		want[rel] = true
		return sameFile(p, filepath.Join(out, rel))
	})
	if err != nil {
		return err
	}
	return filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), ".") && p != out {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(out, p)
		if d.Type().IsRegular() && !want[rel] {
			return fmt.Errorf("%s: restored, but not in the source", rel)
		}
		return nil
	})
}

// sameFile compares two files as cmp does.
func sameFile(a, b string) error {
	fa, err := os.Open(a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return fmt.Errorf("restored file: %w", err)
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	var off int64
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return fmt.Errorf("%s differs from %s near byte %d", b, a, off)
		}
		off += int64(na)
		if ea != nil || eb != nil {
			if (ea == io.EOF || ea == io.ErrUnexpectedEOF) && (eb == io.EOF || eb == io.ErrUnexpectedEOF) {
				return nil
			}
			return errors.Join(ea, eb)
		}
	}
}

// ReceiveLeftovers lists what a finished receive must not leave in out:
// temporary files (.NAME.coldship-...), resume records, and blocks files
// that no restore marker names.
func ReceiveLeftovers(out string) ([]string, error) {
	named := map[string]bool{}
	markers, _ := filepath.Glob(filepath.Join(out, ".coldship-restore-*.json"))
	for _, m := range markers {
		var mk struct {
			State string `json:"state"`
			Files []struct {
				Blocks string `json:"blocks"`
				Temp   string `json:"temp"`
			} `json:"files"`
		}
		b, err := os.ReadFile(m)
		if err != nil || json.Unmarshal(b, &mk) != nil {
			return nil, fmt.Errorf("restore marker %s does not parse", m)
		}
		if mk.State != "done" {
			return []string{fmt.Sprintf("%s says %q", filepath.Base(m), mk.State)}, nil
		}
		dir := strings.TrimSuffix(filepath.Base(m), ".json") + ".blocks"
		for _, f := range mk.Files {
			if f.Blocks != "" {
				named[dir+"/"+f.Blocks] = true
			}
		}
	}
	var left []string
	err := filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(out, p)
		rel = filepath.ToSlash(rel)
		name := d.Name()
		switch {
		case d.IsDir():
			return nil
		case strings.HasPrefix(name, ".coldship-receive-"):
			left = append(left, rel)
		case strings.Contains(rel, ".coldship-restore-") && strings.Contains(rel, ".blocks/"):
			if !named[rel] {
				left = append(left, rel)
			}
		case strings.HasPrefix(name, ".coldship-restore-") && strings.HasSuffix(name, ".json"):
			// a marker: checked above
		case strings.HasPrefix(name, ".") && strings.Contains(name, ".coldship-"):
			left = append(left, rel)
		}
		return nil
	})
	return left, err
}

// slotSize is the size of one slot of a receive's blocks file.
const slotSize = 40

// recordFile is a file entry of a receive's resume record
// (docs/FORMAT.md).
type recordFile struct {
	Path   string `json:"path"`
	Temp   string `json:"temp"`
	Blocks string `json:"blocks"`
}

// resumeRecords reads the resume records in out: for each, its blocks
// folder and its files.
func resumeRecords(out string) (map[string][]recordFile, error) {
	records, _ := filepath.Glob(filepath.Join(out, ".coldship-receive-*.json"))
	all := map[string][]recordFile{}
	for _, r := range records {
		var rec struct {
			Files []recordFile `json:"files"`
		}
		b, err := os.ReadFile(r)
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(b, &rec); err != nil {
			return nil, fmt.Errorf("resume record %s: %w", r, err)
		}
		dir := filepath.Join(out, strings.Replace(strings.TrimSuffix(filepath.Base(r), ".json"), "receive", "restore", 1)+".blocks")
		all[dir] = rec.Files
	}
	return all, nil
}

// RecordedData sums, over the blocks files that the resume records in out
// name, the data bytes of every slot that records a block: what a resumed
// receive can reuse without fetching it again.
func RecordedData(out string) (int64, error) {
	records, err := resumeRecords(out)
	if err != nil {
		return 0, err
	}
	var total int64
	for dir, files := range records {
		for _, f := range files {
			n, err := slotData(filepath.Join(dir, f.Blocks))
			if err != nil {
				return 0, err
			}
			total += n
		}
	}
	return total, nil
}

// slotData sums the data bytes of the slots of a blocks file that record
// a block (a slot of zeros records none).
func slotData(p string) (int64, error) {
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var n int64
	var zero [32]byte
	for ; len(b) >= slotSize; b = b[slotSize:] {
		if !bytes.Equal(b[:32], zero[:]) {
			n += int64(binary.BigEndian.Uint32(b[32:]))
		}
	}
	return n, nil
}

// writtenData counts, in the temporary files that the resume records in
// out name, the non-zero 4 KiB pages that already hold the source's
// content (src is the shipment's top-level folder): what a stopped
// receive had written.
func writtenData(out, src string) (int64, error) {
	records, err := resumeRecords(out)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, files := range records {
		for _, f := range files {
			temp := filepath.Join(out, filepath.Dir(filepath.FromSlash(f.Path)), f.Temp)
			n, err := samePages(temp, filepath.Join(filepath.Dir(src), filepath.FromSlash(f.Path)))
			if err != nil {
				return 0, err
			}
			total += n
		}
	}
	return total, nil
}

// samePages counts the bytes of the non-zero pages of temp (the last one
// may be short) that equal the page at the same place in src.
func samePages(temp, src string) (int64, error) {
	ft, err := os.Open(temp)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer ft.Close()
	fsrc, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer fsrc.Close()
	const page = 4096
	a, b := make([]byte, 1<<20), make([]byte, 1<<20)
	zero := make([]byte, page)
	var n int64
	for {
		na, ea := io.ReadFull(ft, a)
		nb, _ := io.ReadFull(fsrc, b)
		// The last page of a file may be short: it counts its bytes, as
		// the data bytes of a block do.
		for off := 0; off < min(na, nb); off += page {
			end := min(off+page, na, nb)
			if !bytes.Equal(a[off:end], zero[:end-off]) && bytes.Equal(a[off:end], b[off:end]) {
				n += int64(end - off)
			}
		}
		if ea != nil {
			return n, nil
		}
	}
}
