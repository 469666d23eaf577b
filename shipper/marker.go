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
	"syscall"

	"github.com/coldship/coldship/archive"
)

// A restore marker, kept in the output directory next to what a receive
// restored, says which shipment the directory holds, so that a later
// `receive --into` can update it in place by writing only the blocks that
// differ. It records, per file, the digest of every block and the file's
// stamp (size, mtime, ctime, inode) as the receive left it: while the stamp
// is unchanged the digests describe the file without reading it; once it
// changed (the VM ran from the restore, say) the file is read and hashed
// again. The marker lives with the plaintext images and reveals nothing
// they do not.
//
// During an update the marker says "updating", and the files being
// rewritten are moved aside to hidden names until every one of them has
// been checked: an interrupted update leaves no half-written image under
// its final name, and is resumed (or restarted with --out) by running
// receive again.
type restoreMarker struct {
	Format    int          `json:"format"`
	State     string       `json:"state"`          // markerDone or markerUpdating
	Shipment  string       `json:"shipment"`       // done: the shipment DIR holds; updating: the one being written
	From      string       `json:"from,omitempty"` // updating: the shipment DIR held before
	Dest      string       `json:"dest,omitempty"` // where it came from (for people)
	BlockSize int64        `json:"block_size"`
	Files     []markerFile `json:"files"`
}

const (
	markerDone     = "done"
	markerUpdating = "updating"
)

type markerFile struct {
	Path    string     `json:"path"` // as in the manifest
	Type    string     `json:"type"`
	Size    int64      `json:"size,omitempty"`
	Stamp   *fileStamp `json:"stamp,omitempty"`   // as the receive left the file
	Digests []byte     `json:"digests,omitempty"` // 32 bytes per block: the BLAKE3 of each block
	Temp    string     `json:"temp,omitempty"`    // updating: where the file is while it is rewritten
}

type fileStamp struct {
	Size  int64  `json:"size"`
	MTime int64  `json:"mtime_ns"`
	CTime int64  `json:"ctime_ns"`
	Ino   uint64 `json:"ino"`
}

func stampOf(path string) (*fileStamp, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return nil, err
	}
	return &fileStamp{Size: st.Size, MTime: st.Mtim.Nano(), CTime: st.Ctim.Nano(), Ino: st.Ino}, nil
}

// markerPath names the marker of the restore of files (named by their
// top-level names, so that several VMs restored side by side in one
// directory each have their own).
func markerPath(dir string, files []archive.File) string {
	tops := map[string]bool{}
	for _, f := range files {
		top, _, _ := strings.Cut(f.Path, "/")
		tops[top] = true
	}
	names := make([]string, 0, len(tops))
	for t := range tops {
		names = append(names, t)
	}
	sort.Strings(names)
	h := sha256.Sum256([]byte(strings.Join(names, "\n")))
	return filepath.Join(dir, ".coldship-restore-"+hex.EncodeToString(h[:6])+".json")
}

// IntoLockPath names the lock that keeps two receives from updating the
// same directory at once.
func IntoLockPath(dir string) string {
	return filepath.Join(dir, ".coldship-restore.lock")
}

// errNoMarker means a directory holds no restore that --into could update.
var errNoMarker = errors.New("holds no restore made by coldship receive")

func loadMarker(path string) (*restoreMarker, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNoMarker
	}
	if err != nil {
		return nil, fmt.Errorf("read restore marker: %w", err)
	}
	var m restoreMarker
	if err := json.Unmarshal(b, &m); err != nil || m.Format != 1 || !archive.ValidID(m.Shipment) ||
		(m.State != markerDone && m.State != markerUpdating) {
		return nil, fmt.Errorf("restore marker %s is damaged; receive with --out --force to restore afresh", path)
	}
	for _, f := range m.Files {
		if checkRelPath(f.Path) != nil || (f.Temp != "" && checkRelPath(f.Temp) != nil) {
			return nil, fmt.Errorf("restore marker %s is damaged; receive with --out --force to restore afresh", path)
		}
	}
	return &m, nil
}

func checkRelPath(p string) error {
	if p == "" || filepath.IsAbs(p) || p != filepath.Clean(p) || p == ".." || strings.HasPrefix(p, "../") {
		return fmt.Errorf("unsafe path %q", p)
	}
	return nil
}

// save writes the marker atomically and syncs its directory, so that the
// state it records survives a crash.
func (m *restoreMarker) save(path string) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(path, b); err != nil {
		return fmt.Errorf("write restore marker: %w", err)
	}
	syncDir(filepath.Dir(path))
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// fileDigests returns the digest of every block of f per the manifest.
func fileDigests(m *archive.Manifest, f *archive.File) []archive.Digest {
	nb := m.NumBlocks(f.Size)
	d := make([]archive.Digest, nb)
	for i := range nb {
		d[i] = archive.ZeroDigest(archive.BlockLen(f.Size, m.BlockSize, i))
	}
	for _, b := range f.Blocks {
		d[b.Index] = b.BLAKE3
	}
	return d
}

func packDigests(d []archive.Digest) []byte {
	out := make([]byte, 0, 32*len(d))
	for i := range d {
		out = append(out, d[i][:]...)
	}
	return out
}

func unpackDigests(b []byte) []archive.Digest {
	d := make([]archive.Digest, len(b)/32)
	for i := range d {
		copy(d[i][:], b[32*i:])
	}
	return d
}

// doneMarker describes dir as holding shipment sh, restored or updated just
// now: the digests come from the manifest (every file was just checked
// against it), the stamps from the files as they are.
func (sh *Shipment) doneMarker(dir, dest string) (*restoreMarker, error) {
	m := sh.Manifest
	mk := &restoreMarker{Format: 1, State: markerDone, Shipment: sh.Header.ID, Dest: dest, BlockSize: m.BlockSize}
	for fi := range m.Files {
		f := &m.Files[fi]
		mf := markerFile{Path: f.Path, Type: f.Type}
		if f.Type == archive.TypeFile {
			st, err := stampOf(filepath.Join(dir, filepath.FromSlash(f.Path)))
			if err != nil {
				return nil, err
			}
			mf.Size, mf.Stamp, mf.Digests = f.Size, st, packDigests(fileDigests(m, f))
		}
		mk.Files = append(mk.Files, mf)
	}
	return mk, nil
}
