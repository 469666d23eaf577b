package shipper

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/coldship/coldship/archive"
)

// A journal records, in the local state directory, how far an unfinished
// send got, so that a rerun (or a retry) resumes it: the shipment's header
// fields, the key slots it took, and the segments complete at the
// destination with the place of every record in them. It is append-only
// (a record per key slot, per batch of records written into a segment, and
// per segment completed: no rewrite, whatever the shipment's size), and
// every record carries a MAC chained over all before it, keyed from the
// state key: a journal that was edited, truncated in the middle,
// reordered or mixed with another is refused as a whole, moved aside and
// named in a warning, and the send starts a new shipment. It holds no key
// and no plain digest: records are identified by the keyed digest of
// their block, which a rerun recomputes from the unchanged sources before
// reusing them.
//
// File layout: records of u32be(len(body)) || body || tag(32), tag =
// BLAKE3-keyed(journal MAC key, previous tag (32 zero bytes for the first)
// || body). A body is a kind byte and:
//
//	'H' the journalHeader, JSON (first record, once)
//	'K' u32be(slot) || [32]BLAKE3 of the wrapped key object: a key slot
//	    about to be written
//	'R' u32be(segment number) || records, 65 bytes each:
//	    u32be(file) u64be(block) u32be(length) u8(flags) [32]keyed digest
//	    [16]tag (the records just written into the segment, in order;
//	    offsets are the running sum of lengths from 0; the tag ties the
//	    entry to the first bytes of the sealed record, see recordTag)
//	'S' u32be(segment number) u64be(size) u32be(crc32c) u32be(slot)
//	    u64be(records): the segment is complete at the destination
//
// A record cut short at the end (a crash in the middle of an append) is
// dropped; anything else that does not parse or verify makes the journal
// damaged.
type journal struct {
	path   string
	f      *os.File
	key    [32]byte
	mu     sync.Mutex
	tag    [32]byte
	end    int64 // of the last good record
	failed error // sticky append error
	// warn is told, once, that the journal could not be written: the send
	// goes on, but an interrupted one will not resume.
	warn func(error)

	hdr      journalHeader
	slots    int                    // one more than the highest slot recorded
	keyObjs  map[int]archive.Digest // slot -> BLAKE3 of the key object written there
	pieces   map[int][]journalPiece // segment number -> its 'R' records
	segments map[int]*journalSegment
}

// journalHeader is what identifies the shipment and the run a journal is
// for: a rerun resumes only with the same sources (unchanged), the same
// destination and the same options.
type journalHeader struct {
	Format       int            `json:"format"`
	Dest         string         `json:"dest"`
	ID           string         `json:"id"`
	Created      time.Time      `json:"created"`
	Label        string         `json:"label,omitempty"`
	BlockSize    int64          `json:"block_size"`
	Compression  string         `json:"compression"`
	Recipients   string         `json:"recipients"` // fingerprint of the recipient list
	HeaderDigest archive.Digest `json:"header_blake3"`
	Base         string         `json:"base,omitempty"` // of an incremental shipment
	Files        []journalFile  `json:"files"`
}

// journalFormat 4 added the records' tags; a journal of another format
// is moved aside like a damaged one.
const journalFormat = 4

type journalFile struct {
	Path  string `json:"path"` // on the source
	Name  string `json:"name"` // in the shipment
	Dir   bool   `json:"dir,omitempty"`
	Size  int64  `json:"size"`
	MTime int64  `json:"mtime_ns"`
	CTime int64  `json:"ctime_ns"`
	Ino   uint64 `json:"ino"`
}

// journalPiece is an 'R' record: count records at offset off of the file.
type journalPiece struct {
	off   int64
	count int
}

// journalSegment is a segment complete at the destination.
type journalSegment struct {
	archive.Segment
	n          int
	records    int64
	pieces     []journalPiece
	verified   bool // its content was checked (or written) by this run
	fromBefore bool // put by an earlier run: reused, not shipped, by this one
}

const (
	journalRecordHead = 49 // file, block, length, flags, keyed digest
	recordTagSize     = 16
	journalRecord     = journalRecordHead + recordTagSize
	// sealedHead is what a record's tag covers of the sealed record: the
	// salt and key commitment that begin every Cobblestone message.
	sealedHead       = 56
	maxJournalRecord = 16 << 20
)

// journalPath names the journal of one (destination, sources) pair.
func journalPath(stateDir, dest string, sources []archive.Source) string {
	h := sha256.New()
	fmt.Fprintf(h, "%q\n", dest)
	for _, s := range sources {
		abs, err := filepath.Abs(s.Path)
		if err != nil {
			abs = s.Path
		}
		fmt.Fprintf(h, "%q %q\n", abs, s.Name)
	}
	return filepath.Join(stateDir, "resume", hex.EncodeToString(h.Sum(nil)[:16])+".journal")
}

