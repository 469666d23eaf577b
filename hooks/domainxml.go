package hooks

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Domain is a libvirt domain as coldship ships it: its definition and the
// images it needs.
type Domain struct {
	Name  string
	XML   []byte // as virsh dumpxml --inactive printed it
	Disks []Disk // file and block disks with a source, in document order
	// NVRAM is the file holding the domain's UEFI variables, or "". It
	// belongs to the domain like a disk: without it the boot entries and
	// enrolled keys are lost.
	NVRAM string
}

// Disk is one <disk> of a domain.
type Disk struct {
	Target string // vda
	Source string // image path: the file, or the block device
	Type   string // file or block
	Device string // disk, cdrom, floppy, lun
	Format string // <driver type>: qcow2, raw, ...; "" if not given
	// BackingStore is the disk's <backingStore> chain as the definition
	// gives it, the disk's backing file first; empty when the definition
	// leaves it to the images' headers.
	BackingStore []BackingStore
}

// BackingStore is one <backingStore> of a disk.
type BackingStore struct {
	Type   string // file or block
	Format string // <format type>
	Source string
}

// Files returns every local path the domain needs, in document order,
// each once: the NVRAM file, then each disk and its backing stores.
func (d *Domain) Files() []string {
	var out []string
	seen := map[string]bool{"": true}
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	add(d.NVRAM)
	for _, disk := range d.Disks {
		add(disk.Source)
		for _, b := range disk.BackingStore {
			add(b.Source)
		}
	}
	return out
}

type xmlSource struct {
	File string `xml:"file,attr"`
	Dev  string `xml:"dev,attr"`
	Name string `xml:"name,attr"`
}

type xmlBackingStore struct {
	Type   string `xml:"type,attr"`
	Format struct {
		Type string `xml:"type,attr"`
	} `xml:"format"`
	Source       *xmlSource       `xml:"source"`
	BackingStore *xmlBackingStore `xml:"backingStore"`
}

type domainDoc struct {
	Name string `xml:"name"`
	OS   struct {
		NVRAM *struct {
			Path   string `xml:",chardata"`
			Source struct {
				File string `xml:"file,attr"`
			} `xml:"source"`
		} `xml:"nvram"`
	} `xml:"os"`
	Disks []struct {
		Type   string `xml:"type,attr"`
		Device string `xml:"device,attr"`
		Driver struct {
			Type string `xml:"type,attr"`
		} `xml:"driver"`
		Source       *xmlSource       `xml:"source"`
		BackingStore *xmlBackingStore `xml:"backingStore"`
		Target       struct {
			Dev string `xml:"dev,attr"`
		} `xml:"target"`
	} `xml:"devices>disk"`
}

// path returns the local path of a source of type typ (file or block).
func (s *xmlSource) path(typ string) string {
	if typ == "block" {
		return s.Dev
	}
	return s.File
}

// parseDomain reads the name, disks and NVRAM file of a domain definition.
// Disks of type file and block can be shipped; any other disk (network,
// volume, ...) with a source, or backing store that is not a file or
// block device, is an error; drives without media are left out.
func parseDomain(data []byte) (*Domain, error) {
	var doc domainDoc
	if err := xml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("parse domain XML: %w", err)
	}
	d := &Domain{Name: strings.TrimSpace(doc.Name), XML: data}
	if d.Name == "" {
		return nil, errors.New("parse domain XML: no <name>")
	}
	for _, x := range doc.Disks {
		disk := Disk{Target: x.Target.Dev, Type: x.Type, Device: x.Device, Format: x.Driver.Type}
		if disk.Device == "" {
			disk.Device = "disk"
		}
		if x.Source == nil {
			continue // an empty cdrom or floppy drive
		}
		what := disk.Device + " " + disk.Target
		if disk.Type != "file" && disk.Type != "block" {
			if src := x.Source.Dev + x.Source.Name; src != "" {
				what += " (" + src + ")"
			}
			return nil, fmt.Errorf("domain %s: %s: only file and block disks can be shipped, not type %q; detach it or move it to a file first",
				d.Name, what, disk.Type)
		}
		if disk.Source = x.Source.path(disk.Type); disk.Source == "" {
			continue
		}
		for b, depth := x.BackingStore, 0; b != nil && b.Source != nil; b, depth = b.BackingStore, depth+1 {
			if b.Type != "file" && b.Type != "block" {
				return nil, fmt.Errorf("domain %s: %s: backing store %d is of type %q: only files and block devices can be shipped",
					d.Name, what, depth+1, b.Type)
			}
			bs := BackingStore{Type: b.Type, Format: b.Format.Type, Source: b.Source.path(b.Type)}
			if bs.Source == "" {
				return nil, fmt.Errorf("domain %s: %s: backing store %d has no source", d.Name, what, depth+1)
			}
			disk.BackingStore = append(disk.BackingStore, bs)
		}
		d.Disks = append(d.Disks, disk)
	}
	if n := doc.OS.NVRAM; n != nil {
		d.NVRAM = strings.TrimSpace(n.Path)
		if n.Source.File != "" {
			d.NVRAM = n.Source.File
		}
	}
	return d, nil
}

