package shipper

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/zeebo/blake3"

	"github.com/coldship/coldship/archive"
)

// The DR state lets a source that holds only recipients (it cannot read
// the sealed manifests of its own shipments) send incremental shipments.
// For every (destination, set of sources) pair it keeps, per shipment sent
// with --base, a table: a JSON header (<id>.json: the shipments whose
// records it uses, the files) and a block file (<id>.blocks) of one entry
// per data block, in (file, block) order, read and written as a stream, so
// that neither the sender's memory nor the JSON grows with the image. An
// entry has the layout of a block table entry (archive.TableEntry) whose
// digest is the block's digest KEYED with the random state key (in its own
// 0600 file), and whose base, base file, segment, offset and length say
// where the record lives: base indexes the table's shipments (0: the
// shipment the table describes), base file is the file's index in that
// shipment (its block context), segment indexes that shipment's segments.
// The block file carries a MAC keyed from the state key (in the header):
// a file changed behind the sender's back is refused. A reader of a table
// learns file names and sizes, which blocks hold data, which changed from
// one shipment to the next, and the names, sizes and checksums of segment
// objects (which the destination shows anyway). It never holds a key or a
// plain digest.

const (
	drFormat = 3
	drKeep   = 4 // tables kept per pair: --base SHIPMENT can name one of these
)

// drTable describes one shipment of one set of sources to one destination.
type drTable struct {
	Format     int          `json:"format"`
	Dest       string       `json:"dest"`
	ID         string       `json:"id"`           // the shipment described
	Recipients string       `json:"recipients"`   // RecipientsFingerprint: its keys are wrapped for these
	StateKey   string       `json:"state_key_id"` // which state key the digests are keyed with
	BlockSize  int64        `json:"block_size"`
	Shipments  []drShipment `json:"shipments"` // [0] is ID; the others hold records that ID uses
	Files      []drFile     `json:"files"`
	Entries    int64        `json:"entries"`    // of the block file
	BlocksMAC  string       `json:"blocks_mac"` // of the block file, hex
}

// drShipment is what the source knows of a shipment it sent: enough to
// check that the destination still holds it unchanged, and to copy its
// wrapped keys into a shipment that refers to its records.
type drShipment struct {
	ID        string            `json:"id"`
	Inventory archive.Digest    `json:"inventory_blake3"` // of its inventory object
	Keys      []drKey           `json:"keys"`             // the key objects its segments need
	Segments  []archive.Segment `json:"segments"`         // as in its manifest
}

type drKey struct {
	Slot   int            `json:"slot"`
	BLAKE3 archive.Digest `json:"blake3"` // of the wrapped key object
}

// drFile is one source file or directory and where its entries are in the
// block file.
type drFile struct {
	Name  string `json:"name"`
	Dir   bool   `json:"dir,omitempty"`
	Size  int64  `json:"size"`
	First int64  `json:"first,omitempty"` // index of its first entry
	Count int64  `json:"count,omitempty"` // its data blocks
}

// drStore is the DR state of one (destination, sources) pair.
type drStore struct {
	dir  string // holds the tables, the newest drKeep, and the index
	keys *stateKeys
}

// openDRStore opens the table directory of the pair and the series'
// label (send --name): two VMs whose files have the same names (a/disk.raw
// and b/disk.raw), sent to one destination under their own labels, keep a
// state each, or each send would take the other's last shipment for its
// base and ship in full. An unlabelled series keeps the pair's name alone.
func openDRStore(stateDir, dest string, sources []archive.Source, label string, keys *stateKeys) *drStore {
	return &drStore{dir: filepath.Join(stateDir, "dr", seriesName(dest, sources, label)), keys: keys}
}

// seriesName names the state that a series of sends keeps (its DR state,
// its signing chain): the pair's name (drPair), and with a label the
// pair's name and the label together.
func seriesName(dest string, sources []archive.Source, label string) string {
	name := drPair(dest, sources)
	if label != "" {
		sum := sha256.Sum256([]byte(name + "\n" + label))
		name = hex.EncodeToString(sum[:16])
	}
	return name
}