// createJournal starts a journal at path (a temporary file when path is
// "") with its header record.
func createJournal(path string, key [32]byte, hdr journalHeader) (*journal, error) {
	var f *os.File
	var err error
	if path == "" {
		f, err = os.CreateTemp("", "coldship-journal-*")
		if err == nil {
			os.Remove(f.Name()) // for this run only
		}
	} else if err = os.MkdirAll(filepath.Dir(path), 0o700); err == nil {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	}
	if err != nil {
		return nil, fmt.Errorf("resume journal: %w", err)
	}
	j := &journal{path: path, f: f, key: key, hdr: hdr, pieces: map[int][]journalPiece{}, segments: map[int]*journalSegment{}, keyObjs: map[int]archive.Digest{}}
	body, _ := json.Marshal(hdr)
	if _, err := j.append('H', body); err != nil {
		f.Close()
		return nil, err
	}
	return j, nil
}

// append writes one record and returns the offset of its body's payload
// (after the kind byte).
func (j *journal) append(kind byte, payload []byte) (int64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.failed != nil {
		return 0, j.failed
	}
	body := append([]byte{kind}, payload...)
	tag := mac(&j.key, j.tag[:], body)
	rec := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(body)+32), uint32(len(body)))
	rec = append(append(rec, body...), tag[:]...)
	if _, err := j.f.WriteAt(rec, j.end); err != nil {
		j.failed = fmt.Errorf("resume journal: %w", err)
		if j.warn != nil {
			j.warn(j.failed)
		}
		return 0, j.failed
	}
	off := j.end + 5
	j.tag, j.end = tag, j.end+int64(len(rec))
	return off, nil
}

// addSlot records that key slot slot is about to be written with a key
// object of digest d.
func (j *journal) addSlot(slot int, d archive.Digest) {
	j.append('K', append(binary.BigEndian.AppendUint32(nil, uint32(slot)), d[:]...))
	j.mu.Lock()
	j.slots = max(j.slots, slot+1)
	j.keyObjs[slot] = d
	j.mu.Unlock()
}

// addRecords records records just written into segment n (encoded,
// journalRecord bytes each). Once the journal failed, the records are not kept: a
// segment whose records are not all known is not reused.
func (j *journal) addRecords(n int, records []byte) {
	off, err := j.append('R', append(binary.BigEndian.AppendUint32(nil, uint32(n)), records...))
	if err != nil {
		return
	}
	j.mu.Lock()
	j.pieces[n] = append(j.pieces[n], journalPiece{off + 4, len(records) / journalRecord})
	j.mu.Unlock()
}

// addSegment records that segment s (number n, records records) is
// complete at the destination (in this run's memory even if the journal
// cannot be written).
func (j *journal) addSegment(n int, s archive.Segment, records int64) {
	crc, _ := parseCRC(s.CRC32C)
	b := binary.BigEndian.AppendUint32(nil, uint32(n))
	b = binary.BigEndian.AppendUint64(b, uint64(s.Size))
	b = binary.BigEndian.AppendUint32(b, crc)
	b = binary.BigEndian.AppendUint32(b, uint32(s.Key))
	b = binary.BigEndian.AppendUint64(b, uint64(records))
	j.append('S', b)
	j.mu.Lock()
	defer j.mu.Unlock()
	j.segments[n] = &journalSegment{Segment: s, n: n, records: records, pieces: j.pieces[n], verified: true}
}

// complete returns the segments complete at the destination, by number.
func (j *journal) complete() []*journalSegment {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]*journalSegment, 0, len(j.segments))
	for _, s := range j.segments {
		out = append(out, s)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].n < out[b].n })
	return out
}

// drop forgets a segment (it failed its check at the destination): its
// records are sealed again, in a segment of a new number.
func (j *journal) drop(n int) {
	j.mu.Lock()
	delete(j.segments, n)
	j.mu.Unlock()
}

// nextSegment returns the first segment number that no record of the
// journal names.
func (j *journal) nextSegment() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	next := 1
	for n := range j.pieces {
		next = max(next, n+1)
	}
	for n := range j.segments {
		next = max(next, n+1)
	}
	return next
}

// close closes the journal; remove also deletes it (the send completed, or
// it is abandoned).
func (j *journal) close(remove bool) {
	if j == nil || j.f == nil {
		return
	}
	j.f.Close()
	j.f = nil
	if remove && j.path != "" {
		os.Remove(j.path)
	}
}

func parseCRC(s string) (uint32, bool) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 4 {
		return 0, false
	}
	return binary.BigEndian.Uint32(b), true
}

// errJournalDamaged marks a journal that does not parse or verify.
var errJournalDamaged = errors.New("does not verify")

// openJournal loads the journal at path. It returns nil, nil when there is
// none, and errJournalDamaged (wrapped) when it does not parse or verify.
// A record cut short at the end is dropped (and the file truncated to the
// last whole record, so that appends follow it).
func openJournal(path string, key [32]byte) (*journal, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("resume journal: %w", err)
	}
	j := &journal{path: path, f: f, key: key, pieces: map[int][]journalPiece{}, segments: map[int]*journalSegment{}, keyObjs: map[int]archive.Digest{}}
	if err := j.load(); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Truncate(j.end); err != nil {
		f.Close()
		return nil, fmt.Errorf("resume journal: %w", err)
	}
	return j, nil
}

