package archive

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Layer is one image of a backing chain.
type Layer struct {
	Path   string // as QEMU opens it: relative names joined to the directory of the image naming them
	Format string // ImageQCOW2, ImageRaw or ImageVMDK
	// Backing and BackingFormat are this layer's backing file name and
	// format as its header records them ("" for the last layer; a format
	// "" with a backing file: the next layer's format was probed).
	Backing, BackingFormat string
	Info                   fs.FileInfo // Stat of Path
}

// maxChainDepth bounds a chain: far more layers than any real snapshot
// series, far fewer than what a hostile header could make a reader follow.
const maxChainDepth = 256

// BackingChain returns the chain of images that the image at path reads
// through, path first and its last backing file last, following the
// backing file names in the headers as QEMU does: a relative name is
// relative to the directory of the image that names it (as that image was
// named, symbolic links not resolved); an absolute one is used as it is.
// format is the image's format if known ("" probes it by its header, as
// qemu-img does without -f); a backing file's format is the one its
// overlay's header records, or probed when it records none.
//
// It fails, naming the file, for a backing file that is missing,
// unreadable or neither a regular file nor a block device; for a backing
// name that is not a local path (json: specifications, protocols such as
// nbd: or http:); for a loop; for a vmdk with a parent; and for a backing
// format it cannot read.
func BackingChain(p, format string) ([]Layer, error) {
	var chain []Layer
	var named string // how the previous layer names this one, for errors
	for {
		if len(chain) == maxChainDepth {
			return nil, fmt.Errorf("backing chain of %s: more than %d layers", chain[0].Path, maxChainDepth)
		}
		l, img, err := openLayer(p, format)
		if err != nil {
			if len(chain) == 0 {
				return nil, err
			}
			prev := chain[len(chain)-1]
			return nil, fmt.Errorf("backing file %s of %s (named %q): %w", p, prev.Path, named, err)
		}
		for _, c := range chain {
			if os.SameFile(c.Info, l.Info) {
				return nil, fmt.Errorf("backing chain of %s loops: %s names %s, which is already in the chain",
					chain[0].Path, chain[len(chain)-1].Path, p)
			}
		}
		chain = append(chain, l)
		if img.Format == ImageVMDK && img.HasBacking {
			hint := ""
			if img.Backing != "" {
				hint = fmt.Sprintf(" (parent %q)", img.Backing)
			}
			return nil, fmt.Errorf("%s is a vmdk child disk%s: vmdk backing chains are not supported: ship with --no-backing-chain after flattening (qemu-img convert)", l.Path, hint)
		}
		if (img.Format == ImageQCOW || img.Format == ImageQED) && img.HasBacking {
			return nil, fmt.Errorf("%s is a %s overlay on %q: coldship does not follow its backing chain: convert it (qemu-img convert -O qcow2) or ship with --no-backing-chain",
				l.Path, img.Format, img.Backing)
		}
		if img.External {
			return nil, fmt.Errorf("%s keeps its data in an external data file %q: not supported", l.Path, img.DataFile)
		}
		if !img.HasBacking {
			return chain, nil
		}
		next, err := resolveBacking(l.Path, img.Backing)
		if err != nil {
			return nil, err
		}
		format = img.BackingFormat
		switch format {
		case "", ImageQCOW2, ImageRaw, ImageVMDK:
		default:
			return nil, fmt.Errorf("backing file %s of %s is in format %q, which coldship does not read: flatten the chain (qemu-img convert) or ship with --no-backing-chain",
				next, l.Path, format)
		}
		named, p = img.Backing, next
	}
}