// drPair names the state of a destination and a set of sources by the
// destination and the sources' top-level names (what was named on the
// command line), so that files added to or removed from a VM directory,
// or a libvirt domain staged afresh each run, keep their chain. It only
// chooses the base: a block is reused only when its keyed digest matches.
func drPair(dest string, sources []archive.Source) string {
	var tops []string
	for _, s := range sources {
		if !strings.Contains(s.Name, "/") {
			tops = append(tops, s.Name)
		}
	}
	sort.Strings(tops)
	h := sha256.New()
	fmt.Fprintf(h, "%q\n", dest)
	for _, t := range tops {
		fmt.Fprintf(h, "%q\n", t)
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// tables returns the ids of the pair's tables in the order they were
// sent, oldest first. (Shipment ids sort by time only to the second.)
func (s *drStore) tables() []string {
	b, err := os.ReadFile(filepath.Join(s.dir, "index"))
	if err != nil {
		return nil
	}
	var ids []string
	for _, id := range strings.Fields(string(b)) {
		if archive.ValidID(id) {
			ids = append(ids, id)
		}
	}
	return ids
}

func (s *drStore) headerPath(id string) string { return filepath.Join(s.dir, id+".json") }
func (s *drStore) blocksPath(id string) string { return filepath.Join(s.dir, id+".blocks") }

// errOlderFormat marks a table of format 1 (a base of format 1 or 2).
var errOlderFormat = errors.New("of an older format")

// load reads the header of table id and checks it.
func (s *drStore) load(id string) (*drTable, error) {
	b, err := os.ReadFile(s.headerPath(id))
	if err != nil {
		return nil, err
	}
	var probe struct {
		Format int `json:"format"`
	}
	if json.Unmarshal(b, &probe) == nil && probe.Format != 0 && probe.Format < drFormat {
		return nil, errOlderFormat
	}
	var t drTable
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("damaged: %v", err)
	}
	if err := t.check(); err != nil {
		return nil, fmt.Errorf("damaged: %v", err)
	}
	if t.ID != id {
		return nil, errors.New("damaged: names another shipment")
	}
	return &t, nil
}

// check makes sure a table header read from disk is consistent; the block
// file is checked as it is read (readBlocks).
func (t *drTable) check() error {
	if t.Format != drFormat || !archive.ValidID(t.ID) || len(t.Shipments) == 0 || t.Shipments[0].ID != t.ID ||
		t.BlockSize < archive.MinBlockSize || t.BlockSize > archive.MaxBlockSize || len(t.Shipments) > 1<<16 || t.Entries < 0 {
		return errors.New("malformed")
	}
	for i := range t.Shipments {
		if err := t.checkShipment(i); err != nil {
			return err
		}
	}
	next := int64(0)
	for _, f := range t.Files {
		nb := (f.Size + t.BlockSize - 1) / t.BlockSize
		if f.Size < 0 || f.Count < 0 || f.Count > nb || (f.Dir && (f.Count != 0 || f.Size != 0)) || (f.Count > 0 && f.First != next) {
			return fmt.Errorf("%s: bad size or entries", f.Name)
		}
		next += f.Count
	}
	if next != t.Entries {
		return errors.New("entries do not add up")
	}
	return nil
}

// checkShipment checks shipment i of the table as the send wrote it: the
// shipments whose records it uses in ascending order of id, each one's
// segments in ascending order of name (as its manifest lists them) and
// sealed under key slots it lists. The destination vouches for each
// shipment's segments and keys (checkAtDest) but not for their order,
// which the block file's entries index and the new manifest copies: a
// table reordered behind the sender's back would give a shipment that
// refers to the wrong records, exits 0 and cannot be restored.
func (t *drTable) checkShipment(i int) error {
	s := &t.Shipments[i]
	switch {
	case !archive.ValidID(s.ID):
		return errors.New("malformed shipment id")
	case i > 0 && s.ID == t.ID, i > 1 && s.ID <= t.Shipments[i-1].ID:
		return errors.New("shipments out of order")
	}
	slots := map[int]bool{}
	for k, key := range s.Keys {
		if key.Slot < 0 || k > 0 && key.Slot <= s.Keys[k-1].Slot {
			return fmt.Errorf("shipment %s: key slots out of order", s.ID)
		}
		slots[key.Slot] = true
	}
	prev := 0
	for _, seg := range s.Segments {
		n, ok := archive.SegmentNumber(seg.Name)
		switch {
		case !ok || n <= prev:
			return fmt.Errorf("shipment %s: segments out of order", s.ID)
		case !slots[seg.Key]:
			return fmt.Errorf("shipment %s: %s: a key slot it does not list", s.ID, seg.Name)
		}
		prev = n
	}
	return nil
}

// readBlocks streams the table's block file, checking every entry (order,
// files, places) and, at the end, its MAC; fn sees each entry, with Base
// the shipment's index and File the table's file index.
func (s *drStore) readBlocks(t *drTable, fn func(e *archive.TableEntry) error) error {
	f, err := os.Open(s.blocksPath(t.ID))
	if err != nil {
		return err
	}
	defer f.Close()
	h := s.newMAC(t.ID)
	r := bufio.NewReaderSize(io.TeeReader(io.LimitReader(f, t.Entries*archive.TableEntrySize+1), h), 64<<10)
	var buf [archive.TableEntrySize]byte
	fi, prev := 0, int64(-1)
	for k := range t.Entries {
		if _, err := io.ReadFull(r, buf[:]); err != nil {
			return errors.New("block file cut short")
		}
		e, err := archive.DecodeTableEntry(buf[:])
		if err != nil {
			return err
		}
		for fi < len(t.Files) && k >= t.Files[fi].First+t.Files[fi].Count {
			fi, prev = fi+1, -1
		}
		if err := t.checkEntry(&e, fi, prev); err != nil {
			return fmt.Errorf("entry %d: %v", k, err)
		}
		prev = int64(e.Block)
		if err := fn(&e); err != nil {
			return err
		}
	}
	if n, _ := r.Read(buf[:1]); n != 0 {
		return errors.New("block file too long")
	}
	if hex.EncodeToString(h.Sum(nil)) != t.BlocksMAC {
		return errors.New("block file does not verify")
	}
	return nil
}

// checkEntry checks one entry of file fi whose previous entry was block
// prev (-1: none).
func (t *drTable) checkEntry(e *archive.TableEntry, fi int, prev int64) error {
	if fi >= len(t.Files) || int(e.File) != fi || t.Files[fi].Dir {
		return errors.New("not in order of files")
	}
	f := &t.Files[fi]
	if int64(e.Block) <= prev || int64(e.Block) >= (f.Size+t.BlockSize-1)/t.BlockSize {
		return errors.New("block out of order or range")
	}
	if int(e.Base) >= len(t.Shipments) || int(e.Segment) >= len(t.Shipments[e.Base].Segments) {
		return errors.New("refers to a missing shipment or segment")
	}
	seg := t.Shipments[e.Base].Segments[e.Segment]
	if e.Length == 0 || int64(e.Offset)+int64(e.Length) > seg.Size {
		return errors.New("lies outside its segment")
	}
	return nil
}

// newMAC starts the MAC of the block file of table id: BLAKE3 keyed from
// the state key over the id and the file's bytes.
func (s *drStore) newMAC(id string) *blake3.Hasher {
	h, _ := blake3.NewKeyed(s.keys.tableMAC[:])
	h.WriteString(id)
	return h
}

// drWriter writes the block file of a new table as a stream, next to its
// final name until save.
type drWriter struct {
	f       *os.File
	w       *bufio.Writer
	mac     *blake3.Hasher
	entries int64
	buf     [archive.TableEntrySize]byte
}

func (s *drStore) newWriter(id string) (*drWriter, error) {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("save DR state: %w", err)
	}
	f, err := os.OpenFile(s.blocksPath(id)+".tmp", os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("save DR state: %w", err)
	}
	w := &drWriter{f: f, mac: s.newMAC(id)}
	w.w = bufio.NewWriterSize(io.MultiWriter(f, w.mac), 64<<10)
	return w, nil
}

