package restore

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coldship/coldship/archive"
)

const testBS = 64 << 10

// image is the content of one file of a test shipment.
type image struct {
	path string
	data []byte
}

// block is one data block of a test shipment, as a receive hands it over.
type block struct {
	file  int
	index int64
	form  []byte
	d     archive.Digest
	data  int64
}

// shipment builds a format 3 shipment of images under the folder "vm":
// its manifest files and its data blocks in table order.
func shipment(id string, images ...image) (Shipment, []block) {
	u := uint32(os.Getuid())
	g := uint32(os.Getgid())
	mtime := time.Date(2026, 11, 30, 12, 0, 0, 5, time.UTC)
	sh := Shipment{ID: id, Format: archive.FormatV3, BlockSize: testBS,
		Files: []archive.File{{Path: "vm", Type: archive.TypeDir, Mode: 0o755, MTime: mtime, UID: &u, GID: &g}}}
	var blocks []block
	for _, im := range images {
		fi := len(sh.Files)
		f := archive.File{Path: im.path, Type: archive.TypeFile, Size: int64(len(im.data)), Mode: 0o640, MTime: mtime, UID: &u, GID: &g}
		fd := archive.NewFileDigester(archive.FormatV3, f.Size, testBS)
		for b := int64(0); b*testBS < f.Size; b++ {
			n := archive.BlockLen(f.Size, testBS, b)
			var fb archive.FormBuilder
			fb.Reset(make([]byte, archive.MaxFormLen(n)), n)
			copy(fb.Next(0, archive.Pages(n)), im.data[b*testBS:])
			data := fb.Commit(0, archive.Pages(n))
			form := fb.Form()
			if form == nil {
				continue
			}
			d := archive.FormDigest(form, n)
			fd.Add(b, d)
			blocks = append(blocks, block{fi, b, form, d, data})
			f.DataBlocks++
			f.DataBytes += data
		}
		f.BLAKE3 = fd.Sum()
		sh.Files = append(sh.Files, f)
	}
	return sh, blocks
}

// sparse returns n bytes with a page of data every 16 pages.
func sparse(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for p := 0; p < n; p += 16 * archive.PageSize {
		for i := p; i < min(p+archive.PageSize, n); i++ {
			b[i] = byte(r.Uint32() | 1)
		}
	}
	return b
}

// deliver writes blocks through w as a receive does, up to limit of them
// (-1: all), and commits when all were written.
func deliver(t *testing.T, w *Writer, blocks []block, limit int) (*Result, error) {
	t.Helper()
	for k, b := range blocks {
		if k == limit {
			return nil, nil
		}
		need, err := w.Need(b.file, b.index, b.d)
		if err != nil {
			return nil, err
		}
		if need {
			if err := w.WriteForm(b.file, b.index, b.form, b.d, b.data); err != nil {
				return nil, err
			}
		}
	}
	return w.Commit(context.Background())
}

func restoreAll(t *testing.T, sh Shipment, blocks []block, opts Options) (*Result, error) {
	t.Helper()
	w, err := Open(context.Background(), sh, opts)
	if err != nil {
		return nil, err
	}
	res, err := deliver(t, w, blocks, -1)
	w.Close(false)
	return res, err
}

func checkImages(t *testing.T, dir string, images ...image) {
	t.Helper()
	for _, im := range images {
		got, err := os.ReadFile(filepath.Join(dir, im.path))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, im.data) {
			t.Fatalf("%s differs from its source", im.path)
		}
	}
}

