package crashtest

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/zeebo/blake3"
)

// A Journal is a send's resume journal as docs/FORMAT.md ("Local state")
// describes it, read by code of this package's own: records of
// u32be(len(body)) || body || tag(32), tag = BLAKE3-keyed(journal key,
// previous tag || body), the journal key derived from the state key.
type Journal struct {
	Bodies [][]byte // kind byte first
	Tags   [][]byte
}

// JournalRecordSize is the size of one record of an 'R' body (format 4:
// file, block, length, flags, keyed digest, tag).
const JournalRecordSize = 65

// FindJournal returns the one resume journal in stateDir.
func FindJournal(stateDir string) (string, error) {
	m, _ := filepath.Glob(filepath.Join(stateDir, "resume", "*.journal"))
	if len(m) != 1 {
		return "", fmt.Errorf("%d resume journals in %s, want 1", len(m), stateDir)
	}
	return m[0], nil
}

// ReadJournal reads the journal at path; a record cut short at the end is
// dropped, as coldship drops it.
func ReadJournal(path string) (*Journal, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	j := &Journal{}
	for len(b) >= 4 {
		n := int(binary.BigEndian.Uint32(b))
		if n == 0 || len(b) < 4+n+32 {
			break
		}
		j.Bodies = append(j.Bodies, append([]byte(nil), b[4:4+n]...))
		j.Tags = append(j.Tags, append([]byte(nil), b[4+n:4+n+32]...))
		b = b[4+n+32:]
	}
	if len(j.Bodies) == 0 || j.Bodies[0][0] != 'H' {
		return nil, fmt.Errorf("resume journal %s: no header record", path)
	}
	return j, nil
}

// JournalKey derives the journal's MAC key from the state key in
// stateDir (dr/state.key, 32 bytes in hex).
func JournalKey(stateDir string) ([32]byte, error) {
	var key, jk [32]byte
	b, err := os.ReadFile(filepath.Join(stateDir, "dr", "state.key"))
	if err != nil {
		return jk, err
	}
	k, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(k) != 32 {
		return jk, errors.New("state key: not 32 bytes of hex")
	}
	copy(key[:], k)
	blake3.DeriveKey("coldship/v3 journal mac", key[:], jk[:])
	return jk, nil
}

// Verify checks the MAC chain under the state key of stateDir.
func (j *Journal) Verify(stateDir string) error {
	key, err := JournalKey(stateDir)
	if err != nil {
		return err
	}
	var prev [32]byte
	for i, body := range j.Bodies {
		t := journalTag(&key, prev[:], body)
		if string(t[:]) != string(j.Tags[i]) {
			return fmt.Errorf("record %d (%c): the MAC does not verify", i, body[0])
		}
		prev = t
	}
	return nil
}

func journalTag(key *[32]byte, prev, body []byte) [32]byte {
	h, err := blake3.NewKeyed(key[:])
	if err != nil {
		panic("crashtest: internal error: " + err.Error())
	}
	h.Write(prev)
	h.Write(body)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// Write writes the journal to path. With remac the MAC chain is computed
// anew under the state key of stateDir, as coldship itself would write
// these records (a logic fault, or a state directory restored from a
// backup); without, each record keeps the tag it had at its place (an
// edit by hand).
func (j *Journal) Write(path, stateDir string, remac bool) error {
	var key [32]byte
	if remac {
		var err error
		if key, err = JournalKey(stateDir); err != nil {
			return err
		}
	}
	var out []byte
	var prev [32]byte
	for i, body := range j.Bodies {
		tag := make([]byte, 32)
		if i < len(j.Tags) {
			copy(tag, j.Tags[i])
		}
		if remac {
			t := journalTag(&key, prev[:], body)
			tag, prev = t[:], t
		}
		out = binary.BigEndian.AppendUint32(out, uint32(len(body)))
		out = append(append(out, body...), tag...)
	}
	return os.WriteFile(path, out, 0o600)
}

// JournalSegment is an 'S' record: a segment the journal says is complete
// at the destination.
type JournalSegment struct {
	Number  int
	Size    int64
	CRC32C  uint32
	Slot    int
	Records int64
}

// Name is the segment's object name in its shipment.
func (s JournalSegment) Name() string { return fmt.Sprintf("segments/%08d", s.Number) }

// Segments returns the journal's 'S' records.
func (j *Journal) Segments() []JournalSegment {
	var out []JournalSegment
	for _, b := range j.Bodies {
		if b[0] != 'S' || len(b) != 29 {
			continue
		}
		p := b[1:]
		out = append(out, JournalSegment{Number: int(binary.BigEndian.Uint32(p)), Size: int64(binary.BigEndian.Uint64(p[4:])),
			CRC32C: binary.BigEndian.Uint32(p[12:]), Slot: int(binary.BigEndian.Uint32(p[16:])), Records: int64(binary.BigEndian.Uint64(p[20:]))})
	}
	return out
}

// Records returns the records of the 'R' bodies of segment n, in order,
// as slices into the bodies (editing them edits the journal): u32be(file)
// u64be(block) u32be(length) u8(flags) [32]keyed digest [16]tag.
func (j *Journal) Records(n int) [][]byte {
	var out [][]byte
	for _, b := range j.Bodies {
		if b[0] != 'R' || int(binary.BigEndian.Uint32(b[1:])) != n {
			continue
		}
		for p := b[5:]; len(p) >= JournalRecordSize; p = p[JournalRecordSize:] {
			out = append(out, p[:JournalRecordSize])
		}
	}
	return out
}

// ShipmentID returns the id in the header record.
func (j *Journal) ShipmentID() string {
	const key = `"id":"`
	s := string(j.Bodies[0][1:])
	i := strings.Index(s, key)
	if i < 0 {
		return ""
	}
	id, _, _ := strings.Cut(s[i+len(key):], `"`)
	return id
}
