package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/hooks"
)

// libvirtSidecar is shipped next to a domain's disks and XML: it tells the
// receiver which original path each shipped file replaces.
const libvirtSidecar = "coldship-libvirt.json"

type libvirtInfo struct {
	Domain string `json:"domain"`
	XML    string `json:"xml"` // shipped name of the definition, in the sidecar's folder
	// Disks maps every path of the definition that was shipped (disk
	// sources, backing stores, NVRAM) to its name in the shipment (older
	// shipments: a name in the sidecar's folder, without "/").
	Disks map[string]string `json:"disks"`
}

// libvirtDomainOff shuts the domain off if asked and checks it is shut
// off; a running domain without --shutdown is ErrBusy (exit 6).
func libvirtDomainOff(ctx context.Context, s *streams, lv *hooks.Libvirt, name string, shutdown bool, wait time.Duration) error {
	state, err := lv.State(ctx, name)
	if err != nil {
		return err
	}
	if state == hooks.StateShutOff {
		return nil
	}
	if !shutdown {
		return fmt.Errorf("%w: libvirt domain %s is %s: shut it down first, or pass --shutdown", hooks.ErrBusy, name, state)
	}
	fmt.Fprintf(s.err, "coldship: shutting down libvirt domain %s\n", name)
	return lv.Shutdown(ctx, name, wait)
}

// domainSources returns the domain's NVRAM file and disks as sources
// under the domain's folder, each once, with the format the definition
// gives them (a raw disk is never read as an image header). The names of
// the definition and the sidecar are kept free.
func domainSources(dom *hooks.Domain) ([]archive.Source, error) {
	used := map[string]bool{dom.Name + ".xml": true, libvirtSidecar: true}
	seen := map[string]bool{}
	var srcs []archive.Source
	add := func(i int, p, format string) error {
		if p == "" || seen[p] {
			return nil
		}
		seen[p] = true
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("libvirt domain %s: %w", dom.Name, err)
		}
		if !fi.Mode().IsRegular() && fi.Mode()&os.ModeDevice == 0 {
			return fmt.Errorf("libvirt domain %s: %s is not a file or block device", dom.Name, p)
		}
		shipped := filepath.Base(p)
		if used[shipped] {
			shipped = fmt.Sprintf("%d-%s", i, shipped)
		}
		used[shipped] = true
		src := archive.NewSource(p, path.Join(dom.Name, shipped), fi)
		switch format {
		case archive.ImageQCOW2, archive.ImageRaw, archive.ImageVMDK:
			src.Format = format
		}
		srcs = append(srcs, src)
		return nil
	}
	if err := add(0, dom.NVRAM, archive.ImageRaw); err != nil {
		return nil, err
	}
	for i, d := range dom.Disks {
		if err := add(i+1, d.Source, d.Format); err != nil {
			return nil, err
		}
	}
	return srcs, nil
}

// stageDomain writes the domain's definition and the sidecar, which maps
// every path of the definition that is shipped to its name in the
// shipment, into a temporary folder, and returns them as sources (with
// the folder) and a cleanup function.
func stageDomain(dom *hooks.Domain, srcs []archive.Source, chains bool) ([]archive.Source, func(), error) {
	info := libvirtInfo{Domain: dom.Name, XML: dom.Name + ".xml"}
	byName := map[string]*archive.Source{}
	for i := range srcs {
		byName[srcs[i].Name] = &srcs[i]
	}
	var err error
	if info.Disks, err = shippedPaths(dom, srcs, chains); err != nil {
		return nil, nil, err
	}

	stage, err := os.MkdirTemp("", "coldship-libvirt-")
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() { os.RemoveAll(stage) }
	sidecar, _ := json.MarshalIndent(info, "", " ")
	var out []archive.Source
	for _, f := range []struct {
		name string
		data []byte
	}{{info.XML, dom.XML}, {libvirtSidecar, sidecar}} {
		p := filepath.Join(stage, f.name)
		name := path.Join(dom.Name, f.name)
		if byName[name] != nil {
			cleanup()
			return nil, nil, fmt.Errorf("libvirt domain %s: %s would ship as %s, which the domain's definition needs", dom.Name, byName[name].Path, name)
		}
		if err := os.WriteFile(p, f.data, 0o600); err != nil {
			cleanup()
			return nil, nil, err
		}
		fi, err := os.Stat(p)
		if err != nil {
			cleanup()
			return nil, nil, err
		}
		out = append(out, archive.NewSource(p, name, fi))
	}
	fi, err := os.Stat(stage)
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	return append(out, archive.NewSource(stage, dom.Name, fi)), cleanup, nil
}