func temps(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.Contains(fi.Name(), tempInfix) && !strings.HasPrefix(fi.Name(), ".coldship-restore-") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func TestWriterRoundTripIsSparse(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	im := image{"vm/disk.img", sparse(64*testBS+100, 1)}
	sh, blocks := shipment("20261130T120000Z-00000001", im)
	res, err := restoreAll(t, sh, blocks, Options{Dir: dir, ReadBack: true})
	if err != nil {
		t.Fatal(err)
	}
	checkImages(t, dir, im)
	var st syscall.Stat_t
	syscall.Stat(filepath.Join(dir, im.path), &st)
	if data := int64(len(blocks)) * archive.PageSize * 4; st.Blocks*512 > data*105/100+64<<10 {
		t.Errorf("%d bytes allocated for %d of data: not sparse to the page", st.Blocks*512, data)
	}
	if len(res.Files) != 2 || len(temps(t, dir)) != 0 {
		t.Errorf("result %v, temporary files %v", res.Files, temps(t, dir))
	}
	fi, _ := os.Stat(filepath.Join(dir, im.path))
	if fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(sh.Files[1].MTime) {
		t.Errorf("mode %v mtime %v", fi.Mode(), fi.ModTime())
	}
}

func TestWriterRefusesBadDigest(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	im := image{"vm/disk.img", sparse(8*testBS, 2)}
	sh, blocks := shipment("20261130T120000Z-00000001", im)
	sh.Files[1].BLAKE3[0] ^= 1
	if _, err := restoreAll(t, sh, blocks, Options{Dir: dir}); !errors.Is(err, archive.ErrIntegrity) {
		t.Fatalf("a file whose digest does not match: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed restore left its output folder (%v): %v", err, temps(t, filepath.Dir(dir)))
	}
}

// TestTempNameLinkNeverFollowed plants a link at the name the restore
// will use for its temporary file, and at the name an update moves a file
// aside to: neither is written through.
func TestTempNameLinkNeverFollowed(t *testing.T) {
	base := t.TempDir()
	victim := filepath.Join(base, "victim")
	os.WriteFile(victim, []byte("precious"), 0o644)
	dir := filepath.Join(base, "out")
	os.MkdirAll(filepath.Join(dir, "vm"), 0o755)
	old := tempSuffix
	tempSuffix = func() string { return "00000000aaaa" }
	defer func() { tempSuffix = old }()
	os.Symlink(victim, filepath.Join(dir, "vm", ".disk.img.coldship-00000000aaaa"))

	im := image{"vm/disk.img", sparse(8*testBS, 3)}
	sh, blocks := shipment("20261130T120000Z-00000001", im)
	tempSuffix = func() string { return "00000000aaaa" }
	if _, err := restoreAll(t, sh, blocks, Options{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	tempSuffix = old
	checkImages(t, dir, im)

	// An update of a file the folder does not hold yet creates it aside.
	os.Symlink(victim, filepath.Join(dir, "vm", ".new.img.coldship-update"))
	im2 := image{"vm/new.img", sparse(4*testBS, 4)}
	sh2, blocks2 := shipment("20261130T120000Z-00000002", im, im2)
	if _, err := restoreAll(t, sh2, blocks2, Options{Dir: dir, Update: true}); err != nil {
		t.Fatal(err)
	}
	checkImages(t, dir, im, im2)
	if b, _ := os.ReadFile(victim); string(b) != "precious" {
		t.Fatalf("a link planted at a temporary name was written through: %q", b)
	}
	if fi, err := os.Lstat(victim); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("victim: %v %v", fi, err)
	}
}

// TestParentLinkRefused plants a link where a folder of the shipment goes.
func TestParentLinkRefused(t *testing.T) {
	base := t.TempDir()
	elsewhere := filepath.Join(base, "elsewhere")
	os.MkdirAll(elsewhere, 0o755)
	dir := filepath.Join(base, "out")
	os.MkdirAll(dir, 0o755)
	os.Symlink(elsewhere, filepath.Join(dir, "vm"))
	im := image{"vm/disk.img", sparse(4*testBS, 5)}
	sh, blocks := shipment("20261130T120000Z-00000001", im)
	_, err := restoreAll(t, sh, blocks, Options{Dir: dir, Force: true})
	if err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("restore through a planted folder link: %v", err)
	}
	if entries, _ := os.ReadDir(elsewhere); len(entries) != 0 {
		t.Fatalf("wrote through the link: %v", entries)
	}
	// A link on the way to a file that has no folder entry of its own.
	sh.Files = sh.Files[1:]
	if _, err := restoreAll(t, sh, blocks[:0], Options{Dir: dir, Force: true}); err == nil {
		t.Fatal("restore under a linked parent succeeded")
	}
	if entries, _ := os.ReadDir(elsewhere); len(entries) != 0 {
		t.Fatalf("wrote through the link: %v", entries)
	}
}

// interruptHalfWay restores the first half of blocks into dir and stops
// there, as a killed receive would (its record kept for a resume); it
// returns how many blocks were delivered.
func interruptHalfWay(t *testing.T, dir string, sh Shipment, blocks []block) int {
	t.Helper()
	w, err := Open(context.Background(), sh, Options{Dir: dir, Resume: true})
	if err != nil {
		t.Fatal(err)
	}
	half := len(blocks) / 2
	if _, err := deliver(t, w, blocks, half); err != nil {
		t.Fatal(err)
	}
	w.Close(true)
	return half
}

// TestWriterResumes interrupts a restore half-way, damages one block it
// wrote and plants a link at a recorded temporary name: the next restore
// of the same shipment reuses the blocks that check out, rewrites the
// rest, and never follows the link.
func TestWriterResumes(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "out")
	a := image{"vm/a.img", sparse(32*testBS, 6)}
	b := image{"vm/b.img", sparse(8*testBS, 7)}
	sh, blocks := shipment("20261130T120000Z-00000001", a, b)
	half := interruptHalfWay(t, dir, sh, blocks)
	tmpA, _ := filepath.Glob(filepath.Join(dir, "vm", ".a.img.coldship-*"))
	if len(tmpA) != 1 {
		t.Fatalf("temporary files of a.img: %v", tmpA)
	}
	f, _ := os.OpenFile(tmpA[0], os.O_RDWR, 0)
	f.WriteAt([]byte{0xff}, 3*testBS+17) // a block the next run must not trust
	f.Close()
	tmpB, _ := filepath.Glob(filepath.Join(dir, "vm", ".b.img.coldship-*"))
	victim := filepath.Join(base, "victim")
	os.WriteFile(victim, []byte("precious"), 0o644)
	os.Remove(tmpB[0])
	os.Symlink(victim, tmpB[0])
	// A stale temporary file of another receive is removed.
	stale := filepath.Join(dir, "vm", ".a.img.coldship-0123456789ab")
	os.WriteFile(stale, []byte("stale"), 0o600)

	res, err := restoreAll(t, sh, blocks, Options{Dir: dir, Resume: true, ReadBack: true})
	if err != nil {
		t.Fatal(err)
	}
	checkImages(t, dir, a, b)
	var written int64
	for _, bl := range blocks[:half] {
		written += bl.data
	}
	if res.Reused <= 0 || res.Reused >= written {
		t.Errorf("reused %d bytes, want some but not all of the %d written before", res.Reused, written)
	}
	if v, _ := os.ReadFile(victim); string(v) != "precious" {
		t.Fatalf("the link at a recorded temporary name was followed: %q", v)
	}
	if l := temps(t, dir); len(l) != 0 {
		t.Errorf("temporary files left: %v", l)
	}
}

