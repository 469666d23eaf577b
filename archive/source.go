package archive

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"syscall"

	"golang.org/x/sys/unix"
)

// Source is one file or directory to ship.
type Source struct {
	Path string      // on the local file system
	Name string      // relative, slash-separated name in the shipment
	Info fs.FileInfo // from Lstat when collected (Stat for an argument)
	// UID and GID own the file (numeric, from Info).
	UID, GID uint32
	// Device: a block device, shipped as a raw image of its size.
	Device bool

	// Backing chains (AddBackingChains). Format is the image's format
	// when its header was read (ImageQCOW2, ImageRaw, ...), "" otherwise;
	// set it beforehand when it is known (libvirt's <driver type>) so that
	// a raw disk is never read as the qcow2 its guest may have written.
	Format string
	// Backing is the shipped Name of the source that is this image's
	// backing file, "" if it has none (or chains were not followed);
	// BackingFormat is that file's format.
	Backing, BackingFormat string
	// DataFiles are the shipped Names of the files that this image keeps
	// its data in: a vmdk descriptor's extent files (AddVMDKExtents).
	DataFiles []string
}

// NewSource describes the file at p, whose Stat or Lstat is fi, shipped
// as name.
func NewSource(p, name string, fi fs.FileInfo) Source {
	s := Source{Path: p, Name: name, Info: fi, Device: isBlockDevice(fi.Mode())}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.UID, s.GID = st.Uid, st.Gid
	}
	return s
}

// ManifestBacking is the manifest's record of s's backing layer (its
// shipped name and format), nil when it has none.
func (s Source) ManifestBacking() *Backing {
	if s.Backing == "" {
		return nil
	}
	return &Backing{Path: s.Backing, Format: s.BackingFormat}
}

// ManifestDataFiles is the manifest's record of s's data files, nil when
// it has none.
func (s Source) ManifestDataFiles() []string {
	return append([]string(nil), s.DataFiles...)
}

// CollectSources expands the command line's SOURCE arguments: a file or a
// block device ships under its base name, a directory under its base name
// with everything in it, recursively. Symbolic links given as arguments
// are followed (/dev/VG/LV); inside a directory, anything but regular files
// and directories is refused.
func CollectSources(args []string) ([]Source, error) {
	var out []Source
	seen := map[string]string{}
	add := func(s Source) error {
		if prev, dup := seen[s.Name]; dup {
			return fmt.Errorf("%s and %s would both ship as %q", prev, s.Path, s.Name)
		}
		seen[s.Name] = s.Path
		out = append(out, s)
		return nil
	}
	for _, arg := range args {
		fi, err := os.Stat(arg)
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", arg, err)
		}
		base := filepath.Base(filepath.Clean(arg))
		if base == "/" || base == "." || base == ".." {
			abs, err := filepath.Abs(arg)
			if err != nil {
				return nil, err
			}
			base = filepath.Base(abs)
		}
		if base == "/" {
			return nil, fmt.Errorf("source %s: cannot ship the root directory", arg)
		}
		switch {
		case fi.Mode().IsRegular() || isBlockDevice(fi.Mode()):
			if err := add(NewSource(arg, base, fi)); err != nil {
				return nil, err
			}
		case fi.IsDir():
			// A SOURCE that is a link to a folder is followed, as one to a
			// file or a device is (WalkDir would not enter it); links inside
			// a folder are still refused.
			root := arg
			if lfi, err := os.Lstat(arg); err == nil && lfi.Mode()&fs.ModeSymlink != 0 {
				if root, err = filepath.EvalSymlinks(arg); err != nil {
					return nil, fmt.Errorf("source %s: %w", arg, err)
				}
			}
			err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return fmt.Errorf("source %s: %w", p, err)
				}
				rel, err := filepath.Rel(root, p)
				if err != nil {
					return err
				}
				name := path.Join(base, filepath.ToSlash(rel))
				info, err := d.Info()
				if err != nil {
					return fmt.Errorf("source %s: %w", p, err)
				}
				if !info.Mode().IsRegular() && !info.IsDir() {
					return fmt.Errorf("source %s: %s is not supported (only regular files and directories)", p, typeName(info.Mode()))
				}
				return add(NewSource(p, name, info))
			})
			if err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("source %s: not a regular file, block device or directory", arg)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// typeName names a file's type for a person: "a symbolic link" rather
// than the mode's "L---------".
func typeName(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	}
	return "a file of type " + m.Type().String()
}

// Range is a byte range [Offset, Offset+Length).
type Range struct{ Offset, Length int64 }

// DataRanges returns the ranges of f that hold data, found with SEEK_DATA
// and SEEK_HOLE so that holes are never read. A file system without
// SEEK_DATA reports the whole file as data, and so does a block device,
// which has no holes to seek (its zero blocks are found by reading them).
func DataRanges(f *os.File, size int64) ([]Range, error) {
	if fi, err := f.Stat(); err == nil && isBlockDevice(fi.Mode()) {
		if size == 0 {
			return nil, nil
		}
		return []Range{{0, size}}, nil
	}
	fd := int(f.Fd())
	var out []Range
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, syscall.ENXIO) {
				break // only a hole remains
			}
			if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP) {
				return []Range{{off, size - off}}, nil
			}
			return nil, fmt.Errorf("seek data in %s: %w", f.Name(), err)
		}
		if data >= size {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole in %s: %w", f.Name(), err)
		}
		hole = min(hole, size)
		out = append(out, Range{data, hole - data})
		off = hole
	}
	return out, nil
}

// Overlaps reports whether [off, off+n) intersects any of the sorted ranges,
// starting the search at *cursor and advancing it (blocks are visited in
// order, so the whole scan is linear).
func Overlaps(rs []Range, cursor *int, off, n int64) bool {
	for *cursor < len(rs) && rs[*cursor].Offset+rs[*cursor].Length <= off {
		*cursor++
	}
	return *cursor < len(rs) && rs[*cursor].Offset < off+n
}
