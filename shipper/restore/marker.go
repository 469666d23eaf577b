package restore

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/archive"
)

// The restore marker (.coldship-restore-<hex>.json, format 2) says which
// shipment the output folder holds, so that a later receive --into can
// update it in place by writing only the blocks that differ. Per file it
// names the file's blocks file (in the folder .coldship-restore-<hex>.blocks)
// and the file's stamp (size, mtime, ctime, inode) as the receive left it:
// while the stamp is unchanged, the blocks file describes the file without
// reading it; once it changed (the VM ran from the restore), the file is
// read and hashed again. During an update it says "updating", and the
// files being rewritten are moved aside until every one has been checked.
//
// The resume record (.coldship-receive-<hex>.json) describes a fresh
// receive in progress: its shipment and, per file, its temporary file and
// blocks file, written before they are created. <hex> is the first 6 bytes
// of SHA-256 over the shipment's sorted top-level names, so that several
// VMs restored side by side in one folder each have their own.
//
// Both live with the plaintext images and reveal nothing they do not.
type marker struct {
	Format    int          `json:"format"`
	State     string       `json:"state"`          // stateDone or stateUpdating
	Shipment  string       `json:"shipment"`       // done: the shipment the folder holds; updating: the one being written
	From      string       `json:"from,omitempty"` // updating: the shipment the folder held before
	Dest      string       `json:"dest,omitempty"` // where it came from (for people)
	BlockSize int64        `json:"block_size"`
	Digests   string       `json:"digests"`           // the kind of the blocks files' digests: digestsForm or digestsPlain
	Partial   bool         `json:"partial,omitempty"` // receive --include: the files the shipment has beyond these are absent
	Run       uint32       `json:"run,omitempty"`     // updating: the mark of the update's writes
	Files     []markerFile `json:"files"`
	// Devices: files of the shipment that --out-device wrote onto block
	// devices (path in the shipment -> device), which the folder does not
	// hold and an update cannot reach.
	Devices map[string]string `json:"devices,omitempty"`

	// Chain and Statement are Shipment's chain id and the SHA-256 of its
	// signed statement, when receive checked its signature; else absent.
	Chain     string         `json:"chain,omitempty"`
	Statement archive.Digest `json:"statement_sha256,omitzero"`
	// Label is Shipment's label ("" for none); absent when unknown (a
	// marker of an earlier version, a live receive).
	Label *string `json:"label,omitempty"`
}

const (
	stateDone     = "done"
	stateUpdating = "updating"

	markerFormat = 2
	recordFormat = 1

	digestsForm  = "form"  // format 3: archive.FormDigest
	digestsPlain = "plain" // formats 1 and 2: archive.BlockDigest
)

type markerFile struct {
	Path   string `json:"path"` // as in the manifest
	Type   string `json:"type"`
	Size   int64  `json:"size,omitempty"`
	Stamp  *stamp `json:"stamp,omitempty"`  // as the receive left the file; absent: vouches for nothing
	Blocks string `json:"blocks,omitempty"` // its blocks file, in the blocks folder
	Temp   string `json:"temp,omitempty"`   // updating: where the file is while it is rewritten (relative)
	// Format 1 markers held the digests inline; they are read but vouch
	// for nothing (the files are hashed again).
	Digests []byte `json:"digests,omitempty"`
}

type stamp struct {
	Size  int64  `json:"size"`
	MTime int64  `json:"mtime_ns"`
	CTime int64  `json:"ctime_ns"`
	Ino   uint64 `json:"ino"`
}

func stampOf(st *unix.Stat_t) *stamp {
	return &stamp{Size: st.Size, MTime: st.Mtim.Nano(), CTime: st.Ctim.Nano(), Ino: st.Ino}
}

// record is the resume record of a fresh receive.
type record struct {
	Format    int          `json:"format"`
	Shipment  string       `json:"shipment"`
	Dest      string       `json:"dest,omitempty"`
	BlockSize int64        `json:"block_size"`
	Digests   string       `json:"digests"`
	Run       uint32       `json:"run"`
	Files     []recordFile `json:"files"`
}

type recordFile struct {
	Path   string `json:"path"`
	Temp   string `json:"temp"`   // base name, beside the final name
	Blocks string `json:"blocks"` // in the blocks folder
}

// names are the paths, relative to the output folder, of one restore's
// marker, resume record and blocks folder.
type names struct {
	marker, record, blocks string
}

// namesFor names the marker, record and blocks folder of the restore of
// files (named by their top-level names).
func namesFor(files []archive.File) names {
	tops := map[string]bool{}
	for _, f := range files {
		top, _, _ := strings.Cut(f.Path, "/")
		tops[top] = true
	}
	list := make([]string, 0, len(tops))
	for t := range tops {
		list = append(list, t)
	}
	sort.Strings(list)
	h := sha256.Sum256([]byte(strings.Join(list, "\n")))
	x := hex.EncodeToString(h[:6])
	return names{
		marker: ".coldship-restore-" + x + ".json",
		record: ".coldship-receive-" + x + ".json",
		blocks: ".coldship-restore-" + x + ".blocks",
	}
}

// MarkerPath returns the path of the restore marker of the restore of
// files in dir.
func MarkerPath(dir string, files []archive.File) string {
	return filepath.Join(dir, namesFor(files).marker)
}