// load reads and verifies every record.
func (j *journal) load() error {
	fi, err := j.f.Stat()
	if err != nil {
		return fmt.Errorf("resume journal: %w", err)
	}
	r := bufio.NewReaderSize(io.NewSectionReader(j.f, 0, fi.Size()), 64<<10)
	var body []byte
	for first := true; ; first = false {
		var lb [4]byte
		if _, err := io.ReadFull(r, lb[:]); err != nil {
			if err == io.EOF && !first {
				return nil
			}
			if err == io.ErrUnexpectedEOF && !first {
				return nil // cut short at the end
			}
			return fmt.Errorf("resume journal %s: %w", j.path, errJournalDamaged)
		}
		n := binary.BigEndian.Uint32(lb[:])
		if n == 0 || n > maxJournalRecord {
			return fmt.Errorf("resume journal %s: %w", j.path, errJournalDamaged)
		}
		body = append(body[:0], make([]byte, n+32)...)
		if _, err := io.ReadFull(r, body); err != nil {
			if !first && (err == io.ErrUnexpectedEOF || err == io.EOF) {
				return nil // cut short at the end
			}
			return fmt.Errorf("resume journal %s: %w", j.path, errJournalDamaged)
		}
		tag := mac(&j.key, j.tag[:], body[:n])
		if string(tag[:]) != string(body[n:]) || first != (body[0] == 'H') {
			return fmt.Errorf("resume journal %s: %w", j.path, errJournalDamaged)
		}
		if err := j.apply(body[:n], j.end+5); err != nil {
			return fmt.Errorf("resume journal %s: %v: %w", j.path, err, errJournalDamaged)
		}
		j.tag, j.end = tag, j.end+4+int64(n)+32
	}
}

// apply takes one verified record into the journal; payloadOff is where
// its payload (after the kind byte) lies in the file.
func (j *journal) apply(body []byte, payloadOff int64) error {
	p := body[1:]
	switch body[0] {
	case 'H':
		d := json.NewDecoder(strings.NewReader(string(p)))
		d.DisallowUnknownFields()
		if err := d.Decode(&j.hdr); err != nil || !archive.ValidID(j.hdr.ID) {
			return errors.New("bad header")
		}
		if j.hdr.Format != journalFormat {
			return fmt.Errorf("written by another version of coldship (format %d)", j.hdr.Format)
		}
	case 'K':
		if len(p) != 36 {
			return errors.New("bad key slot record")
		}
		slot := int(binary.BigEndian.Uint32(p))
		j.slots = max(j.slots, slot+1)
		var d archive.Digest
		copy(d[:], p[4:])
		j.keyObjs[slot] = d
	case 'R':
		if len(p) < 4 || (len(p)-4)%journalRecord != 0 {
			return errors.New("bad records")
		}
		n := int(binary.BigEndian.Uint32(p))
		j.pieces[n] = append(j.pieces[n], journalPiece{payloadOff + 4, (len(p) - 4) / journalRecord})
	case 'S':
		if len(p) != 28 {
			return errors.New("bad segment record")
		}
		n := int(binary.BigEndian.Uint32(p))
		s := archive.Segment{Name: archive.SegmentObject(n), Size: int64(binary.BigEndian.Uint64(p[4:])),
			CRC32C: archive.CRC32CString(binary.BigEndian.Uint32(p[12:])), Key: int(binary.BigEndian.Uint32(p[16:]))}
		j.segments[n] = &journalSegment{Segment: s, n: n, records: int64(binary.BigEndian.Uint64(p[20:])), pieces: j.pieces[n]}
	default:
		return fmt.Errorf("unknown record kind %q", body[0])
	}
	return nil
}

// moveAside renames a damaged journal out of the way, so that the next
// run starts afresh without a human, and returns its new name.
func moveAside(path string) string {
	bad := path + ".bad-" + time.Now().UTC().Format("20060102T150405Z")
	if err := os.Rename(path, bad); err != nil {
		os.Remove(path)
		return ""
	}
	return bad
}

// journalRecordOf encodes the head of one record of an 'R' record into b
// (journalRecordHead bytes; the tag follows).
func journalRecordOf(b []byte, file uint32, block uint64, length uint32, compressed bool, kd *archive.Digest) {
	binary.BigEndian.PutUint32(b, file)
	binary.BigEndian.PutUint64(b[4:], block)
	binary.BigEndian.PutUint32(b[12:], length)
	b[16] = 0
	if compressed {
		b[16] = 1
	}
	copy(b[17:], kd[:])
}

// RecipientsFingerprint identifies a recipient list, so that a resumed send
// never mixes key slots wrapped for different recipients.
func RecipientsFingerprint(recipients []string) string {
	s := append([]string(nil), recipients...)
	sort.Strings(s)
	h := sha256.Sum256([]byte(strings.Join(s, "\n")))
	return hex.EncodeToString(h[:16])
}
