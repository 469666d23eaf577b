package archive

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strconv"
	"strings"
)

// A vmdk made of a descriptor file (monolithicFlat, twoGbMaxExtentFlat,
// twoGbMaxExtentSparse, VMware's split disks) is a small text file that
// names, on its extent lines, the files that hold the disk's data:
//
//	RW 131072 FLAT "disk-flat.vmdk" 0
//	RW 4192256 SPARSE "disk-s001.vmdk"
//	RW 2048 ZERO
//
// Shipped alone, the descriptor restores as a disk with nothing in it, so
// a send ships its extent files with it, under the names the descriptor
// gives them relative to its own folder: the restored descriptor finds
// them there as it did at the source.

// VMDKExtent is one extent line of a vmdk descriptor.
type VMDKExtent struct {
	Access  string // RW, RDONLY or NOACCESS
	Sectors int64
	Type    string // FLAT, SPARSE, ZERO, VMFS, VMFSSPARSE, ...
	File    string // as the descriptor names it; "" for a ZERO extent
}

// vmdkMaxExtentName is QEMU's limit on an extent's file name (its
// descriptor parser reads at most 511 bytes of it).
const vmdkMaxExtentName = 511

// ParseVMDKExtents returns the extents that the text of a vmdk descriptor
// lists. A line that starts with an access mode (RW, RDONLY, NOACCESS) is
// an extent line, and one that does not parse is an error quoting it:
// reading fewer extents than QEMU would ship an image that cannot be
// restored. Every other line is ignored, as QEMU ignores it.
func ParseVMDKExtents(b []byte) ([]VMDKExtent, error) {
	var out []VMDKExtent
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		access, rest := nextField(line)
		switch access {
		case "RW", "RDONLY", "NOACCESS":
		default:
			continue
		}
		e, err := parseVMDKExtent(access, rest)
		if err != nil {
			if len(line) > 80 {
				line = line[:80] + "..."
			}
			return nil, fmt.Errorf("vmdk descriptor line %d %q: %w", n+1, line, err)
		}
		out = append(out, e)
	}
	return out, nil
}

// parseVMDKExtent parses what follows the access mode of an extent line:
// sectors, type, and, but for a ZERO extent, a quoted file name and (for
// a flat extent) an offset.
func parseVMDKExtent(access, rest string) (VMDKExtent, error) {
	e := VMDKExtent{Access: access}
	sectors, rest := nextField(rest)
	e.Type, rest = nextField(rest)
	if e.Type == "" {
		return e, errors.New("an extent line needs a size and a type")
	}
	var err error
	if e.Sectors, err = strconv.ParseInt(sectors, 10, 64); err != nil || e.Sectors <= 0 {
		return e, fmt.Errorf("extent size %q is not a number of sectors", sectors)
	}
	if e.Type == "ZERO" {
		return e, nil
	}
	if !strings.HasPrefix(rest, `"`) {
		return e, errors.New("no quoted extent file name")
	}
	name, tail, ok := strings.Cut(rest[1:], `"`)
	switch {
	case !ok:
		return e, errors.New("the extent file name has no closing quote")
	case name == "":
		return e, errors.New("empty extent file name")
	case len(name) > vmdkMaxExtentName:
		return e, fmt.Errorf("extent file name of %d bytes (at most %d)", len(name), vmdkMaxExtentName)
	}
	if tail = strings.TrimSpace(tail); tail != "" {
		if off, err := strconv.ParseInt(tail, 10, 64); err != nil || off < 0 {
			return e, fmt.Errorf("extent offset %q is not a number of sectors", tail)
		}
	}
	e.File = name
	return e, nil
}

// nextField returns the first space-separated field of s and what
// follows it, leading spaces trimmed.
func nextField(s string) (field, rest string) {
	s = strings.TrimLeft(s, " \t")
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.TrimLeft(s[i:], " \t")
}

