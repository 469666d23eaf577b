package shipper

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/archive"
)

// ErrNoRestore means receive --into was given a directory that holds no
// restore by coldship of the shipment's files.
var ErrNoRestore = errors.New("holds no restore of these files made by coldship receive (receive with --out first)")

// intoFile is the plan for one regular file of the shipment.
type intoFile struct {
	f     *archive.File
	final string // absolute path
	temp  string // relative to the directory: where the file is while rewritten
	loc   string // absolute path of the current content, "" if none
	known []archive.Digest
	write []bool // per block: fetch and write
	zero  []bool // per block: make zero (punch a hole)
	touch bool   // rewritten: moved aside, written, checked, moved back
	h     *os.File
}

// ReceiveInto updates dir, which holds an earlier restore by Receive or
// ReceiveInto, to this shipment in place: it writes only the blocks whose
// digest differs from what the files hold, then checks every rewritten
// file's whole-file digest (reading back every block it wrote; the other
// blocks are those the restore marker vouches for, or that were just read
// and hashed), and only then moves the files back under their final names.
// Files being rewritten stay under hidden names until then, and the marker
// says "updating": an interrupted update is never taken for a good restore,
// and running ReceiveInto again completes it.
func (sh *Shipment) ReceiveInto(ctx context.Context, dir string, opts ReceiveOptions) (*ReceiveResult, error) {
	m := sh.Manifest
	if opts.Counters == nil {
		opts.Counters = new(Counters)
	}
	if opts.Jobs <= 0 {
		opts.Jobs = runtime.NumCPU()
	}
	if opts.Log == nil {
		opts.Log = func(string, ...any) {}
	}
	cnt := opts.Counters
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	mpath := markerPath(dir, m.Files)
	mk, err := loadMarker(mpath)
	if errors.Is(err, errNoMarker) {
		return nil, fmt.Errorf("%s %w", dir, ErrNoRestore)
	}
	if err != nil {
		return nil, err
	}
	from := mk.Shipment
	if mk.State == markerUpdating {
		from = mk.From
		opts.Log("%s holds an interrupted update from %s to %s: completing it as an update to %s", dir, mk.From, mk.Shipment, sh.Header.ID)
	}
	old := map[string]*markerFile{}
	for i := range mk.Files {
		old[mk.Files[i].Path] = &mk.Files[i]
	}

	// Plan: what each file holds now, and what must change.
	plans := make([]*intoFile, len(m.Files))
	inNew := map[string]bool{}
	for fi := range m.Files {
		f := &m.Files[fi]
		inNew[f.Path] = true
		final := filepath.Join(dir, filepath.FromSlash(f.Path))
		fsi, err := os.Lstat(final)
		exists := err == nil
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("output %s: %w", final, err)
		}
		if f.Type == archive.TypeDir {
			if exists && !fsi.IsDir() {
				return nil, fmt.Errorf("output %s: exists and is not a directory", final)
			}
			continue
		}
		if exists && !fsi.Mode().IsRegular() {
			return nil, fmt.Errorf("output %s: exists and is not a file", final)
		}
		cnt.Total.Add(f.Size)
		p := &intoFile{f: f, final: final, temp: path.Join(path.Dir(f.Path), "."+path.Base(f.Path)+".coldship-update")}
		plans[fi] = p
		of := old[f.Path]
		if of != nil && of.Type != archive.TypeFile {
			of = nil
		}
		switch {
		case of != nil && of.Temp != "" && fileExists(filepath.Join(dir, filepath.FromSlash(of.Temp))):
			p.loc, p.temp = filepath.Join(dir, filepath.FromSlash(of.Temp)), of.Temp
		case exists && of == nil && !opts.Force:
			return nil, fmt.Errorf("output %s: %w (it is not part of the restore of %s)", final, ErrExists, from)
		case exists:
			p.loc = final
		}
		if err := p.plan(ctx, m, of, mk, opts); err != nil {
			return nil, err
		}
	}

	// Record the update before anything is changed.
	upd := &restoreMarker{Format: 1, State: markerUpdating, Shipment: sh.Header.ID, From: from, Dest: opts.Dest,
		BlockSize: mk.BlockSize, Files: append([]markerFile(nil), mk.Files...)}
	var written, zeroed int64
	for _, p := range plans {
		if p == nil || !p.touch {
			continue
		}
		i := 0
		for i < len(upd.Files) && upd.Files[i].Path != p.f.Path {
			i++
		}
		if i == len(upd.Files) {
			upd.Files = append(upd.Files, markerFile{Path: p.f.Path, Type: archive.TypeFile})
		}
		// No stamp: a resumed update reads the file again.
		upd.Files[i].Temp, upd.Files[i].Stamp = p.temp, nil
	}
	if err := upd.save(mpath); err != nil {
		return nil, err
	}

	// Move aside, size and write.
	defer func() {
		for _, p := range plans {
			if p != nil && p.h != nil {
				p.h.Close()
			}
		}
	}()
	for _, f := range m.Files {
		if f.Type == archive.TypeDir {
			if err := os.MkdirAll(filepath.Join(dir, filepath.FromSlash(f.Path)), 0o755); err != nil {
				return nil, err
			}
		}
	}
	for _, p := range plans {
		if p == nil || !p.touch {
			continue
		}
		tmp := filepath.Join(dir, filepath.FromSlash(p.temp))
		if err := os.MkdirAll(filepath.Dir(tmp), 0o755); err != nil {
			return nil, err
		}
		switch p.loc {
		case tmp:
		case "":
			if err := os.WriteFile(tmp, nil, 0o600); err != nil {
				return nil, err
			}
		default:
			if err := os.Rename(p.loc, tmp); err != nil {
				return nil, fmt.Errorf("move %s aside: %w", p.loc, err)
			}
		}
		h, err := os.OpenFile(tmp, os.O_RDWR, 0)
		if err != nil {
			return nil, err
		}
		p.h = h
		if err := h.Truncate(p.f.Size); err != nil {
			return nil, fmt.Errorf("size %s: %w", tmp, err)
		}
		for i, z := range p.zero {
			if z {
				off := int64(i) * m.BlockSize
				n := archive.BlockLen(p.f.Size, m.BlockSize, int64(i))
				if err := punchHole(h, off, n); err != nil {
					return nil, fmt.Errorf("zero %s at %d: %w", tmp, off, err)
				}
				zeroed += n
				cnt.Done.Add(n)
			}
		}
	}
	err = sh.fetchBlocks(ctx, fetch{streams: opts.Streams, jobs: opts.Jobs, cnt: cnt,
		want: func(fi int, b *archive.Block) bool { return plans[fi] != nil && plans[fi].write[b.Index] }},
		func(pl placed, plain []byte) error {
			p := plans[pl.file]
			if _, err := p.h.WriteAt(plain, pl.block.Index*m.BlockSize); err != nil {
				return fmt.Errorf("write %s: %w", p.h.Name(), err)
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	written = cnt.Data.Load()

	// Check every rewritten file before any goes back under its name.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Jobs)
	for _, p := range plans {
		if p == nil || !p.touch {
			continue
		}
		g.Go(func() error { return p.check(gctx, m) })
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	// Commit: modes and times, back under the final names, then what the
	// shipment no longer has.
	res := &ReceiveResult{Written: written + zeroed}
	dirs := map[string]bool{dir: true}
	for fi := range m.Files {
		f := &m.Files[fi]
		final := filepath.Join(dir, filepath.FromSlash(f.Path))
		res.Files = append(res.Files, final)
		p := plans[fi]
		if p == nil {
			continue
		}
		target := final
		if p.touch {
			target = p.h.Name()
		}
		if err := os.Chmod(target, f.Mode); err != nil {
			return nil, fmt.Errorf("chmod %s: %w", target, err)
		}
		if err := os.Chtimes(target, time.Now(), f.MTime); err != nil {
			return nil, fmt.Errorf("set mtime of %s: %w", target, err)
		}
		if p.touch {
			p.h.Close()
			p.h = nil
			if err := os.Rename(target, final); err != nil {
				return nil, fmt.Errorf("rename %s: %w", final, err)
			}
			dirs[filepath.Dir(final)] = true
		}
	}
	for _, of := range mk.Files {
		if inNew[of.Path] || of.Type != archive.TypeFile {
			continue
		}
		os.Remove(filepath.Join(dir, filepath.FromSlash(of.Path)))
		if of.Temp != "" {
			os.Remove(filepath.Join(dir, filepath.FromSlash(of.Temp)))
		}
	}
	for i := len(mk.Files) - 1; i >= 0; i-- {
		if of := mk.Files[i]; !inNew[of.Path] && of.Type == archive.TypeDir {
			os.Remove(filepath.Join(dir, filepath.FromSlash(of.Path))) // only if empty
		}
	}
	for i := len(m.Files) - 1; i >= 0; i-- {
		if f := m.Files[i]; f.Type == archive.TypeDir {
			p := filepath.Join(dir, filepath.FromSlash(f.Path))
			os.Chmod(p, f.Mode)
			os.Chtimes(p, time.Now(), f.MTime)
		}
	}
	for d := range dirs {
		syncDir(d)
	}
	done, err := sh.doneMarker(dir, opts.Dest)
	if err != nil {
		return nil, err
	}
	if err := done.save(mpath); err != nil {
		return nil, err
	}
	return res, nil
}

func fileExists(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.Mode().IsRegular()
}

// plan works out what the file holds now (from the marker while the
// file's stamp vouches for it, else by reading it) and which blocks must
// be written or zeroed.
func (p *intoFile) plan(ctx context.Context, m *archive.Manifest, of *markerFile, mk *restoreMarker, opts ReceiveOptions) error {
	bs := m.BlockSize
	f := p.f
	nb := m.NumBlocks(f.Size)
	want := fileDigests(m, f)
	p.known = make([]archive.Digest, nb)
	p.write = make([]bool, nb)
	p.zero = make([]bool, nb)
	var cur []archive.Digest
	var curSize int64
	if p.loc != "" {
		st, err := stampOf(p.loc)
		if err != nil {
			return fmt.Errorf("output %s: %w", p.loc, err)
		}
		curSize = st.Size
		if of != nil && of.Stamp != nil && *of.Stamp == *st && mk.BlockSize == bs && of.Size == st.Size &&
			int64(len(of.Digests)) == 32*((of.Size+bs-1)/bs) {
			cur = unpackDigests(of.Digests)
		} else {
			if of != nil && mk.State == markerDone {
				opts.Log("%s changed since it was restored: reading it to find the blocks that differ", p.final)
			}
			var err error
			if cur, err = hashFile(ctx, p.loc, curSize, bs, opts.Jobs, opts.Counters); err != nil {
				return err
			}
		}
	}
	p.touch = p.loc == "" || p.loc != p.final || curSize != f.Size
	for i := range nb {
		n := archive.BlockLen(f.Size, bs, i)
		off := i * bs
		var have archive.Digest
		ok := true
		switch {
		case p.loc == "" || off >= curSize:
			have = archive.ZeroDigest(n) // a new file, or past the old end: zeros once sized
		case archive.BlockLen(curSize, bs, i) == n:
			have = cur[i]
		default:
			ok = false // the old last block, or the new one: its length changes
		}
		p.known[i] = have
		if ok && have == want[i] {
			opts.Counters.Done.Add(n)
			continue
		}
		p.touch = true
		if want[i] == archive.ZeroDigest(n) {
			p.zero[i] = true
		} else {
			p.write[i] = true
		}
	}
	return nil
}

// check syncs a rewritten file and checks its whole-file digest: every
// block written or zeroed is read back; the others are known.
func (p *intoFile) check(ctx context.Context, m *archive.Manifest) error {
	if err := p.h.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", p.h.Name(), err)
	}
	d := append([]archive.Digest(nil), p.known...)
	buf := make([]byte, m.BlockSize)
	for i := range d {
		if !p.write[i] && !p.zero[i] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		n := archive.BlockLen(p.f.Size, m.BlockSize, int64(i))
		if _, err := p.h.ReadAt(buf[:n], int64(i)*m.BlockSize); err != nil {
			return fmt.Errorf("read back %s: %w", p.h.Name(), err)
		}
		d[i] = archive.BlockDigest(buf[:n])
	}
	if archive.FileDigest(p.f.Size, m.BlockSize, d) != p.f.BLAKE3 {
		return fmt.Errorf("%s: whole-file digest does not match the manifest after the update (it stays aside as %s): %w",
			p.f.Path, p.temp, archive.ErrIntegrity)
	}
	return nil
}

// hashFile reads a file and returns the digest of each of its blocks;
// holes are not read.
func hashFile(ctx context.Context, name string, size, bs int64, jobs int, cnt *Counters) ([]archive.Digest, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ranges, err := archive.DataRanges(f, size)
	if err != nil {
		return nil, err
	}
	nb := (size + bs - 1) / bs
	d := make([]archive.Digest, nb)
	g, gctx := errgroup.WithContext(ctx)
	idx := make(chan int64)
	g.Go(func() error {
		defer close(idx)
		cursor := 0
		for i := range nb {
			n := archive.BlockLen(size, bs, i)
			if !archive.Overlaps(ranges, &cursor, i*bs, n) {
				d[i] = archive.ZeroDigest(n)
				continue
			}
			select {
			case idx <- i:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for range jobs {
		g.Go(func() error {
			buf := make([]byte, bs)
			for i := range idx {
				n := archive.BlockLen(size, bs, i)
				if _, err := f.ReadAt(buf[:n], i*bs); err != nil {
					return fmt.Errorf("read %s: %w", name, err)
				}
				d[i] = archive.BlockDigest(buf[:n])
				cnt.Read.Add(n)
			}
			return nil
		})
	}
	return d, g.Wait()
}

// punchHole zeroes n bytes at off, deallocating them where the file
// system can, so that an updated image stays as sparse as a fresh restore.
func punchHole(f *os.File, off, n int64) error {
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		_, err = f.WriteAt(make([]byte, n), off)
	}
	return err
}