var errDamaged = errors.New("damaged")

// loadMarker reads the marker in the root folder; nil if there is none.
func loadMarker(t *tree, name string) (*marker, error) {
	// Format 2 markers are small; a format 1 marker of a large restore
	// holds every block's digest inline (read once, after an upgrade).
	b, ok, err := readSmall(t.root, name, 1<<30)
	if err != nil || !ok {
		return nil, err
	}
	var m marker
	if err := json.Unmarshal(b, &m); err != nil || (m.Format != 1 && m.Format != markerFormat) ||
		!archive.ValidID(m.Shipment) || (m.State != stateDone && m.State != stateUpdating) || m.checkNames() != nil {
		return nil, fmt.Errorf("restore marker %s is %w; receive with --out --force to restore afresh", t.abs(name), errDamaged)
	}
	if m.Format == 1 {
		// Its inline digests are plain digests with zero blocks included:
		// rather than convert them, the files are hashed again.
		for i := range m.Files {
			m.Files[i].Stamp, m.Files[i].Digests = nil, nil
		}
		m.Format = markerFormat
	}
	return &m, nil
}

func (m *marker) checkNames() error {
	for _, f := range m.Files {
		if !cleanRel(f.Path) || (f.Temp != "" && !cleanRel(f.Temp)) || (f.Blocks != "" && !validBlocksName(f.Blocks)) {
			return errDamaged
		}
	}
	return nil
}

func cleanRel(p string) bool {
	return p != "" && p != "." && path.Clean(p) == p && !path.IsAbs(p) && p != ".." && !strings.HasPrefix(p, "../") &&
		!strings.ContainsRune(p, 0)
}

func validBlocksName(s string) bool {
	if len(s) != 12 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

func (m *marker) save(t *tree, name string) error { return saveJSON(t, name, "restore marker", m) }

// saveJSON writes v as JSON to name in the output folder, atomically.
func saveJSON(t *tree, name, what string, v any) error {
	b, err := json.Marshal(v)
	if err == nil {
		err = writeAtomic(t.root, name, b)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func (m *marker) file(p string) *markerFile {
	for i := range m.Files {
		if m.Files[i].Path == p {
			return &m.Files[i]
		}
	}
	return nil
}

// loadRecord reads the resume record; nil if there is none or it is not
// one this version can resume (its temporary files are then swept).
func loadRecord(t *tree, name string) *record {
	b, ok, err := readSmall(t.root, name, 64<<20)
	if err != nil || !ok {
		return nil
	}
	var r record
	if json.Unmarshal(b, &r) != nil || r.Format != recordFormat || !archive.ValidID(r.Shipment) {
		return nil
	}
	for _, f := range r.Files {
		if !cleanRel(f.Path) || !isTempOf(f.Temp, path.Base(f.Path)) || !validBlocksName(f.Blocks) {
			return nil
		}
	}
	return &r
}

func (r *record) save(t *tree, name string) error { return saveJSON(t, name, "resume record", r) }

func (r *record) file(p string) *recordFile {
	if r == nil {
		return nil
	}
	for i := range r.Files {
		if r.Files[i].Path == p {
			return &r.Files[i]
		}
	}
	return nil
}

// Holding is what a restore marker says its folder holds.
type Holding struct {
	Shipment string // done: the shipment the folder holds; updating: the one being written
	State    string // "done" or "updating"
	From     string // updating: the shipment the folder held before
	// Chain and Statement are Shipment's chain id and the SHA-256 of its
	// statement when it was a signed shipment whose signature receive
	// checked; "" and zero otherwise.
	Chain     string
	Statement archive.Digest
	// Label is Shipment's label ("" for none), nil when the marker does
	// not say.
	Label *string
	// Aside lists, while an update is unfinished, where the files it
	// rewrites are kept (relative to the folder, .NAME.coldship-update)
	// until an update completes.
	Aside []string
}

// Held reports what the restore marker of files in dir says the folder
// holds; ok is false when there is no marker. It takes no lock: it is for
// checks before a receive (a rollback check compares it with the
// shipment about to be received).
func Held(dir string, files []archive.File) (h Holding, ok bool, err error) {
	b, err := os.ReadFile(MarkerPath(dir, files))
	if errors.Is(err, os.ErrNotExist) {
		return Holding{}, false, nil
	}
	if err != nil {
		return Holding{}, false, fmt.Errorf("read restore marker: %w", err)
	}
	var m marker
	if json.Unmarshal(b, &m) != nil || !archive.ValidID(m.Shipment) || (m.State != stateDone && m.State != stateUpdating) ||
		(m.Chain != "" && !archive.ValidChainID(m.Chain)) {
		return Holding{}, false, fmt.Errorf("restore marker %s is %w", MarkerPath(dir, files), errDamaged)
	}
	return m.holding(), true, nil
}

// holding is what m says its folder holds.
func (m *marker) holding() Holding {
	h := Holding{Shipment: m.Shipment, State: m.State, From: m.From, Chain: m.Chain, Statement: m.Statement, Label: m.Label}
	if m.State == stateUpdating {
		for _, f := range m.Files {
			if f.Temp != "" {
				h.Aside = append(h.Aside, f.Temp)
			}
		}
	}
	return h
}
