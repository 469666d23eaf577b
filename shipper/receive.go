package shipper

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper/internal/outdir"
)

// ErrExists means an output file exists and --force was not given.
var ErrExists = errors.New("already exists (use --force to overwrite)")

// ReceiveOptions configure Receive.
type ReceiveOptions struct {
	Jobs     int
	Streams  int
	Force    bool
	Counters *Counters
	Dest     string                        // names the destination in the restore marker
	Log      func(format string, a ...any) // notices; may be nil
}

// ReceiveResult lists the restored files, relative to the output directory.
type ReceiveResult struct {
	Files   []string // every file and directory, as restored on disk
	Written int64    // bytes written (receive --into: only the blocks that differed)
}

type outFile struct {
	f     *os.File
	tmp   string
	final string
}

// Receive restores the shipment into dir. Every file is written to a
// temporary file next to its final path, with holes for holes and zero
// blocks, synced and checked against its whole-file digest; only when every
// file of the shipment checks out are they renamed into place. On any
// failure, nothing is left at a final name.
func (sh *Shipment) Receive(ctx context.Context, dir string, opts ReceiveOptions) (res *ReceiveResult, err error) {
	m := sh.Manifest
	if opts.Counters == nil {
		opts.Counters = new(Counters)
	}
	if opts.Jobs <= 0 {
		opts.Jobs = runtime.NumCPU()
	}
	cnt := opts.Counters
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	// Check every final path before creating anything.
	for _, f := range m.Files {
		final := filepath.Join(dir, filepath.FromSlash(f.Path))
		fi, err := os.Lstat(final)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("output %s: %w", final, err)
		case f.Type == archive.TypeDir && fi.IsDir():
		case f.Type == archive.TypeFile && fi.Mode().IsRegular() && opts.Force:
		case f.Type == archive.TypeFile && fi.Mode().IsRegular():
			return nil, fmt.Errorf("output %s: %w", final, ErrExists)
		default:
			return nil, fmt.Errorf("output %s: exists and is not a %s", final, f.Type)
		}
		cnt.Total.Add(f.Size)
	}

	var createdDirs []string
	outs := make([]*outFile, len(m.Files))
	defer func() {
		if err == nil {
			return
		}
		for _, o := range outs {
			if o != nil {
				o.f.Close()
				os.Remove(o.tmp)
			}
		}
		for i := len(createdDirs) - 1; i >= 0; i-- {
			os.Remove(createdDirs[i]) // only if empty
		}
	}()
	mkdirs := func(p string) error { return outdir.Mkdirs(p, &createdDirs) }
	if err := mkdirs(dir); err != nil {
		return nil, err
	}
	for i, f := range m.Files {
		final := filepath.Join(dir, filepath.FromSlash(f.Path))
		if f.Type == archive.TypeDir {
			if err := mkdirs(final); err != nil {
				return nil, err
			}
			continue
		}
		if err := mkdirs(filepath.Dir(final)); err != nil {
			return nil, err
		}
		var rnd [6]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return nil, err
		}
		tmp := filepath.Join(filepath.Dir(final), "."+filepath.Base(final)+".coldship-"+hex.EncodeToString(rnd[:]))
		fh, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, fmt.Errorf("create %s: %w", tmp, err)
		}
		outs[i] = &outFile{f: fh, tmp: tmp, final: final}
		if err := fh.Truncate(f.Size); err != nil {
			return nil, fmt.Errorf("size %s: %w", tmp, err)
		}
		// Holes and zero blocks are never written: the file stays sparse.
		for _, e := range f.Extents {
			if e.Kind != archive.KindData {
				cnt.Done.Add(e.Length)
			}
		}
	}

	// Every block's plaintext digest is checked as it is opened, before
	// it is written; the digests then make the whole-file digest. Holes
	// and zero blocks are known. Writes to one file are serialized: the
	// kernel takes the file's lock for each buffered write anyway, and a
	// worker waiting here can open the next block meanwhile instead of
	// spinning on that lock.
	digests := make([][]archive.Digest, len(m.Files))
	locks := make([]sync.Mutex, len(m.Files))
	for i := range m.Files {
		if outs[i] == nil {
			continue
		}
		f := &m.Files[i]
		digests[i] = make([]archive.Digest, m.NumBlocks(f.Size))
		for b := range digests[i] {
			digests[i][b] = archive.ZeroDigest(archive.BlockLen(f.Size, m.BlockSize, int64(b)))
		}
	}
	err = sh.fetchBlocks(ctx, fetch{streams: opts.Streams, jobs: opts.Jobs, cnt: cnt}, func(p placed, plain []byte) error {
		o := outs[p.file]
		off := p.block.Index * m.BlockSize
		locks[p.file].Lock()
		_, err := o.f.WriteAt(plain, off)
		locks[p.file].Unlock()
		if err != nil {
			return fmt.Errorf("write %s: %w", o.tmp, err)
		}
		// Start writeback now, so that the fsync before the rename finds
		// little left to write (best effort: not every file system has it).
		unix.SyncFileRange(int(o.f.Fd()), off, int64(len(plain)), unix.SYNC_FILE_RANGE_WRITE)
		digests[p.file][p.block.Index] = p.block.BLAKE3
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := sh.checkRestored(ctx, outs, digests, opts.Jobs); err != nil {
		return nil, err
	}

	res = &ReceiveResult{}
	for i, f := range m.Files {
		final := filepath.Join(dir, filepath.FromSlash(f.Path))
		res.Files = append(res.Files, final)
		if o := outs[i]; o != nil {
			if err := o.f.Chmod(f.Mode); err != nil {
				return nil, fmt.Errorf("chmod %s: %w", o.tmp, err)
			}
			if err := o.f.Close(); err != nil {
				return nil, fmt.Errorf("close %s: %w", o.tmp, err)
			}
			if err := os.Chtimes(o.tmp, time.Now(), f.MTime); err != nil {
				return nil, fmt.Errorf("set mtime of %s: %w", o.tmp, err)
			}
		}
	}
	// Everything checked: rename into place, then sync the directories.
	dirs := map[string]bool{}
	for i := range m.Files {
		o := outs[i]
		if o == nil {
			continue
		}
		if err := os.Rename(o.tmp, o.final); err != nil {
			return nil, fmt.Errorf("rename %s: %w", o.final, err)
		}
		outs[i] = nil
		dirs[filepath.Dir(o.final)] = true
	}
	// Directory modes last, deepest first, so a read-only directory does
	// not stop its own files from landing.
	for i := len(m.Files) - 1; i >= 0; i-- {
		f := m.Files[i]
		if f.Type == archive.TypeDir {
			p := filepath.Join(dir, filepath.FromSlash(f.Path))
			os.Chmod(p, f.Mode)
			os.Chtimes(p, time.Now(), f.MTime)
		}
	}
	names := make([]string, 0, len(dirs))
	for d := range dirs {
		names = append(names, d)
	}
	sort.Strings(names)
	for _, d := range names {
		syncDir(d)
	}
	res.Written = cnt.Data.Load()
	sh.markRestored(dir, opts)
	return res, nil
}

// markRestored writes the restore marker that lets `receive --into` update
// dir later, and removes what an interrupted update there left aside. A
// failure only costs the next update its shortcut, so it is a notice.
func (sh *Shipment) markRestored(dir string, opts ReceiveOptions) {
	path := markerPath(dir, sh.Manifest.Files)
	old, _ := loadMarker(path)
	mk, err := sh.doneMarker(dir, opts.Dest)
	if err == nil {
		err = mk.save(path)
	}
	if err != nil && opts.Log != nil {
		opts.Log("warning: %v (receive --into cannot update this restore; receive --out again instead)", err)
	}
	if old != nil && old.State == markerUpdating {
		for _, f := range old.Files {
			if f.Temp != "" {
				os.Remove(filepath.Join(dir, filepath.FromSlash(f.Temp)))
			}
		}
	}
}

// checkRestored syncs every temporary file and checks its whole-file
// digest, made of the digests of its blocks as opened.
func (sh *Shipment) checkRestored(ctx context.Context, outs []*outFile, digests [][]archive.Digest, jobs int) error {
	m := sh.Manifest
	// In parallel: the disk sees them all at once.
	g, _ := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	for _, o := range outs {
		if o == nil {
			continue
		}
		g.Go(func() error {
			if err := o.f.Sync(); err != nil {
				return fmt.Errorf("sync %s: %w", o.tmp, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i := range m.Files {
		f := &m.Files[i]
		if outs[i] != nil && archive.FileDigest(f.Size, m.BlockSize, digests[i]) != f.BLAKE3 {
			return fmt.Errorf("%s: whole-file digest does not match the manifest: %w", f.Path, archive.ErrIntegrity)
		}
	}
	return nil
}

// Verify authenticates every block of the shipment and checks every file
// digest, writing nothing.
func (sh *Shipment) Verify(ctx context.Context, streams, jobs int, cnt *Counters) error {
	m := sh.Manifest
	if cnt == nil {
		cnt = new(Counters)
	}
	for _, f := range m.Files {
		cnt.Total.Add(f.Size)
		for _, e := range f.Extents {
			if e.Kind != archive.KindData {
				cnt.Done.Add(e.Length)
			}
		}
	}
	// The plaintext digests were checked block by block as they were
	// opened; the whole-file digest then ties the blocks to the file.
	if err := sh.fetchBlocks(ctx, fetch{streams: streams, jobs: jobs, hashSegments: true, cnt: cnt}, func(placed, []byte) error { return nil }); err != nil {
		return err
	}
	for _, f := range m.Files {
		if f.Type != archive.TypeFile {
			continue
		}
		nb := m.NumBlocks(f.Size)
		digests := make([]archive.Digest, nb)
		for b := range nb {
			digests[b] = archive.ZeroDigest(archive.BlockLen(f.Size, m.BlockSize, b))
		}
		for _, b := range f.Blocks {
			digests[b.Index] = b.BLAKE3
		}
		if archive.FileDigest(f.Size, m.BlockSize, digests) != f.BLAKE3 {
			return fmt.Errorf("%s: whole-file digest does not match its blocks: %w", f.Path, archive.ErrIntegrity)
		}
	}
	return nil
}