// VMDKExtentFile is a file that a vmdk descriptor keeps its data in.
type VMDKExtentFile struct {
	Name string      // as the descriptor names it, cleaned: relative to the descriptor's folder
	Path string      // as QEMU opens it: Name joined to the descriptor's folder as it was named
	Flat bool        // a flat extent: raw data, never read as an image
	Info fs.FileInfo // Stat of Path
}

// VMDKExtentFiles returns the extent files of the image at p if it is a
// vmdk descriptor file, nil if it is any other image (a monolithicSparse
// or streamOptimized vmdk is its own extent). It fails, naming the
// descriptor, for a descriptor larger than 1 MiB or whose extent lines do
// not parse, one that names no extent file, an extent name that is
// absolute, not a local file (nbd:, json:) or leads out of the
// descriptor's folder (".."), and an extent file that is missing,
// unreadable, or neither a regular file nor a block device.
func VMDKExtentFiles(p string) ([]VMDKExtentFile, error) {
	b, err := readVMDKDescriptor(p)
	if err != nil || b == nil {
		return nil, err
	}
	extents, err := ParseVMDKExtents(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	var out []VMDKExtentFile
	for _, e := range extents {
		if e.File == "" {
			continue
		}
		name, err := vmdkExtentName(e.File)
		if err != nil {
			return nil, fmt.Errorf("%s: extent %q: %w", p, e.File, err)
		}
		xp := name
		if dir := path.Dir(p); dir != "." {
			xp = strings.TrimSuffix(dir, "/") + "/" + name
		}
		l, _, err := openLayer(xp, ImageRaw) // opened and checked, never read
		if err != nil {
			return nil, fmt.Errorf("%s: extent file %s (named %q): %w", p, xp, e.File, err)
		}
		out = append(out, VMDKExtentFile{Name: name, Path: xp, Flat: e.Type == "FLAT" || e.Type == "VMFS", Info: l.Info})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: vmdk descriptor names no extent file", p)
	}
	return out, nil
}

// readVMDKDescriptor returns the text of the vmdk descriptor file at p,
// nil if p is not one.
func readVMDKDescriptor(p string) ([]byte, error) {
	f, err := openHeaderOf(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	img, err := ImageInfo(f)
	if err != nil || img.Format != ImageVMDK || !img.Descriptor {
		return nil, err
	}
	b, err := io.ReadAll(io.NewSectionReader(f, 0, vmdkMaxDescriptor+1))
	if err != nil {
		return nil, fmt.Errorf("read vmdk descriptor %s: %w", p, err)
	}
	if len(b) > vmdkMaxDescriptor {
		return nil, fmt.Errorf("%s: vmdk descriptor file larger than %d bytes: flatten it (qemu-img convert -O qcow2)", p, vmdkMaxDescriptor)
	}
	return b, nil
}

// vmdkExtentName checks an extent's file name as its descriptor records
// it and returns it cleaned. The shipment keeps it relative to the
// descriptor, so that the restored descriptor finds it wherever it lands:
// an absolute name, or one that leaves the descriptor's folder, would name
// a place at the destination that coldship does not write.
func vmdkExtentName(name string) (string, error) {
	const flatten = "flatten the disk (qemu-img convert -O qcow2) or point the descriptor at a file beside it"
	if strings.HasPrefix(name, "json:") {
		return "", fmt.Errorf("a json: specification, not a file: %s", flatten)
	}
	if i := strings.IndexAny(name, ":/"); i >= 0 && name[i] == ':' {
		return "", fmt.Errorf("not a local file (protocol %s:): %s", name[:i], flatten)
	}
	if path.IsAbs(name) {
		return "", fmt.Errorf("an absolute name, which would not be found at the destination: %s", flatten)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("leads out of the descriptor's folder: %s", flatten)
		}
	}
	clean := path.Clean(name)
	if clean == "." || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("not a file name: %s", flatten)
	}
	return clean, nil
}

