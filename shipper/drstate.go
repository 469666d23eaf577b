package shipper

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
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
// with --base, a table of every block: its kind, a digest KEYED with a
// random state key, and where its record lives (shipment, file index,
// segment, offset, length, compressed, and through the segment the key
// slot). The state key lives in its own 0600 file, so a table copied
// without it does not let anyone confirm a guess of a block's content; a
// reader of a table learns file names and sizes, which blocks are holes,
// zeros or data, which blocks changed from one shipment to the next, and
// the names, sizes and digests of the segment objects (which the
// destination shows anyway). It never holds a key or a plain digest.

const (
	drFormat    = 1
	drKeep      = 4  // tables kept per pair: --base SHIPMENT can name one of these
	drBlockSize = 56 // bytes per block in a drFile's table
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

// drFile is one source file or directory and its block table: drBlockSize
// bytes per block, see drBlock.
type drFile struct {
	Name   string `json:"name"`
	Dir    bool   `json:"dir,omitempty"`
	Size   int64  `json:"size"`
	Blocks []byte `json:"blocks,omitempty"`
}

// drBlock is one entry of a block table. Packed as: kind(1) flags(1)
// ship(u16) file(u32) segment(u32) offset(u64) length(u32) keyed digest(32).
type drBlock struct {
	kind       byte
	compressed bool
	ship       int   // index into drTable.Shipments
	file       int   // the file's index in that shipment (its block context)
	seg        int   // index into that shipment's Segments
	off, n     int64 // of the sealed record in the segment
	kd         archive.Digest
}

func (b drBlock) put(dst []byte) {
	dst[0] = b.kind
	dst[1] = 0
	if b.compressed {
		dst[1] = 1
	}
	binary.BigEndian.PutUint16(dst[2:], uint16(b.ship))
	binary.BigEndian.PutUint32(dst[4:], uint32(b.file))
	binary.BigEndian.PutUint32(dst[8:], uint32(b.seg))
	binary.BigEndian.PutUint64(dst[12:], uint64(b.off))
	binary.BigEndian.PutUint32(dst[20:], uint32(b.n))
	copy(dst[24:56], b.kd[:])
}

// block returns entry i of the file's table, if it has one.
func (f *drFile) block(i int64) (drBlock, bool) {
	if f == nil || i < 0 || (i+1)*drBlockSize > int64(len(f.Blocks)) {
		return drBlock{}, false
	}
	p := f.Blocks[i*drBlockSize:]
	b := drBlock{
		kind: p[0], compressed: p[1]&1 != 0,
		ship: int(binary.BigEndian.Uint16(p[2:])), file: int(binary.BigEndian.Uint32(p[4:])),
		seg: int(binary.BigEndian.Uint32(p[8:])), off: int64(binary.BigEndian.Uint64(p[12:])),
		n: int64(binary.BigEndian.Uint32(p[20:])),
	}
	copy(b.kd[:], p[24:56])
	return b, true
}

// check makes sure a table read from disk is consistent, so that a damaged
// one falls back to a full shipment instead of producing a broken one.
func (t *drTable) check() error {
	if t.Format != drFormat || !archive.ValidID(t.ID) || len(t.Shipments) == 0 || t.Shipments[0].ID != t.ID ||
		t.BlockSize < archive.MinBlockSize || t.BlockSize > archive.MaxBlockSize || len(t.Shipments) > 1<<16 {
		return errors.New("malformed")
	}
	for _, s := range t.Shipments {
		if !archive.ValidID(s.ID) {
			return errors.New("malformed shipment id")
		}
	}
	for fi := range t.Files {
		f := &t.Files[fi]
		nb := (f.Size + t.BlockSize - 1) / t.BlockSize
		if f.Dir {
			nb = 0
		}
		if f.Size < 0 || int64(len(f.Blocks)) != nb*drBlockSize {
			return fmt.Errorf("%s: block table of the wrong size", f.Name)
		}
		for i := range nb {
			b, _ := f.block(i)
			if b.kind != kindData {
				continue
			}
			if b.ship >= len(t.Shipments) || b.seg >= len(t.Shipments[b.ship].Segments) ||
				b.n <= 0 || b.off < 0 || b.off+b.n > t.Shipments[b.ship].Segments[b.seg].Size {
				return fmt.Errorf("%s: block %d has a bad location", f.Name, i)
			}
		}
	}
	return nil
}

// drStore is the DR state of one (destination, sources) pair.
type drStore struct {
	dir   string   // holds one <id>.json table per shipment, the newest drKeep
	key   [32]byte // the state key
	keyID string
}

// openDRStore opens (creating if needed) the state key of stateDir and the
// table directory of the pair.
func openDRStore(stateDir, dest string, sources []archive.Source) (*drStore, error) {
	root := filepath.Join(stateDir, "dr")
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("DR state: %w", err)
	}
	key, err := loadStateKey(filepath.Join(root, "state.key"))
	if err != nil {
		return nil, err
	}
	s := &drStore{key: key}
	var id [8]byte
	blake3.DeriveKey("coldship/v1 state key id", key[:], id[:])
	s.keyID = hex.EncodeToString(id[:])
	s.dir = filepath.Join(root, drPair(dest, sources))
	return s, nil
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

// loadStateKey reads the state key, or makes one (mode 0600) on first use.
func loadStateKey(path string) ([32]byte, error) {
	var key [32]byte
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		rand.Read(key[:])
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			return loadStateKey(path) // made by a concurrent run
		}
		if err != nil {
			return key, fmt.Errorf("DR state key: %w", err)
		}
		_, err = fmt.Fprintf(f, "%x\n", key[:])
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
			return key, fmt.Errorf("DR state key: %w", err)
		}
		return key, nil
	}
	if err != nil {
		return key, fmt.Errorf("DR state key: %w", err)
	}
	if n, err := hex.Decode(key[:], []byte(strings.TrimSpace(string(b)))); err != nil || n != len(key) {
		return key, fmt.Errorf("DR state key %s is damaged; remove it (the next send with --base is then a full one)", path)
	}
	return key, nil
}