// TestWriterResumesUnrecorded: a kill loses the slots not yet written
// (putLater batches up to 32 MiB of blocks per file), but the blocks are
// in the temporary file: the next run checks every block that holds data
// there against the shipment and reuses those whose digest checks.
func TestWriterResumesUnrecorded(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	a := image{"vm/a.img", sparse(32*testBS, 16)}
	sh, blocks := shipment("20261130T120000Z-00000001", a)
	half := interruptHalfWay(t, dir, sh, blocks)
	slots, _ := filepath.Glob(filepath.Join(dir, ".coldship-restore-*.blocks", "*"))
	if len(slots) != 1 {
		t.Fatalf("blocks files: %v", slots)
	}
	if err := os.Truncate(slots[0], 0); err != nil { // as if no batch had been written
		t.Fatal(err)
	}
	tmp, _ := filepath.Glob(filepath.Join(dir, "vm", ".a.img.coldship-*"))
	if len(tmp) != 1 {
		t.Fatalf("temporary files of a.img: %v", tmp)
	}
	f, _ := os.OpenFile(tmp[0], os.O_RDWR, 0)
	f.WriteAt([]byte{0xff}, 3*testBS+17) // a torn block: written again
	f.Close()

	res, err := restoreAll(t, sh, blocks, Options{Dir: dir, Resume: true, ReadBack: true})
	if err != nil {
		t.Fatal(err)
	}
	checkImages(t, dir, a)
	var want int64
	for _, bl := range blocks[:half] {
		if bl.index != 3 {
			want += bl.data
		}
	}
	if res.Reused != want {
		t.Errorf("reused %d bytes, want the %d written before whose digest checks", res.Reused, want)
	}
	if l := temps(t, dir); len(l) != 0 {
		t.Errorf("temporary files left: %v", l)
	}
}