// Target is where a disk image, backing file or NVRAM file of a domain
// is at the destination.
type Target struct {
	Path string
	// Device: a block device (receive --out-device), for which the disk
	// or backing store becomes type='block' with <source dev=...>; else a
	// file, type='file' with <source file=...>.
	Device bool
}

// RewriteDisks returns the domain XML with each disk source, backing store
// source and NVRAM file that is a key of to pointed at its target: the
// path replaced and, when a block device became a file or the other way
// round, the type attribute of its <disk> or <backingStore> and the name
// of the source's attribute (dev, file) changed with it. Only those bytes
// change: formatting, comments, namespaces and attribute order are kept
// byte for byte. A key that is not found in the XML is an error, as the
// image would be left behind; so is a passthrough LUN (device='lun') made
// a file, and an NVRAM file made a device.
func RewriteDisks(data []byte, to map[string]Target) ([]byte, error) {
	var edits []edit
	used := make(map[string]bool)
	dec := xml.NewDecoder(bytes.NewReader(data))
	var stack []element
	for {
		before := int(dec.InputOffset())
		tok, err := dec.Token()
		if err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("parse domain XML: %w", err)
		}
		after := int(dec.InputOffset())
		switch t := tok.(type) {
		case xml.StartElement:
			el := element{name: t.Name.Local, typeStart: -1}
			if t.Name.Space != "" {
				el.name = ""
			}
			if el.name == "disk" || el.name == "backingStore" {
				el.kind, el.device = attr(t, "type"), attr(t, "device")
				if _, s, e, err := attrRange(data[before:after], "type"); err == nil {
					el.typeStart, el.typeEnd = before+s, before+e
				}
			}
			if el.name == "source" && len(stack) > 0 {
				es, err := rewriteSource(data, before, after, t, stack[len(stack)-1], to, used)
				if err != nil {
					return nil, err
				}
				edits = append(edits, es...)
			}
			stack = append(stack, el) // <x/> is followed by an EndElement too
		case xml.EndElement:
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
		case xml.CharData:
			// <nvram>/var/lib/libvirt/qemu/nvram/vm_VARS.fd</nvram>
			if len(stack) == 0 || stack[len(stack)-1].name != "nvram" {
				continue
			}
			path := strings.TrimSpace(string(t))
			target, ok := to[path]
			if !ok || path == "" {
				continue
			}
			if target.Device {
				return nil, fmt.Errorf("rewrite domain XML: the NVRAM file %s cannot become a block device", path)
			}
			raw := string(data[before:after])
			lead := len(raw) - len(strings.TrimLeft(raw, " \t\r\n"))
			trail := len(raw) - len(strings.TrimRight(raw, " \t\r\n"))
			edits = append(edits, edit{before + lead, after - trail, escape(target.Path)})
			used[path] = true
		}
	}

	var missing []string
	for from := range to {
		if !used[from] {
			missing = append(missing, from)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("rewrite domain XML: no disk with source %s", strings.Join(missing, ", "))
	}
	return applyEdits(data, edits)
}

