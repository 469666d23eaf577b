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
	Disks []Disk // file-backed disks with a source, in document order
	// NVRAM is the file holding the domain's UEFI variables, or "". It
	// belongs to the domain like a disk: without it the boot entries and
	// enrolled keys are lost.
	NVRAM string
}

// Disk is one <disk> of a domain.
type Disk struct {
	Target string // vda
	Source string // image path
	Type   string // file
	Device string // disk, cdrom, floppy, lun
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
		Source *struct {
			File string `xml:"file,attr"`
			Dev  string `xml:"dev,attr"`
			Name string `xml:"name,attr"`
		} `xml:"source"`
		Target struct {
			Dev string `xml:"dev,attr"`
		} `xml:"target"`
	} `xml:"devices>disk"`
}

// parseDomain reads the name, disks and NVRAM file of a domain definition.
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
		disk := Disk{Target: x.Target.Dev, Type: x.Type, Device: x.Device}
		if disk.Device == "" {
			disk.Device = "disk"
		}
		if x.Source == nil {
			continue // an empty cdrom or floppy drive
		}
		if disk.Type != "file" {
			what := disk.Device + " " + disk.Target
			if src := x.Source.Dev + x.Source.Name; src != "" {
				what += " (" + src + ")"
			}
			return nil, fmt.Errorf("domain %s: %s: only file-backed disks can be shipped, not type %q yet; detach it or move it to a file first",
				d.Name, what, disk.Type)
		}
		if x.Source.File == "" {
			continue
		}
		disk.Source = x.Source.File
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

// RewriteDisks returns the domain XML with each disk source file, and the
// NVRAM file, that is a key of paths replaced by its value. Only those
// attribute values (or the text of <nvram>) change: formatting, comments,
// namespaces and attribute order are kept byte for byte. A key that is not
// found in the XML is an error, as the image would be left behind.
func RewriteDisks(data []byte, paths map[string]string) ([]byte, error) {
	type edit struct {
		start, end int // byte range of the raw value to replace
		value      string
	}
	var edits []edit
	used := make(map[string]bool)

	dec := xml.NewDecoder(bytes.NewReader(data))
	var stack []string // local names of open elements
	inside := func(name string) bool {
		for _, n := range stack {
			if n == name {
				return true
			}
		}
		return false
	}
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
			if t.Name.Space == "" && t.Name.Local == "source" && (inside("disk") || inside("nvram")) {
				for _, a := range t.Attr {
					if a.Name.Space != "" || a.Name.Local != "file" {
						continue
					}
					// The first file attribute only, the one attrValue finds.
					if to, ok := paths[a.Value]; ok {
						s, e, err := attrValue(data[before:after], "file")
						if err != nil {
							return nil, err
						}
						edits = append(edits, edit{before + s, before + e, escape(to)})
						used[a.Value] = true
					}
					break
				}
			}
			stack = append(stack, t.Name.Local) // <x/> is followed by an EndElement too
		case xml.EndElement:
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
		case xml.CharData:
			// <nvram>/var/lib/libvirt/qemu/nvram/vm_VARS.fd</nvram>
			if len(stack) == 0 || stack[len(stack)-1] != "nvram" {
				continue
			}
			text := string(t)
			path := strings.TrimSpace(text)
			to, ok := paths[path]
			if !ok || path == "" {
				continue
			}
			raw := string(data[before:after])
			lead := len(raw) - len(strings.TrimLeft(raw, " \t\r\n"))
			trail := len(raw) - len(strings.TrimRight(raw, " \t\r\n"))
			edits = append(edits, edit{before + lead, after - trail, escape(to)})
			used[path] = true
		}
	}

	var missing []string
	for from := range paths {
		if !used[from] {
			missing = append(missing, from)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("rewrite domain XML: no disk with source %s", strings.Join(missing, ", "))
	}

	var out bytes.Buffer
	last := 0
	for _, e := range edits { // in document order
		out.Write(data[last:e.start])
		out.WriteString(e.value)
		last = e.end
	}
	out.Write(data[last:])
	return out.Bytes(), nil
}

// attrValue finds attribute name in the raw start tag tag and returns the
// byte range of its value, between the quotes.
func attrValue(tag []byte, name string) (start, end int, err error) {
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
			return j + 1, j + 1 + k, nil
		}
		i = j + 1 + k + 1
	}
	return 0, 0, fmt.Errorf("rewrite domain XML: cannot find attribute %s in %q", name, tag)
}

func escape(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}