// shippedPaths maps every path of the domain's definition that is shipped
// to its name in the shipment. With chains followed, each <backingStore>
// of the definition must be the layer the images' headers name.
func shippedPaths(dom *hooks.Domain, srcs []archive.Source, chains bool) (map[string]string, error) {
	shipped := map[string]string{}
	byPath := map[string]*archive.Source{}
	byName := map[string]*archive.Source{}
	for i := range srcs {
		byPath[srcs[i].Path], byName[srcs[i].Name] = &srcs[i], &srcs[i]
	}
	if s := byPath[dom.NVRAM]; s != nil {
		shipped[dom.NVRAM] = s.Name
	}
	for _, d := range dom.Disks {
		top := byPath[d.Source]
		if top == nil {
			continue
		}
		shipped[d.Source] = top.Name
		if !chains {
			continue
		}
		layer := top
		for i, b := range d.BackingStore {
			next := byName[layer.Backing]
			fi, err := os.Stat(b.Source)
			if err != nil || next == nil || !archive.SameImage(fi, next.Info) {
				found := "no backing file"
				if next != nil {
					found = next.Path
				}
				return nil, fmt.Errorf("libvirt domain %s: disk %s: <backingStore> %d is %s, but the images' headers have %s there: correct the definition or the image (qemu-img rebase -u)",
					dom.Name, d.Target, i+1, b.Source, found)
			}
			shipped[b.Source] = next.Name
			layer = next
		}
	}
	return shipped, nil
}

// restoredNames maps the name in the shipment of each restored file under
// root to its path, and of each file written onto a device (--out-device)
// to the device.
func restoredNames(root string, files []string, devices map[string]string) map[string]string {
	// The restored paths are absolute; --out may not be (--out .).
	if abs, err := filepath.Abs(root); err == nil {
		root = abs
	}
	out := map[string]string{}
	for _, p := range files {
		if rel, err := filepath.Rel(root, p); err == nil && !strings.HasPrefix(rel, "..") {
			out[filepath.ToSlash(rel)] = p
		}
	}
	for name, dev := range devices {
		out[name] = dev
	}
	return out
}

// errNotRestored: a file that --libvirt-define needs is not among those
// restored.
var errNotRestored = errors.New("was not restored")

// libvirtDefine points the restored definition at the restored disks,
// backing files and NVRAM, and defines (and starts) the domain. restored
// maps names in the shipment to where they were restored: a file under
// --out, or a block device.
func libvirtDefine(ctx context.Context, lv *hooks.Libvirt, restored map[string]string, start bool) (string, error) {
	var names []string
	for name := range restored {
		if path.Base(name) == libvirtSidecar {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("--libvirt-define: no libvirt domain: its record %s %w (a shipment holds one when sent with --libvirt-domain)", libvirtSidecar, errNotRestored)
	}
	sort.Strings(names)
	sidecar := restored[names[0]]
	b, err := os.ReadFile(sidecar)
	if err != nil {
		return "", err
	}
	var info libvirtInfo
	if err := json.Unmarshal(b, &info); err != nil {
		return "", fmt.Errorf("%s: %w", sidecar, err)
	}
	dir := filepath.Dir(sidecar)
	xmlPath := filepath.Join(dir, filepath.Base(info.XML))
	xml, err := os.ReadFile(xmlPath)
	if err != nil {
		return "", err
	}
	to := map[string]hooks.Target{}
	for old, shipped := range info.Disks {
		if !strings.Contains(shipped, "/") {
			shipped = path.Join(path.Dir(names[0]), shipped)
		}
		p, ok := restored[shipped]
		if !ok {
			return "", fmt.Errorf("--libvirt-define: %s (for %s) %w", shipped, old, errNotRestored)
		}
		fi, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		to[old] = hooks.Target{Path: p, Device: fi.Mode()&os.ModeDevice != 0}
	}
	xml, err = hooks.RewriteDisks(xml, to)
	if err != nil {
		return "", err
	}
	// Keep the definition that is defined next to the images, so that it
	// can be defined again by hand (atomically replaced).
	tmp := xmlPath + ".coldship-tmp"
	if err := os.WriteFile(tmp, xml, 0o600); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, xmlPath); err != nil {
		os.Remove(tmp)
		return "", err
	}
	return lv.DefineAndStart(ctx, xml, start)
}