// openHeaderOf opens the file at p to read its image header. The name
// comes from a header or a descriptor that the guest's hypervisor wrote:
// O_NONBLOCK, so that a FIFO named there does not hang us, and O_NOCTTY,
// so that a terminal does not become ours.
func openHeaderOf(p string) (*os.File, error) {
	return os.OpenFile(p, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
}

// openLayer stats and reads the header of one layer, read as format
// ("" probes it).
func openLayer(p, format string) (Layer, Image, error) {
	f, err := openHeaderOf(p)
	if err != nil {
		return Layer{}, Image{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Layer{}, Image{}, err
	}
	if !fi.Mode().IsRegular() && !isBlockDevice(fi.Mode()) {
		return Layer{}, Image{}, fmt.Errorf("%s: not a regular file or block device", p)
	}
	img := Image{Format: ImageRaw}
	if format != ImageRaw {
		if img, err = ImageInfo(f); err != nil {
			return Layer{}, Image{}, err
		}
		if format != "" && img.Format != format {
			return Layer{}, Image{}, fmt.Errorf("%s: recorded as %s, but its header is %s", p, format, img.Format)
		}
	}
	l := Layer{Path: p, Format: img.Format, Backing: img.Backing, BackingFormat: img.BackingFormat, Info: fi}
	if img.Format == ImageQCOW || img.Format == ImageQED {
		l = Layer{Path: p, Format: ImageRaw, Info: fi} // not read: shipped as it is
	}
	return l, img, nil
}

// resolveBacking returns the file that backing name names for the image
// at overlay, as QEMU finds it.
func resolveBacking(overlay, name string) (string, error) {
	if strings.HasPrefix(name, "json:") {
		return "", fmt.Errorf("%s: backing file %q is a json: specification, which coldship does not follow: rebase it onto a file (qemu-img rebase -u) or ship with --no-backing-chain", overlay, name)
	}
	// QEMU's path_has_protocol: a ':' before any '/'.
	if i := strings.IndexAny(name, ":/"); i >= 0 && name[i] == ':' {
		return "", fmt.Errorf("%s: backing file %q is not a local file (protocol %s:): rebase it onto a file (qemu-img rebase -u) or ship with --no-backing-chain", overlay, name, name[:i])
	}
	if filepath.IsAbs(name) {
		return name, nil
	}
	// QEMU's path_combine: the naming image's directory, as it was named.
	if dir := filepath.Dir(overlay); dir != "." {
		return strings.TrimSuffix(dir, "/") + "/" + name, nil
	}
	return name, nil
}

// AddBackingChains returns sources with the backing files of every image
// among them added, each once however many images share it: a base shipped
// as a source already (in a VM directory, say) is not added again. An added
// layer ships next to the first image that needs it, under its base name
// (prefixed "N-" if that name is taken). Every image gets Format, and
// Backing and BackingFormat when it has a backing file.
//
// The result is in chain order: every image after its backing file (bases
// first, then their overlays, layer by layer), in name order within a
// layer; images without backing files and directories come first, in name
// order as before. A missing or unreadable backing file is an error naming
// it, returned before anything is shipped, and so is an overlay whose
// header has no room for the backing name a receive writes into it
// (RestoredBackingName, CheckPointBacking). Every vmdk descriptor's extent
// files are added too (AddVMDKExtents), a layer's as a source's.
func AddBackingChains(sources []Source) ([]Source, error) {
	out, err := AddVMDKExtents(sources)
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, s := range out {
		names[s.Name] = true
	}
	extent := dataFileNames(out)
	find := func(fi fs.FileInfo) int {
		for i, s := range out {
			if !s.Info.IsDir() && SameImage(s.Info, fi) {
				return i
			}
		}
		return -1
	}
	for i := 0; i < len(sources); i++ {
		if out[i].Info.IsDir() || extent[out[i].Name] {
			continue
		}
		chain, err := BackingChain(out[i].Path, out[i].Format)
		if err != nil {
			return nil, err
		}
		cur := i
		out[cur].Format = chain[0].Format
		for _, l := range chain[1:] {
			j := find(l.Info)
			if j < 0 {
				base := filepath.Base(l.Path)
				if base == "." || base == ".." || base == "/" {
					base = "backing"
				}
				name := uniqueName(names, path.Dir(out[cur].Name), base)
				names[name] = true
				s := NewSource(l.Path, name, l.Info)
				s.Format = l.Format
				out = append(out, s)
				j = len(out) - 1
			}
			if b := out[cur].Backing; b != "" && b != out[j].Name {
				return nil, fmt.Errorf("%s: its backing file is both %s and %s (reached by two paths): ship with --no-backing-chain",
					out[cur].Path, b, out[j].Name)
			}
			if f := out[j].Format; f != "" && f != l.Format {
				return nil, fmt.Errorf("%s: read as %s, but %s records it as %s", out[j].Path, f, out[cur].Path, l.Format)
			}
			out[j].Format = l.Format
			out[cur].Backing, out[cur].BackingFormat = out[j].Name, l.Format
			cur = j
		}
	}
	// The layers' extents: a base may be a vmdk descriptor.
	if out, err = AddVMDKExtents(out); err != nil {
		return nil, err
	}
	if err := checkOverlays(out); err != nil {
		return nil, err
	}
	sortChainOrder(out)
	return out, nil
}

// checkOverlays checks that a receive can point every overlay among srcs
// at its restored backing file: the name it will write must fit in the
// overlay's qcow2 header, or every receive of the shipment would fail.
func checkOverlays(srcs []Source) error {
	for _, s := range srcs {
		if s.Backing == "" {
			continue
		}
		name, err := RestoredBackingName(s.Name, s.Backing)
		if err != nil {
			return fmt.Errorf("%s: %w", s.Path, err)
		}
		f, err := openHeaderOf(s.Path)
		if err != nil {
			return err
		}
		err = CheckPointBacking(f, name, s.BackingFormat)
		f.Close()
		if err != nil {
			// qemu-img rebase keeps the header cluster: it cannot make room.
			return fmt.Errorf("%s: a receive could not point it at its backing file, restored as %q: %w: "+
				"ship the backing file from beside the overlay (a shorter restored name), or copy the overlay into one with a 64 KiB header cluster "+
				"(qemu-img convert -O qcow2 -B BACKING -F %s) or flatten it (qemu-img convert -O qcow2)",
				s.Path, name, err, s.BackingFormat)
		}
	}
	return nil
}

// SameImage reports whether a and b (Stat results) are the same file, or
// the same block device through two device nodes.
func SameImage(a, b fs.FileInfo) bool {
	if isBlockDevice(a.Mode()) && isBlockDevice(b.Mode()) {
		sa, ok1 := a.Sys().(*syscall.Stat_t)
		sb, ok2 := b.Sys().(*syscall.Stat_t)
		return ok1 && ok2 && sa.Rdev == sb.Rdev
	}
	return os.SameFile(a, b)
}

// uniqueName returns dir/base, or dir/N-base for the smallest N that is
// not taken.
func uniqueName(taken map[string]bool, dir, base string) string {
	name := path.Join(dir, base)
	for n := 2; taken[name]; n++ {
		name = path.Join(dir, fmt.Sprintf("%d-%s", n, base))
	}
	return name
}

// sortChainOrder orders sources by their depth above their chain's base,
// then by name.
func sortChainOrder(srcs []Source) {
	byName := map[string]int{}
	for i, s := range srcs {
		byName[s.Name] = i
	}
	depth := make([]int, len(srcs))
	for i := range srcs {
		d := 0
		for j := i; srcs[j].Backing != "" && d <= len(srcs); d++ {
			j = byName[srcs[j].Backing]
		}
		depth[i] = d
	}
	idx := make([]int, len(srcs))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool {
		if depth[idx[a]] != depth[idx[b]] {
			return depth[idx[a]] < depth[idx[b]]
		}
		return srcs[idx[a]].Name < srcs[idx[b]].Name
	})
	sorted := make([]Source, len(srcs))
	for i, j := range idx {
		sorted[i] = srcs[j]
	}
	copy(srcs, sorted)
}