// TestWriterResumeZeroesStrayData: a resumed temporary file that holds
// data where the shipment has a zero block (written there by something
// else than the stopped receive) is not trusted for that block either:
// the restored file is the shipment's, not what the temporary held.
func TestWriterResumeZeroesStrayData(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	a := image{"vm/a.img", sparse(32*testBS, 17)}
	clear(a.data[20*testBS : 21*testBS]) // a zero block
	sh, blocks := shipment("20261130T120000Z-00000001", a)
	w, err := Open(context.Background(), sh, Options{Dir: dir, Resume: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := deliver(t, w, blocks, 4); err != nil {
		t.Fatal(err)
	}
	w.Close(true)
	tmp, _ := filepath.Glob(filepath.Join(dir, "vm", ".a.img.coldship-*"))
	if len(tmp) != 1 {
		t.Fatalf("temporary files of a.img: %v", tmp)
	}
	f, _ := os.OpenFile(tmp[0], os.O_RDWR, 0)
	f.WriteAt([]byte("stray"), 20*testBS+100)
	f.Close()
	if _, err := restoreAll(t, sh, blocks, Options{Dir: dir, Resume: true}); err != nil {
		t.Fatal(err)
	}
	checkImages(t, dir, a)
}

// TestWriterUpdate updates a restore: only changed blocks are written,
// pages that became zero are punched, a file that shrank and one that
// went are handled, and the marker then vouches for the result.
func TestWriterUpdate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	a := image{"vm/a.img", sparse(32*testBS, 8)}
	gone := image{"vm/gone.img", sparse(2*testBS, 9)}
	sh, blocks := shipment("20261130T120000Z-00000001", a, gone)
	if _, err := restoreAll(t, sh, blocks, Options{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	a2 := image{"vm/a.img", append([]byte(nil), a.data[:30*testBS]...)}
	a2.data[5*testBS] ^= 0x55                    // one block changed
	clear(a2.data[9*testBS : 10*testBS])         // one block zero
	clear(a2.data[12*testBS : 12*testBS+4096*2]) // one page zero
	sh2, blocks2 := shipment("20261130T120000Z-00000002", a2)
	res, err := restoreAll(t, sh2, blocks2, Options{Dir: dir, Update: true, ReadBack: true})
	if err != nil {
		t.Fatal(err)
	}
	checkImages(t, dir, a2)
	if res.Written > 3*testBS {
		t.Errorf("wrote %d bytes for 3 changed blocks", res.Written)
	}
	if _, err := os.Stat(filepath.Join(dir, gone.path)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a file the new shipment does not have is still there (%v)", err)
	}
	// Unchanged since: the next update trusts the marker and writes nothing.
	res, err = restoreAll(t, sh2, blocks2, Options{Dir: dir, Update: true})
	if err != nil || res.Written != 0 {
		t.Fatalf("an update to the same shipment wrote %v bytes: %v", res, err)
	}
	// Changed behind its back: the file is read again and repaired.
	f, _ := os.OpenFile(filepath.Join(dir, a2.path), os.O_RDWR, 0)
	f.WriteAt([]byte("scribble"), 20*testBS)
	f.Close()
	if _, err := restoreAll(t, sh2, blocks2, Options{Dir: dir, Update: true}); err != nil {
		t.Fatal(err)
	}
	checkImages(t, dir, a2)
}

// TestReadBackPolicy damages each file after it is written and synced, as
// a disk that loses a write would: without ReadBack the restore trusts
// what it wrote (as cp, rsync and tar do); with ReadBack every written
// block is read again, page cache dropped, and the damage is an integrity
// failure, for a fresh restore, an update and a live restore alike.
func TestReadBackPolicy(t *testing.T) {
	im := image{"vm/disk.img", sparse(16*testBS, 10)}
	sh, blocks := shipment("20261130T120000Z-00000001", im)
	im2 := image{"vm/disk.img", sparse(16*testBS, 11)}
	sh2, blocks2 := shipment("20261130T120000Z-00000002", im2)
	defer func() { testAfterSync = nil }()
	for _, mode := range []string{"fresh", "update", "live"} {
		for _, readBack := range []bool{false, true} {
			dir := filepath.Join(t.TempDir(), "out")
			if mode == "update" {
				if _, err := restoreAll(t, sh, blocks, Options{Dir: dir}); err != nil {
					t.Fatal(err)
				}
			}
			testAfterSync = func(f *os.File) {
				b := make([]byte, 1)
				f.ReadAt(b, 0)
				b[0] ^= 0x80
				f.WriteAt(b, 0)
				f.Sync()
			}
			var err error
			switch mode {
			case "fresh":
				_, err = restoreAll(t, sh, blocks, Options{Dir: dir, ReadBack: readBack})
			case "update":
				_, err = restoreAll(t, sh2, blocks2, Options{Dir: dir, Update: true, ReadBack: readBack})
			case "live":
				err = restoreLive(t, sh, blocks, Options{Dir: dir, Live: true, ReadBack: readBack})
			}
			testAfterSync = nil
			if readBack && !errors.Is(err, archive.ErrIntegrity) {
				t.Errorf("%s, read back: %v, want an integrity failure", mode, err)
			}
			if !readBack && err != nil {
				t.Errorf("%s, no read back: %v", mode, err)
			}
			if readBack {
				if _, err := os.Stat(filepath.Join(dir, im.path)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s: the damaged file is at its final name (%v)", mode, err)
				}
			}
		}
	}
}

// restoreLive restores a shipment as a live receiver does, in two rounds.
func restoreLive(t *testing.T, sh Shipment, blocks []block, opts Options) error {
	t.Helper()
	w, err := Open(context.Background(), sh, opts)
	if err != nil {
		return err
	}
	defer w.Close(false)
	for round := uint32(1); round <= 2; round++ {
		for _, b := range blocks {
			if err := w.WriteLive(b.file, b.index, b.form, b.data, round); err != nil {
				return err
			}
		}
	}
	for i, f := range sh.Files {
		if f.Type == archive.TypeFile {
			f.Extents = []archive.Extent{{Kind: archive.KindData, Offset: 0, Length: f.Size}}
		}
		if err := w.Settle(i, f); err != nil {
			return err
		}
	}
	_, err = w.Commit(context.Background())
	return err
}

// TestFinalizeAndOwners: Finalize sees each checked file before it lands
// and may change it; a Finalize that fails leaves nothing at a final name;
// as root, numeric owners come from the manifest unless NoSameOwner.
func TestFinalizeAndOwners(t *testing.T) {
	im := image{"vm/top.qcow2", sparse(4*testBS, 12)}
	sh, blocks := shipment("20261130T120000Z-00000001", im)
	uid, gid := uint32(12345), uint32(23456)
	sh.Files[1].UID, sh.Files[1].GID = &uid, &gid
	dir := filepath.Join(t.TempDir(), "out")
	var seen []string
	_, err := restoreAll(t, sh, blocks, Options{Dir: dir, Finalize: func(ctx context.Context, f *FinalFile) error {
		seen = append(seen, f.File.Path, f.Final, f.PathOf("vm"))
		_, err := f.Temp.WriteAt([]byte("rewritten backing"), 0)
		return err
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != 3 || seen[0] != im.path || seen[1] != filepath.Join(dir, im.path) || seen[2] != filepath.Join(dir, "vm") {
		t.Errorf("Finalize saw %v", seen)
	}
	got, _ := os.ReadFile(filepath.Join(dir, im.path))
	if !bytes.HasPrefix(got, []byte("rewritten backing")) {
		t.Error("what Finalize wrote is not in the restored file")
	}
	fi, _ := os.Stat(filepath.Join(dir, im.path))
	st := fi.Sys().(*syscall.Stat_t)
	if os.Geteuid() == 0 && (st.Uid != uid || st.Gid != gid) {
		t.Errorf("as root: owner %d:%d, want %d:%d", st.Uid, st.Gid, uid, gid)
	}
	if os.Geteuid() != 0 && int(st.Uid) != os.Geteuid() {
		t.Errorf("not root: owner %d, want the user", st.Uid)
	}
	if !fi.ModTime().Equal(sh.Files[1].MTime) {
		t.Errorf("mtime %v after Finalize, want the manifest's", fi.ModTime())
	}

	dir2 := filepath.Join(t.TempDir(), "out")
	if _, err := restoreAll(t, sh, blocks, Options{Dir: dir2, NoSameOwner: true}); err != nil {
		t.Fatal(err)
	}
	fi, _ = os.Stat(filepath.Join(dir2, im.path))
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != os.Geteuid() {
		t.Errorf("NoSameOwner: owner %d, want the user %d", st.Uid, os.Geteuid())
	}

	dir3 := filepath.Join(t.TempDir(), "out")
	_, err = restoreAll(t, sh, blocks, Options{Dir: dir3, Finalize: func(context.Context, *FinalFile) error {
		return errors.New("cannot rewrite the backing file")
	}})
	if err == nil || !strings.Contains(err.Error(), "cannot rewrite") {
		t.Fatalf("a failing Finalize: %v", err)
	}
	if _, err := os.Stat(dir3); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed Finalize left the output folder (%v)", err)
	}
}

func TestHeld(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	im := image{"vm/disk.img", sparse(2*testBS, 13)}
	sh, blocks := shipment("20261130T120000Z-00000001", im)
	if _, ok, err := Held(dir, sh.Files); ok || err != nil {
		t.Fatalf("no restore yet: %v %v", ok, err)
	}
	if _, err := restoreAll(t, sh, blocks, Options{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	h, ok, err := Held(dir, sh.Files)
	if !ok || err != nil || h.Shipment != sh.ID || h.State != stateDone || h.Chain != "" || h.Statement != (archive.Digest{}) {
		t.Fatalf("Held: %+v %v %v", h, ok, err)
	}
	// A signed shipment's chain and statement digest are recorded, and
	// an update records the new shipment's.
	sh2, blocks2 := shipment("20261130T120001Z-00000002", im)
	sh2.Chain, sh2.Statement = "0123456789abcdef0123456789abcdef", archive.Digest{1, 2, 3}
	if _, err := restoreAll(t, sh2, blocks2, Options{Dir: dir, Update: true}); err != nil {
		t.Fatal(err)
	}
	h, ok, err = Held(dir, sh.Files)
	if !ok || err != nil || h.Shipment != sh2.ID || h.Chain != sh2.Chain || h.Statement != sh2.Statement {
		t.Fatalf("Held after an update to a signed shipment: %+v %v %v", h, ok, err)
	}
}

// TestMarkerFormat1 updates a restore made by an earlier version, whose
// marker (format 1) held the digests inline: it vouches for nothing, the
// files are read again, and the update completes.
func TestMarkerFormat1(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	a := image{"vm/a.img", sparse(8*testBS, 14)}
	sh, blocks := shipment("20261130T120000Z-00000001", a)
	if _, err := restoreAll(t, sh, blocks, Options{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	n := namesFor(sh.Files)
	os.RemoveAll(filepath.Join(dir, n.blocks))
	v1 := `{"format":1,"state":"done","shipment":"20261130T120000Z-00000001","block_size":65536,"files":[` +
		`{"path":"vm","type":"dir"},{"path":"vm/a.img","type":"file","size":524288,"stamp":{"size":524288,"mtime_ns":1,"ctime_ns":1,"ino":1},"digests":"AAAA"}]}`
	os.WriteFile(filepath.Join(dir, n.marker), []byte(v1), 0o644)
	a2 := image{"vm/a.img", append([]byte(nil), a.data...)}
	a2.data[3*testBS] ^= 1
	sh2, blocks2 := shipment("20261130T120000Z-00000002", a2)
	res, err := restoreAll(t, sh2, blocks2, Options{Dir: dir, Update: true})
	if err != nil {
		t.Fatal(err)
	}
	checkImages(t, dir, a2)
	if res.Written > testBS {
		t.Errorf("wrote %d bytes for one changed block", res.Written)
	}
}

// TestWriterRerunAfterLanding runs a fresh restore again after it was
// stopped during its renames (one file landed, the other not): the rerun
// checks the landed file again and completes. Once complete, a rerun
// refuses the existing files (Force is needed).
func TestWriterRerunAfterLanding(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	a := image{"vm/a.img", sparse(16*testBS, 8)}
	b := image{"vm/b.img", sparse(8*testBS, 9)}
	sh, blocks := shipment("20261130T120000Z-00000003", a, b)
	opts := Options{Dir: dir, Resume: true}
	w, err := Open(context.Background(), sh, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, bl := range blocks {
		if err := w.WriteForm(bl.file, bl.index, bl.form, bl.d, bl.data); err != nil {
			t.Fatal(err)
		}
	}
	w.Close(true) // as a kill before the renames leaves it
	tmpA, _ := filepath.Glob(filepath.Join(dir, "vm", ".a.img.coldship-*"))
	if len(tmpA) != 1 {
		t.Fatalf("temporary files of a.img: %v", tmpA)
	}
	if err := os.Rename(tmpA[0], filepath.Join(dir, "vm", "a.img")); err != nil { // landed before the kill
		t.Fatal(err)
	}
	res, err := restoreAll(t, sh, blocks, opts)
	if err != nil {
		t.Fatalf("rerun after a stop during the renames: %v", err)
	}
	checkImages(t, dir, a, b)
	if l := temps(t, dir); len(l) != 0 {
		t.Errorf("temporary files left: %v", l)
	}
	if res.Reused <= 0 {
		t.Errorf("the rerun reused %d bytes of what was landed", res.Reused)
	}

	if _, err := restoreAll(t, sh, blocks, opts); !errors.Is(err, ErrExists) {
		t.Fatalf("rerun over a completed restore: %v, want %v", err, ErrExists)
	}
}

// TestWritebackCountsDataWritten checks that what starts a file's
// writeback is the bytes written into it, not the length of its blocks:
// a sparse image writes a page per block.
func TestWritebackCountsDataWritten(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	im := image{"vm/disk.img", sparse(64*testBS, 3)}
	sh, blocks := shipment("20261130T120000Z-00000001", im)
	w, err := Open(context.Background(), sh, Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(false)
	var data int64
	for _, b := range blocks {
		if _, err := w.Need(b.file, b.index, b.d); err != nil {
			t.Fatal(err)
		}
		if err := w.WriteForm(b.file, b.index, b.form, b.d, b.data); err != nil {
			t.Fatal(err)
		}
		data += b.data
	}
	if got := w.files[1].pending.Load(); got != data || data != int64(len(blocks))*archive.PageSize {
		t.Fatalf("%d bytes pending writeback after %d blocks holding %d bytes of data", got, len(blocks), data)
	}
	if _, err := w.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkImages(t, dir, im)
}

// TestUpdateShortBlocksFile updates a restore whose blocks file no longer
// covers its file (cut short by a crash or a full disk, emptied) while
// the file's stamp still matches: the stamp vouches for the file, not for
// a blocks file that does not describe all of it, so the file is read
// again. Trusted, the slots past the end would read as zero blocks, and a
// block that became zero in the new shipment would keep its old data
// under a whole-file digest that checks.
func TestUpdateShortBlocksFile(t *testing.T) {
	for _, tc := range []struct {
		name string
		size func(n int64) int64
	}{
		{"cut short", func(n int64) int64 { return n / 2 }},
		{"empty", func(int64) int64 { return 0 }},
		{"a partial slot", func(n int64) int64 { return n - 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "out")
			a := image{"vm/a.img", sparse(16*testBS, 21)}
			sh, blocks := shipment("20261130T120000Z-00000001", a)
			if _, err := restoreAll(t, sh, blocks, Options{Dir: dir}); err != nil {
				t.Fatal(err)
			}
			bfs, err := filepath.Glob(filepath.Join(dir, namesFor(sh.Files).blocks, "*"))
			if err != nil || len(bfs) != 1 {
				t.Fatalf("blocks files %v: %v", bfs, err)
			}
			fi, err := os.Stat(bfs[0])
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(bfs[0], tc.size(fi.Size())); err != nil {
				t.Fatal(err)
			}
			a2 := image{"vm/a.img", append([]byte(nil), a.data...)}
			clear(a2.data[12*testBS:]) // the last blocks became zero
			sh2, blocks2 := shipment("20261130T120000Z-00000002", a2)
			if _, err := restoreAll(t, sh2, blocks2, Options{Dir: dir, Update: true}); err != nil {
				t.Fatal(err)
			}
			checkImages(t, dir, a2)
		})
	}
}

// TestUpdateRefusesShippedAsideName updates a restore whose shipment holds
// a file at the name an update moves another of its files aside to (as a
// folder where an update was interrupted holds, shipped again): the move
// would replace that file. The update is refused before anything changes.
func TestUpdateRefusesShippedAsideName(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	a := image{"vm/a.img", sparse(8*testBS, 31)}
	aside := image{"vm/.a.img.coldship-update", []byte("a file of the shipment\n")}
	sh, blocks := shipment("20261130T120000Z-00000001", aside, a) // sorted, as a manifest is
	if _, err := restoreAll(t, sh, blocks, Options{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	checkImages(t, dir, a, aside)
	a2 := image{"vm/a.img", append(append([]byte(nil), a.data...), sparse(testBS, 32)...)} // grown
	sh2, blocks2 := shipment("20261130T120000Z-00000002", aside, a2)
	_, err := restoreAll(t, sh2, blocks2, Options{Dir: dir, Update: true})
	if err == nil || !strings.Contains(err.Error(), aside.path) || !strings.Contains(err.Error(), "--out") {
		t.Errorf("update: %v; want a refusal naming %s and saying to use --out", err, aside.path)
	}
	checkImages(t, dir, aside, a)
}

// TestUpdateFileBecomesFolder updates a restore in which a file became a
// folder at the source (and back): the restore's file gives way to the
// folder, and the folder to the file.
func TestUpdateFileBecomesFolder(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	a := image{"vm/a.img", sparse(4*testBS, 41)}
	asFile := image{"vm/nvram", []byte("a file\n")}
	sh, blocks := shipment("20261130T120000Z-00000001", a, asFile)
	if _, err := restoreAll(t, sh, blocks, Options{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	inside := image{"vm/nvram/vars.fd", sparse(testBS, 42)}
	sh2, blocks2 := shipment("20261130T120000Z-00000002", a, inside)
	nvram := sh2.Files[0]
	nvram.Path = "vm/nvram"
	sh2.Files = append(sh2.Files, nvram) // the folder, after the file it holds: indexes stay
	if _, err := restoreAll(t, sh2, blocks2, Options{Dir: dir, Update: true}); err != nil {
		t.Fatalf("a file that became a folder: %v", err)
	}
	checkImages(t, dir, a, inside)
	sh3, blocks3 := shipment("20261130T120000Z-00000003", a, asFile)
	if _, err := restoreAll(t, sh3, blocks3, Options{Dir: dir, Update: true}); err != nil {
		t.Fatalf("a folder that became a file: %v", err)
	}
	checkImages(t, dir, a, asFile)
}

// TestLongFileName restores, then updates, a file whose name is as long
// as a file system allows (255 bytes): its temporary and aside names must
// fit too, or a shipment that send made from it cannot be restored.
func TestLongFileName(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	long := "vm/" + strings.Repeat("L", 251) + ".img"
	other := "vm/" + strings.Repeat("L", 251) + ".raw" // the same first 200 bytes
	a, b := image{long, sparse(4*testBS, 21)}, image{other, sparse(2*testBS, 22)}
	sh, blocks := shipment("20261130T120000Z-00000001", a, b)
	if _, err := restoreAll(t, sh, blocks, Options{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	checkImages(t, dir, a, b)
	a2 := image{long, append([]byte(nil), a.data...)}
	a2.data[testBS] ^= 0x55
	sh2, blocks2 := shipment("20261130T120000Z-00000002", a2, b)
	if _, err := restoreAll(t, sh2, blocks2, Options{Dir: dir, Update: true}); err != nil {
		t.Fatal(err)
	}
	checkImages(t, dir, a2, b)
	if left := temps(t, dir); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
	for _, n := range []string{tempName(path.Base(long), tempSuffix()), asideName(path.Base(long))} {
		if len(n) > 255 || !strings.Contains(n, tempInfix) {
			t.Errorf("temporary name %q: %d bytes", n, len(n))
		}
	}
	if isTempOf(tempName(path.Base(long), tempSuffix()), path.Base(other)) {
		t.Error("a temporary name of one long name is taken for one of another")
	}
}