// applyEdits returns data with the edits made.
func applyEdits(data []byte, edits []edit) ([]byte, error) {
	sort.Slice(edits, func(i, j int) bool { return edits[i].start < edits[j].start })
	var out bytes.Buffer
	last := 0
	for _, e := range edits {
		if e.start < last {
			return nil, errors.New("rewrite domain XML: overlapping edits")
		}
		out.Write(data[last:e.start])
		out.WriteString(e.value)
		last = e.end
	}
	out.Write(data[last:])
	return out.Bytes(), nil
}

// edit replaces the bytes [start, end) of the XML with value.
type edit struct {
	start, end int
	value      string
}

// element is an open element of the XML, as RewriteDisks tracks it.
type element struct {
	name               string // local name; "" for a namespaced element
	kind               string // a <disk>'s or <backingStore>'s type: file, block
	device             string // a <disk>'s device: disk, cdrom, lun
	typeStart, typeEnd int    // the byte range of the type attribute's value, -1 if none
}

// rewriteSource returns the edits that point the <source> t (raw bytes
// data[before:after]) of its parent element (disk, backingStore, nvram)
// at its target, if its path is a key of to.
func rewriteSource(data []byte, before, after int, t xml.StartElement, parent element, to map[string]Target, used map[string]bool) ([]edit, error) {
	var pathAttr string
	switch parent.name {
	case "nvram":
		pathAttr = "file"
	case "disk", "backingStore":
		pathAttr = map[string]string{"file": "file", "block": "dev"}[parent.kind]
	}
	if pathAttr == "" {
		return nil, nil
	}
	from := attr(t, pathAttr)
	target, ok := to[from]
	if !ok || from == "" {
		return nil, nil
	}
	nameStart, s, e, err := attrRange(data[before:after], pathAttr)
	if err != nil {
		return nil, err
	}
	used[from] = true
	edits := []edit{{before + s, before + e, escape(target.Path)}}
	newKind := "file"
	if target.Device {
		newKind = "block"
	}
	switch {
	case parent.name == "nvram" && target.Device:
		return nil, fmt.Errorf("rewrite domain XML: the NVRAM file %s cannot become a block device", from)
	case parent.name == "nvram" || newKind == parent.kind:
		return edits, nil
	case parent.device == "lun":
		return nil, fmt.Errorf("rewrite domain XML: %s is a passthrough LUN (device='lun'): it must be restored onto a block device", from)
	case parent.typeStart < 0:
		return nil, fmt.Errorf("rewrite domain XML: the %s of %s has no type attribute to change", parent.name, from)
	}
	newAttr := map[string]string{"file": "file", "block": "dev"}[newKind]
	edits = append(edits,
		edit{parent.typeStart, parent.typeEnd, newKind},
		edit{before + nameStart, before + nameStart + len(pathAttr), newAttr})
	return edits, nil
}

// attr returns the value of the unqualified attribute name of t.
func attr(t xml.StartElement, name string) string {
	for _, a := range t.Attr {
		if a.Name.Space == "" && a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

// attrRange finds attribute name in the raw start tag tag and returns the
// offset of its name and the byte range of its value, between the quotes.
func attrRange(tag []byte, name string) (nameStart, start, end int, err error) {
	i := 1 // past '<'
	isSpace := func(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }
	for i < len(tag) && !isSpace(tag[i]) && tag[i] != '/' && tag[i] != '>' {
		i++ // element name
	}
	for i < len(tag) {
		for i < len(tag) && isSpace(tag[i]) {
			i++
		}
		j := i
		for j < len(tag) && tag[j] != '=' && !isSpace(tag[j]) && tag[j] != '/' && tag[j] != '>' {
			j++
		}
		if j == i {
			break
		}
		attr := string(tag[i:j])
		for j < len(tag) && isSpace(tag[j]) {
			j++
		}
		if j >= len(tag) || tag[j] != '=' {
			break
		}
		j++
		for j < len(tag) && isSpace(tag[j]) {
			j++
		}
		if j >= len(tag) || (tag[j] != '"' && tag[j] != '\'') {
			break
		}
		quote := tag[j]
		k := bytes.IndexByte(tag[j+1:], quote)
		if k < 0 {
			break
		}
		if attr == name {
			return i, j + 1, j + 1 + k, nil
		}
		i = j + 1 + k + 1
	}
	return 0, 0, 0, fmt.Errorf("rewrite domain XML: cannot find attribute %s in %q", name, tag)
}

func escape(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}
