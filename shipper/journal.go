package shipper

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/coldship/coldship/archive"
)

// A journal records, in the local state directory, how far an unfinished
// send got: which segments are complete at the destination and where each
// of their blocks lies. It holds no key and no digest of any plaintext:
// a rerun re-reads the (unchanged) sources for digests and seals what is
// missing under a fresh key slot, so no key and nonce is ever reused.
type journal struct {
	Format       int              `json:"format"`
	Dest         string           `json:"dest"`
	ID           string           `json:"id"`
	Created      time.Time        `json:"created"`
	Label        string           `json:"label,omitempty"`
	BlockSize    int64            `json:"block_size"`
	Compression  string           `json:"compression"`
	Recipients   string           `json:"recipients"` // fingerprint of the recipient list
	HeaderDigest archive.Digest   `json:"header_blake3"`
	Base         string           `json:"base,omitempty"` // of an incremental shipment
	Slots        int              `json:"slots"`          // key slots written so far
	Files        []journalFile    `json:"files"`
	Segments     []journalSegment `json:"segments"`
}

type journalFile struct {
	Path  string `json:"path"` // on the source
	Name  string `json:"name"` // in the shipment
	Dir   bool   `json:"dir,omitempty"`
	Size  int64  `json:"size"`
	MTime int64  `json:"mtime_ns"`
	CTime int64  `json:"ctime_ns"`
	Ino   uint64 `json:"ino"`
}

type journalSegment struct {
	archive.Segment
	Blocks []journalBlock `json:"blocks"`
}

type journalBlock struct {
	File       int   `json:"f"`
	Index      int64 `json:"i"`
	Offset     int64 `json:"o"`
	Length     int64 `json:"n"`
	Compressed bool  `json:"z,omitempty"`
}

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
	return filepath.Join(stateDir, "resume", hex.EncodeToString(h.Sum(nil)[:16])+".json")
}

func loadJournal(path string) (*journal, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read resume journal: %w", err)
	}
	var j journal
	if err := json.Unmarshal(b, &j); err != nil || j.Format != 1 || !archive.ValidID(j.ID) {
		return nil, fmt.Errorf("resume journal %s is damaged; remove it to start afresh", path)
	}
	return &j, nil
}

// save writes the journal atomically.
func (j *journal) save(path string) error {
	b, err := json.MarshalIndent(j, "", " ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("save resume journal: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("save resume journal: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("save resume journal: %w", err)
	}
	return nil
}

// RecipientsFingerprint identifies a recipient list, so that a resumed send
// never mixes key slots wrapped for different recipients.
func RecipientsFingerprint(recipients []string) string {
	s := append([]string(nil), recipients...)
	sort.Strings(s)
	h := sha256.Sum256([]byte(strings.Join(s, "\n")))
	return hex.EncodeToString(h[:16])
}

func (st *fileState) journalFile() journalFile {
	jf := journalFile{Path: st.src.Path, Name: st.src.Name, Dir: st.f == nil}
	if st.f != nil {
		jf.Size, jf.MTime, jf.CTime, jf.Ino = st.stamp.Size, st.stamp.MTime.Nano(), st.stamp.CTime.Nano(), st.stamp.Ino
	}
	return jf
}
