package main

import (
	"context"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/hooks"
)

// sendSet is what a send ships.
type sendSet struct {
	sources []archive.Source
	layers  []string // the backing and extent files added to what was named, for COLDSHIP_FILES
	cleanup func()   // removes the staged libvirt definition
}

// sendSources gathers what a send ships: the libvirt domain's disks,
// NVRAM and definition (the domain shut off first), the SOURCE arguments,
// every vmdk descriptor's extent files, and, unless --no-backing-chain,
// every backing file of every image once.
// It checks that nothing is in use. Nothing is read but image headers.
func sendSources(ctx context.Context, s *streams, opts *sendOptions, lv *hooks.Libvirt) (*sendSet, error) {
	set, err := gatherSources(ctx, s, opts, lv)
	if err != nil {
		return nil, err
	}
	if !opts.force {
		if err := checkSourcesNotInUse(set.sources); err != nil {
			set.cleanup()
			return nil, err
		}
	}
	return set, nil
}

func gatherSources(ctx context.Context, s *streams, opts *sendOptions, lv *hooks.Libvirt) (*sendSet, error) {
	var srcs []archive.Source
	var dom *hooks.Domain
	if opts.libvirtDomain != "" {
		if err := libvirtDomainOff(ctx, s, lv, opts.libvirtDomain, opts.shutdown, opts.shutdownWait); err != nil {
			return nil, err
		}
		// Again after the pre-send hooks: they may have changed it.
		var err error
		if dom, err = lv.Domain(ctx, opts.libvirtDomain); err != nil {
			return nil, err
		}
		if srcs, err = domainSources(dom); err != nil {
			return nil, err
		}
	}
	if len(opts.sources) > 0 {
		more, err := archive.CollectSources(opts.sources)
		if err != nil {
			return nil, err
		}
		srcs = append(srcs, more...)
	}
	set := &sendSet{cleanup: func() {}}
	named := map[string]bool{}
	for _, src := range srcs {
		named[src.Name] = true
	}
	var err error
	if opts.noBackingChain {
		// A descriptor's extents are the image itself, not a chain: they
		// come even so (marked first, a flat one is not read for a header).
		if srcs, err = archive.AddVMDKExtents(srcs); err == nil {
			warnNoBackingChain(s, srcs)
		}
	} else {
		srcs, err = archive.AddBackingChains(srcs)
	}
	if err != nil {
		return nil, err
	}
	for _, src := range srcs {
		if !named[src.Name] {
			set.layers = append(set.layers, src.Path)
		}
	}
	if err := checkNames(srcs); err != nil {
		return nil, err
	}
	noticeLayers(s.logf(opts.output), srcs, named)
	if dom != nil {
		staged, clean, err := stageDomain(dom, srcs, !opts.noBackingChain)
		if err != nil {
			return nil, err
		}
		srcs, set.cleanup = append(srcs, staged...), clean
	}
	noticeSpecialBits(s.logf(opts.output), srcs)
	set.sources = srcs
	return set, nil
}

// checkOutsideSources refuses a local DEST, or a --state-dir, inside a
// SOURCE folder: the send would write into what it ships, and ship its own
// shipments (each send all the earlier ones again) or its state.
func checkOutsideSources(dest, stateDir string, sources []string) error {
	places := []struct{ what, path string }{{"DEST", localDestPath(dest)}, {"--state-dir", stateDir}}
	for _, arg := range sources {
		fi, err := os.Stat(arg)
		if err != nil || !fi.IsDir() {
			continue // CollectSources says what is wrong with it
		}
		dir, err := realPath(arg)
		if err != nil {
			continue
		}
		for _, p := range places {
			if p.path == "" {
				continue
			}
			if in, err := realPath(p.path); err == nil && (in == dir || strings.HasPrefix(in, dir+string(filepath.Separator))) {
				return usagef("%s %s is inside SOURCE %s: the send would ship what it writes there; put it elsewhere", p.what, p.path, arg)
			}
		}
	}
	return nil
}

// localDestPath is the folder of a local DEST (a path or file://), ""
// for a remote one.
func localDestPath(dest string) string {
	scheme, _, ok := strings.Cut(dest, "://")
	switch {
	case !ok:
		return dest
	case strings.EqualFold(scheme, "file"):
		if u, err := url.Parse(dest); err == nil {
			return u.Path
		}
	}
	return ""
}