func (w *drWriter) add(e *archive.TableEntry) error {
	archive.EncodeTableEntry(w.buf[:], e)
	w.entries++
	_, err := w.w.Write(w.buf[:])
	return err
}

// abort removes the unfinished block file.
func (w *drWriter) abort() {
	if w != nil && w.f != nil {
		w.f.Close()
		os.Remove(w.f.Name())
		w.f = nil
	}
}

// save ends the block file of t, writes t's header, makes t the latest,
// and drops all but the newest drKeep tables.
func (s *drStore) save(t *drTable, w *drWriter) error {
	err := w.w.Flush()
	if err == nil {
		err = w.f.Sync()
	}
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	tmp := w.f.Name()
	w.f = nil
	if err == nil {
		err = os.Rename(tmp, s.blocksPath(t.ID))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save DR state: %w", err)
	}
	t.Entries, t.BlocksMAC = w.entries, hex.EncodeToString(w.mac.Sum(nil))
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(s.headerPath(t.ID), b); err != nil {
		return fmt.Errorf("save DR state: %w", err)
	}
	var ids []string
	for _, id := range s.tables() {
		if id != t.ID {
			ids = append(ids, id)
		}
	}
	ids = append(ids, t.ID)
	drop := ids[:max(0, len(ids)-drKeep)]
	ids = ids[len(drop):]
	if err := writeFileAtomic(filepath.Join(s.dir, "index"), []byte(strings.Join(ids, "\n")+"\n")); err != nil {
		return fmt.Errorf("save DR state: %w", err)
	}
	for _, id := range drop {
		os.Remove(s.headerPath(id))
		os.Remove(s.blocksPath(id))
	}
	return nil
}

// removeStale removes what sends killed before their table was saved left
// in the pair's folder and nothing will use: unfinished block files
// (<id>.blocks.tmp, as large as the table), tables that never made it into
// the index. Only with the destination's lock held: the sends of the pair
// are then this one alone. Best effort.
func (s *drStore) removeStale() {
	ids := s.tables()
	if len(ids) == 0 {
		return // the index that save has just written does not read
	}
	keep := map[string]bool{"index": true}
	for _, id := range ids {
		keep[id+".json"], keep[id+".blocks"] = true, true
	}
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !keep[e.Name()] && e.Type().IsRegular() {
			os.Remove(filepath.Join(s.dir, e.Name()))
		}
	}
}

// writeFileAtomic writes a 0600 file under a temporary name, syncs it and
// renames it into place.
func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
