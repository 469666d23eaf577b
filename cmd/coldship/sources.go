package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/hooks"
)

// sendSet is what a send ships.
type sendSet struct {
	sources []archive.Source
	layers  []string // the backing files added to what was named, for COLDSHIP_FILES
	cleanup func()   // removes the staged libvirt definition
}

// sendSources gathers what a send ships: the libvirt domain's disks,
// NVRAM and definition (the domain shut off first), the SOURCE arguments,
// and, unless --no-backing-chain, every backing file of every image once.
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
	if opts.noBackingChain {
		warnNoBackingChain(s, srcs)
	} else {
		named := map[string]bool{}
		for _, src := range srcs {
			named[src.Name] = true
		}
		var err error
		if srcs, err = archive.AddBackingChains(srcs); err != nil {
			return nil, err
		}
		for _, src := range srcs {
			if !named[src.Name] {
				set.layers = append(set.layers, src.Path)
			}
		}
		noticeLayers(s.logf(opts.output), srcs, named)
	}
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
// exit 6). A backing file of another source may be read by running VMs
// (a base shared by linked clones); only a writer refuses it.
func checkSourcesNotInUse(srcs []archive.Source) error {
	backing := map[string]bool{}
	for _, src := range srcs {
		backing[src.Backing] = true
	}
	for _, src := range srcs {
		if src.Info.IsDir() {
			continue
		}
		check := hooks.CheckNotInUse
		if backing[src.Name] {
			check = hooks.CheckNotWritten
		}
		if err := check(src.Path); err != nil {
			return err
		}
	}
	return nil
}

// noticeLayers says which backing files are shipped though not named, and
// which image's header names each: the header is written by the guest's
// hypervisor, and an operator should see a file from outside the
// sources join the shipment.
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
	}
}