// realPath is p made absolute, with the symbolic links of the part of it
// that exists resolved.
func realPath(p string) (string, error) {
	cur, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	rest := ""
	for {
		if r, err := filepath.EvalSymlinks(cur); err == nil {
			return filepath.Join(r, rest), nil
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return filepath.Join(cur, rest), nil
		}
		rest = filepath.Join(filepath.Base(cur), rest)
		cur = parent
	}
}

// checkNames refuses, before anything is read or shipped, a source whose
// shipped name no receive could restore as it is.
func checkNames(srcs []archive.Source) error {
	for _, src := range srcs {
		if err := archive.CheckName(src.Name); err != nil {
			return fmt.Errorf("source %s: cannot ship it as %q: %v: rename it", src.Path, src.Name, err)
		}
	}
	return nil
}

// noticeSpecialBits says which sources have setuid, setgid or sticky bits,
// which a shipment does not keep (its manifest holds the permission bits
// alone): a setgid shared folder comes back without its bit.
func noticeSpecialBits(logf func(string, ...any), srcs []archive.Source) {
	for _, src := range srcs {
		var bits []string
		m := src.Info.Mode()
		for _, b := range []struct {
			mode fs.FileMode
			name string
		}{{fs.ModeSetuid, "setuid"}, {fs.ModeSetgid, "setgid"}, {fs.ModeSticky, "sticky"}} {
			if m&b.mode != 0 {
				bits = append(bits, b.name)
			}
		}
		if len(bits) > 0 {
			logf("%s: its %s bit is not shipped (a shipment keeps the permission bits rwx only)", src.Path, strings.Join(bits, " and "))
		}
	}
}

// checkSourcesNotInUse refuses sources another process uses (ErrBusy,
// exit 6). A backing file of another source, and the extent files of
// such a vmdk descriptor, may be read by running VMs (a base shared by
// linked clones); only a writer refuses it.
func checkSourcesNotInUse(srcs []archive.Source) error {
	shared := map[string]bool{}
	for _, src := range srcs {
		shared[src.Backing] = true
	}
	for _, src := range srcs {
		if shared[src.Name] {
			for _, d := range src.DataFiles {
				shared[d] = true
			}
		}
	}
	for _, src := range srcs {
		if src.Info.IsDir() {
			continue
		}
		check := hooks.CheckNotInUse
		if shared[src.Name] {
			check = hooks.CheckNotWritten
		}
		if err := check(src.Path); err != nil {
			return err
		}
	}
	return nil
}

// noticeLayers says which backing files and vmdk extent files are shipped
// though not named, and which image's header or descriptor names each:
// they are written by the guest's hypervisor, and an operator should see
// a file from outside the sources join the shipment.
func noticeLayers(logf func(string, ...any), srcs []archive.Source, named map[string]bool) {
	for _, layer := range srcs {
		if named[layer.Name] {
			continue
		}
		for _, src := range srcs {
			if src.Backing == layer.Name && !src.Info.IsDir() {
				logf("also shipping %s, the backing file that %s names (--no-backing-chain: the images alone)", layer.Path, src.Path)
				break
			}
			if slices.Contains(src.DataFiles, layer.Name) {
				logf("also shipping %s, an extent file of the vmdk descriptor %s (its data: it comes with it even with --no-backing-chain)", layer.Path, src.Path)
				break
			}
		}
	}
}

// warnNoBackingChain says which images ship without their backing files.
func warnNoBackingChain(s *streams, srcs []archive.Source) {
	for _, src := range srcs {
		if src.Info.IsDir() || src.Format == archive.ImageRaw {
			continue
		}
		f, err := os.Open(src.Path)
		if err != nil {
			continue
		}
		img, err := archive.ImageInfo(f)
		f.Close()
		if err == nil && img.HasBacking {
			fmt.Fprintf(s.err, "coldship: --no-backing-chain: %s ships without its backing file %q: the restored image needs it beside it, or rebased (qemu-img rebase)\n",
				src.Path, img.Backing)
		}
		if err == nil && img.External {
			fmt.Fprintf(s.err, "coldship: --no-backing-chain: %s ships without its external data file %q: the restored image needs it beside it, or converted (qemu-img convert)\n",
				src.Path, img.DataFile)
		}
	}
}