// AddVMDKExtents returns sources with the extent files of every vmdk
// descriptor among them added, and each descriptor's DataFiles set. An
// extent ships under the name its descriptor gives it, relative to the
// descriptor's shipped folder; an extent that is a source already (the
// descriptor's folder is shipped) must be shipped under that name. An
// extent is never read as an image of its own: a flat extent holds what
// the guest wrote, which may look like any header.
//
// A descriptor whose extents cannot be shipped so that the restored
// descriptor finds them is an error naming it, returned before anything
// is shipped (see VMDKExtentFiles).
func AddVMDKExtents(sources []Source) ([]Source, error) {
	out := append([]Source(nil), sources...)
	names := map[string]int{}
	for i, s := range out {
		names[s.Name] = i
	}
	extent := dataFileNames(out)
	// Every descriptor's extents first: a source that is the extent of
	// another is not read as a descriptor, whatever it holds.
	files := make([][]VMDKExtentFile, len(sources))
	errs := make([]error, len(sources))
	for i, s := range sources {
		if s.Info.IsDir() || s.Format == ImageRaw || s.DataFiles != nil || extent[s.Name] {
			continue
		}
		files[i], errs[i] = VMDKExtentFiles(s.Path)
		for _, x := range files[i] {
			if name := path.Join(path.Dir(s.Name), x.Name); name != s.Name {
				extent[name] = true
			}
		}
	}
	owner := map[string]int{} // the descriptor of each extent: a receiver refuses one listed twice
	for i, s := range out {
		for _, d := range s.DataFiles {
			owner[d] = i
		}
	}
	for i := range sources {
		if extent[out[i].Name] {
			continue
		}
		if errs[i] != nil {
			return nil, errs[i]
		}
		for _, x := range files[i] {
			j, err := extentSource(&out, names, i, x)
			if err != nil {
				return nil, err
			}
			if out[j].DataFiles != nil {
				return nil, fmt.Errorf("%s: its extent %s is a vmdk descriptor itself", out[i].Path, x.Path)
			}
			if k, ok := owner[out[j].Name]; ok && k != i {
				return nil, fmt.Errorf("%s: its extent %s is also an extent of %s: a file holds the data of one disk", out[i].Path, x.Path, out[k].Path)
			}
			if x.Flat {
				out[j].Format = ImageRaw
			}
			if _, ok := owner[out[j].Name]; !ok {
				owner[out[j].Name] = i
				out[i].DataFiles = append(out[i].DataFiles, out[j].Name)
			}
		}
		if files[i] != nil {
			out[i].Format = ImageVMDK
		}
	}
	return out, nil
}

// extentSource returns the index in *out of the source that ships the
// extent x of the descriptor (*out)[i], added if it is not there.
func extentSource(out *[]Source, names map[string]int, i int, x VMDKExtentFile) (int, error) {
	d := (*out)[i]
	name := path.Join(path.Dir(d.Name), x.Name)
	if j, ok := names[name]; ok {
		if j == i {
			return 0, fmt.Errorf("%s: names itself as an extent file", d.Path)
		}
		if o := (*out)[j]; o.Info.IsDir() || !SameImage(o.Info, x.Info) {
			return 0, fmt.Errorf("%s: its extent %s would ship as %s, which is %s", d.Path, x.Path, name, o.Path)
		}
		return j, nil
	}
	for _, o := range *out {
		if !o.Info.IsDir() && SameImage(o.Info, x.Info) {
			return 0, fmt.Errorf("%s: its extent %s ships as %s, but the descriptor names it %q: ship the folder that holds both",
				d.Path, x.Path, o.Name, x.Name)
		}
	}
	if strings.Contains(x.Name, "/") {
		return 0, fmt.Errorf("%s: its extent %s lies in a subfolder (%q): ship the folder that holds both", d.Path, x.Path, x.Name)
	}
	names[name] = len(*out)
	*out = append(*out, NewSource(x.Path, name, x.Info))
	return len(*out) - 1, nil
}

// dataFileNames returns the names of every data file of srcs.
func dataFileNames(srcs []Source) map[string]bool {
	m := map[string]bool{}
	for _, s := range srcs {
		for _, d := range s.DataFiles {
			m[d] = true
		}
	}
	return m
}
