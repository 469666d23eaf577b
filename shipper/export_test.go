package shipper

import (
	"encoding/binary"
	"os"
	"testing"

	"github.com/coldship/coldship/archive"
)

// JournalPath is journalPath, for tests that damage a journal.
func JournalPath(stateDir, dest string, sources []archive.Source) string {
	return journalPath(stateDir, dest, sources)
}

// RewriteJournal rewrites the journal at path through edit, which gets
// the body of every record (kind byte first) and returns the bodies to
// write. With remac the MAC chain is recomputed under the state key of
// stateDir, as in a journal restored from an old backup; without, every
// record keeps its tag, as after an edit by hand.
func RewriteJournal(t *testing.T, path, stateDir string, remac bool, edit func(bodies [][]byte) [][]byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := loadStateKeys(stateDir, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	var bodies, tags [][]byte
	for len(b) > 0 {
		n := binary.BigEndian.Uint32(b)
		bodies = append(bodies, append([]byte(nil), b[4:4+n]...))
		tags = append(tags, b[4+n:4+n+32])
		b = b[4+n+32:]
	}
	bodies = edit(bodies)
	var out []byte
	var prev [32]byte
	for i, body := range bodies {
		tag := tags[min(i, len(tags)-1)]
		if remac {
			t := mac(&keys.journalMAC, prev[:], body)
			tag, prev = t[:], t
		}
		out = binary.BigEndian.AppendUint32(out, uint32(len(body)))
		out = append(append(out, body...), tag...)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
}

// JournalRecordSize is the size of one record of an 'R' journal record.
const JournalRecordSize = journalRecord

// DRStateDir is the folder of the DR state of sources sent to dest under
// label, for tests that lay out the state of an earlier coldship.
func DRStateDir(stateDir, dest string, sources []archive.Source, label string) string {
	return openDRStore(stateDir, dest, sources, label, nil).dir
}