// keyed returns the keyed digest of block index with plaintext digest d:
// BLAKE3 keyed with the state key over "coldship/v1/state-block" 0x00 ||
// u64be(index) || d. The index keeps equal blocks at different places
// from showing as equal in the table.
func (s *drStore) keyed(index int64, d archive.Digest) archive.Digest {
	h, err := blake3.NewKeyed(s.key[:])
	if err != nil {
		panic("shipper: internal error: " + err.Error())
	}
	var buf [24 + 8 + 32]byte
	copy(buf[:], "coldship/v1/state-block\x00")
	binary.BigEndian.PutUint64(buf[24:], uint64(index))
	copy(buf[32:], d[:])
	h.Write(buf[:])
	var out archive.Digest
	h.Sum(out[:0])
	return out
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

func (s *drStore) load(id string) (*drTable, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, id+".json"))
	if err != nil {
		return nil, err
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

// save writes t atomically, makes it the latest, and drops all but the
// newest drKeep tables.
func (s *drStore) save(t *drTable) error {
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("save DR state: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(s.dir, t.ID+".json"), b); err != nil {
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
		os.Remove(filepath.Join(s.dir, id+".json"))
	}
	return nil
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

// drBase is a checked base for an incremental send: its table, and the
// wrapped key objects of every shipment it refers to, read back from the
// destination.
type drBase struct {
	t     *drTable
	files map[string]*drFile     // by name in the shipment
	keys  map[int]map[int][]byte // by shipment index, key slot
	used  map[int]map[int]bool   // shipment index -> segment indexes that hold blocks
}

// chooseBase picks the table for --base (latest or an id) and checks it
// against the destination. It returns nil and the reason when the send
// must be a full one instead; an error only when the destination cannot
// be asked.
func (s *drStore) chooseBase(ctx context.Context, tr Transport, base string, opts SendOptions) (*drBase, string, error) {
	ids := s.tables()
	var id string
	switch {
	case base == "latest" && len(ids) == 0:
		return nil, "no DR state for these sources and this destination yet (the first run is always full)", nil
	case base == "latest":
		id = ids[len(ids)-1]
	default:
		id = base
		found := false
		for _, x := range ids {
			found = found || x == id
		}
		if !found {
			return nil, fmt.Sprintf("the DR state knows no shipment %s of these sources to this destination (it keeps the last %d)", id, drKeep), nil
		}
	}
	t, err := s.load(id)
	if err != nil {
		return nil, fmt.Sprintf("the DR state of base %s is %v", id, err), nil
	}
	switch {
	case t.Dest != opts.Dest:
		return nil, fmt.Sprintf("the DR state of base %s is for another destination", id), nil
	case t.Recipients != opts.RecipientsID:
		return nil, fmt.Sprintf("the recipients differ from those of base %s (whose keys are wrapped for its own recipients)", id), nil
	case t.StateKey != s.keyID:
		return nil, fmt.Sprintf("the DR state key changed since base %s was sent", id), nil
	case t.BlockSize != opts.BlockSize:
		return nil, fmt.Sprintf("--block-size differs from that of base %s (%d bytes)", id, t.BlockSize), nil
	}
	b := &drBase{t: t, files: map[string]*drFile{}, keys: map[int]map[int][]byte{}, used: map[int]map[int]bool{0: {}}}
	for i := range t.Files {
		f := &t.Files[i]
		if !f.Dir {
			b.files[f.Name] = f
		}
		for bi := range int64(len(f.Blocks) / drBlockSize) {
			e, _ := f.block(bi)
			if e.kind == kindData {
				if b.used[e.ship] == nil {
					b.used[e.ship] = map[int]bool{}
				}
				b.used[e.ship][e.seg] = true
			}
		}
	}
	why, err := b.checkAtDest(ctx, tr)
	if why != "" || err != nil {
		return nil, why, err
	}
	return b, "", nil
}

// checkAtDest checks that every shipment the base uses is complete at the
// destination with the very inventory it was sent with, that the segments
// holding its blocks are there at their size, and reads the wrapped keys
// those segments need (checking them against the state).
func (b *drBase) checkAtDest(ctx context.Context, tr Transport) (string, error) {
	for si, segs := range b.used {
		ship := &b.t.Shipments[si]
		objs := map[string]int64{}
		err := tr.List(ctx, ship.ID+"/", func(oi ObjectInfo) error {
			objs[strings.TrimPrefix(oi.Name, ship.ID+"/")] = oi.Size
			return nil
		})
		if err != nil {
			return "", fmt.Errorf("list %s: %w", ship.ID, err)
		}
		what := "base " + ship.ID
		if si > 0 {
			what = fmt.Sprintf("shipment %s (which base %s refers to)", ship.ID, b.t.ID)
		}
		if len(objs) == 0 {
			return what + " is missing at the destination", nil
		}
		if _, ok := objs[archive.ManifestObject]; !ok {
			return what + " is incomplete at the destination", nil
		}
		ib, err := getObject(ctx, tr, ship.ID+"/"+archive.InventoryObject, 1<<30)
		if errors.Is(err, ErrNotFound) {
			return what + " is incomplete at the destination", nil
		}
		if err != nil {
			return "", err
		}
		if archive.ObjectDigest(ib) != ship.Inventory {
			return what + " is listed differently at the destination than when it was sent", nil
		}
		slots := map[int]bool{}
		for seg := range segs {
			s := ship.Segments[seg]
			if size, ok := objs[s.Name]; !ok || size != s.Size {
				return fmt.Sprintf("%s/%s is missing or of the wrong size at the destination", ship.ID, s.Name), nil
			}
			slots[s.Key] = true
		}
		b.keys[si] = map[int][]byte{}
		for slot := range slots {
			var want *drKey
			for i := range ship.Keys {
				if ship.Keys[i].Slot == slot {
					want = &ship.Keys[i]
				}
			}
			name := ship.ID + "/" + archive.KeyObject(slot)
			kb, err := getObject(ctx, tr, name, 1<<20)
			if errors.Is(err, ErrNotFound) {
				return name + " is missing at the destination", nil
			}
			if err != nil {
				return "", err
			}
			if want == nil || archive.ObjectDigest(kb) != want.BLAKE3 {
				return name + " differs from the key object that was sent", nil
			}
			b.keys[si][slot] = kb
		}
	}
	return "", nil
}
