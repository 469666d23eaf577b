package archive

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// The qcow2 header, as QEMU's docs/interop/qcow2.txt specifies it: big
// endian fields at fixed offsets of the first cluster, then header
// extensions (type, length, data padded to 8 bytes) up to an end marker,
// then, if the image has one, the backing file's name, which must end
// within the first cluster.
const (
	qcow2Magic          = "QFI\xfb"
	qcow2V2HeaderLen    = 72
	qcow2V3HeaderLen    = 104
	qcow2MinClusterBits = 9  // 512 bytes
	qcow2MaxClusterBits = 21 // 2 MiB, QEMU's limit
	qcow2MaxBackingName = 1023
	// QEMU keeps the backing format in a 16-byte buffer with its NUL.
	qcow2MaxFormatName = 15

	qcow2ExtEnd           = 0x00000000
	qcow2ExtBackingFormat = 0xe2792aca
	qcow2ExtCrypto        = 0x0537be77
	qcow2ExtBitmaps       = 0x23852875
	qcow2ExtDataFile      = 0x44415441

	qcow2IncompatCorrupt  = 1 << 1
	qcow2IncompatDataFile = 1 << 2
	qcow2IncompatKnown    = 1<<5 - 1 // bits 0-4
	qcow2AutoclearKnown   = 1<<2 - 1 // bits 0-1
)

// qcow2Header is what coldship reads of a qcow2 header.
type qcow2Header struct {
	version         uint32
	clusterSize     int64
	headerLen       int64 // 72 for version 2
	backingOffset   int64 // 0: no backing file
	backingSize     int64
	backing         string
	backingFormat   string
	dataFile        string // external data file name, if the extension is there
	incompatible    uint64
	autoclear       uint64
	l1Size          uint32
	l1Offset        int64
	refcountOffset  int64
	refcountCluster uint32
	nbSnapshots     uint32
	snapshotsOffset int64
	exts            []qcow2Ext // in file order, without the end marker
	extEnd          int64      // first byte after the extension area (after the end marker when there is one)
}

type qcow2Ext struct {
	typ  uint32
	data []byte
}

// readQCOW2Cluster reads the first cluster of a qcow2 image (less if the
// file is shorter): never more than QEMU's largest cluster, 2 MiB.
func readQCOW2Cluster(r io.ReaderAt, size int64) ([]byte, error) {
	var fixed [24]byte
	if _, err := r.ReadAt(fixed[:], 0); err != nil {
		return nil, fmt.Errorf("qcow2 header: %w", err)
	}
	if string(fixed[:4]) != qcow2Magic {
		return nil, errors.New("not a qcow2 image (bad magic)")
	}
	bits := binary.BigEndian.Uint32(fixed[20:24])
	if bits < qcow2MinClusterBits || bits > qcow2MaxClusterBits {
		return nil, fmt.Errorf("qcow2 header: cluster_bits %d is outside %d..%d", bits, qcow2MinClusterBits, qcow2MaxClusterBits)
	}
	n := min(int64(1)<<bits, size)
	buf := make([]byte, n)
	if _, err := r.ReadAt(buf, 0); err != nil && !(errors.Is(err, io.EOF) && n == size) {
		return nil, fmt.Errorf("qcow2 header: %w", err)
	}
	return buf, nil
}

// parseQCOW2 parses the header in b, the first cluster of an image (or
// all of a shorter file). It checks every offset and length against b
// and against the bounds QEMU enforces, so that hostile input yields an
// error, never a panic or a large allocation.
func parseQCOW2(b []byte) (*qcow2Header, error) {
	if len(b) < qcow2V2HeaderLen {
		return nil, errors.New("qcow2 header: truncated")
	}
	be := binary.BigEndian
	if string(b[:4]) != qcow2Magic {
		return nil, errors.New("not a qcow2 image (bad magic)")
	}
	h := &qcow2Header{version: be.Uint32(b[4:8])}
	if h.version != 2 && h.version != 3 {
		return nil, fmt.Errorf("qcow2 header: unsupported version %d", h.version)
	}
	bits := be.Uint32(b[20:24])
	if bits < qcow2MinClusterBits || bits > qcow2MaxClusterBits {
		return nil, fmt.Errorf("qcow2 header: cluster_bits %d is outside %d..%d", bits, qcow2MinClusterBits, qcow2MaxClusterBits)
	}
	h.clusterSize = 1 << bits
	// Offsets are kept as int64: anything at or past 2^63 is out of any
	// file and is refused where it matters.
	off := func(i int) int64 { return int64(min(be.Uint64(b[i:i+8]), 1<<63-1)) }
	h.backingOffset = off(8)
	h.backingSize = int64(be.Uint32(b[16:20]))
	h.l1Size = be.Uint32(b[36:40])
	h.l1Offset = off(40)
	h.refcountOffset = off(48)
	h.refcountCluster = be.Uint32(b[56:60])
	h.nbSnapshots = be.Uint32(b[60:64])
	h.snapshotsOffset = off(64)
	h.headerLen = qcow2V2HeaderLen
	if h.version == 3 {
		if len(b) < qcow2V3HeaderLen {
			return nil, errors.New("qcow2 header: truncated version 3 header")
		}
		h.incompatible = be.Uint64(b[72:80])
		h.autoclear = be.Uint64(b[88:96])
		h.headerLen = int64(be.Uint32(b[100:104]))
		if h.headerLen < qcow2V3HeaderLen || h.headerLen%8 != 0 || h.headerLen > int64(len(b)) || h.headerLen > h.clusterSize {
			return nil, fmt.Errorf("qcow2 header: header_length %d is invalid", h.headerLen)
		}
	}

	extEnd := min(h.clusterSize, int64(len(b)))
	if h.backingOffset != 0 {
		if h.backingSize > qcow2MaxBackingName {
			return nil, fmt.Errorf("qcow2 header: backing file name of %d bytes (at most %d)", h.backingSize, qcow2MaxBackingName)
		}
		if h.backingOffset < h.headerLen || h.backingOffset > h.clusterSize-h.backingSize {
			return nil, fmt.Errorf("qcow2 header: backing file name at %d+%d is outside the header cluster", h.backingOffset, h.backingSize)
		}
		if h.backingOffset+h.backingSize > int64(len(b)) {
			return nil, errors.New("qcow2 header: truncated before the backing file name")
		}
		name := b[h.backingOffset : h.backingOffset+h.backingSize]
		if bytes.IndexByte(name, 0) >= 0 {
			return nil, errors.New("qcow2 header: backing file name holds a NUL byte")
		}
		h.backing = string(name)
		extEnd = h.backingOffset
	}
	if err := h.parseExtensions(b[:extEnd]); err != nil {
		return nil, err
	}
	return h, nil
}

// parseExtensions reads the header extensions between the header and end
// (the backing file name, or the end of the cluster), as QEMU does: until
// the end marker or the end of that area.
func (h *qcow2Header) parseExtensions(b []byte) error {
	be := binary.BigEndian
	end := int64(len(b))
	pos := h.headerLen
	seen := map[uint32]bool{}
	for pos < end {
		if end-pos < 8 {
			break // no room for another extension: the area ends here
		}
		typ, n := be.Uint32(b[pos:]), int64(be.Uint32(b[pos+4:]))
		pos += 8
		if typ == qcow2ExtEnd {
			h.extEnd = pos
			return nil
		}
		if n > end-pos {
			return fmt.Errorf("qcow2 header: extension 0x%08x of %d bytes overruns the header area", typ, n)
		}
		data := b[pos : pos+n]
		switch typ {
		case qcow2ExtBackingFormat, qcow2ExtDataFile:
			if seen[typ] {
				return fmt.Errorf("qcow2 header: extension 0x%08x appears twice", typ)
			}
			if bytes.IndexByte(data, 0) >= 0 {
				return fmt.Errorf("qcow2 header: extension 0x%08x holds a NUL byte", typ)
			}
			if typ == qcow2ExtBackingFormat {
				if n > qcow2MaxFormatName {
					return fmt.Errorf("qcow2 header: backing format name of %d bytes (at most %d)", n, qcow2MaxFormatName)
				}
				h.backingFormat = string(data)
			} else {
				h.dataFile = string(data)
			}
		}
		seen[typ] = true
		h.exts = append(h.exts, qcow2Ext{typ: typ, data: data})
		pos += (n + 7) &^ 7
	}
	h.extEnd = min(pos, end)
	return nil
}

// structures lists the regions of the image file that the header points
// at, by name, for the check that a rewritten header overlaps none.
func (h *qcow2Header) structures() map[string]int64 {
	s := map[string]int64{}
	if h.l1Size > 0 {
		s["the L1 table"] = h.l1Offset
	}
	if h.refcountCluster > 0 {
		s["the refcount table"] = h.refcountOffset
	}
	if h.nbSnapshots > 0 {
		s["the snapshot table"] = h.snapshotsOffset
	}
	for _, e := range h.exts {
		switch {
		case e.typ == qcow2ExtCrypto && len(e.data) >= 8:
			s["the encryption header"] = int64(min(binary.BigEndian.Uint64(e.data), 1<<63-1))
		case e.typ == qcow2ExtBitmaps && len(e.data) >= 24:
			s["the bitmap directory"] = int64(min(binary.BigEndian.Uint64(e.data[16:]), 1<<63-1))
		}
	}
	return s
}

// RewriteBacking sets the backing file name of the qcow2 image f to name
// and its backing format to format (recorded in the backing format
// extension), in place, as "qemu-img rebase -u" would; name "" removes the
// backing file (format must then be ""). Only the first cluster changes:
// the header fields, the extension area (every other extension is kept,
// in its order) and the name after it; the rest of that cluster's old name
// area is zeroed. It refuses an image it cannot rewrite safely (marked
// corrupt, with an external data file or unknown incompatible features),
// a name that would not fit in the first cluster, and an image whose
// metadata tables lie inside that cluster. The write is synced; it is one
// write of at most one cluster, not atomic against a crash: rewrite a copy
// that is renamed into place afterwards, as restores do. f may be a block
// device holding a qcow2 image (written in place).
func RewriteBacking(f *os.File, name, format string) error {
	return rewriteBacking(f, name, format, true, true)
}

// RestoredBackingName is the backing file name that a receive writes
// into an overlay shipped as overlay (a path of the shipment) whose
// backing layer is shipped as backing, both restored as files of the
// output folder: backing relative to the overlay's folder, so that the
// chain reads the same wherever the folder goes.
func RestoredBackingName(overlay, backing string) (string, error) {
	return filepath.Rel(filepath.FromSlash(path.Dir(overlay)), filepath.FromSlash(backing))
}

// PointBacking makes the qcow2 image f name backing file name in format
// format, as every restore does: it writes nothing when the header names
// them already, and otherwise rewrites it as RewriteBacking does.
func PointBacking(f *os.File, name, format string) error {
	return rewriteBacking(f, name, format, false, true)
}

// CheckPointBacking reports whether PointBacking(f, name, format) can
// succeed, without writing anything: what send checks for every overlay
// before it ships it, so that no receive fails where it must not.
func CheckPointBacking(f *os.File, name, format string) error {
	return rewriteBacking(f, name, format, false, false)
}

// rewriteBacking points f at name and format: always (RewriteBacking), or
// only if its header names something else; and writes, or only checks
// that it could.
func rewriteBacking(f *os.File, name, format string, always, write bool) error {
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("rewrite backing file of %s: %w", f.Name(), err)
	}
	if !fi.Mode().IsRegular() && !isBlockDevice(fi.Mode()) {
		return fmt.Errorf("rewrite backing file of %s: not a regular file or block device", f.Name())
	}
	size, err := fileSize(f)
	if err != nil {
		return fmt.Errorf("rewrite backing file of %s: %w", f.Name(), err)
	}
	b, err := readQCOW2Cluster(f, size)
	if err != nil {
		return fmt.Errorf("rewrite backing file of %s: %w", f.Name(), err)
	}
	if h, err := parseQCOW2(b); !always && err == nil && h.backing == name && h.backingFormat == format {
		return nil
	}
	out, err := rewriteQCOW2Header(b, name, format)
	if err != nil {
		return fmt.Errorf("rewrite backing file of %s: %w", f.Name(), err)
	}
	if !write {
		return nil
	}
	if _, err := f.WriteAt(out, 0); err != nil {
		return fmt.Errorf("rewrite backing file of %s: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("rewrite backing file of %s: %w", f.Name(), err)
	}
	return nil
}

// rewriteQCOW2Header returns the bytes to write at offset 0 of the image
// whose first cluster is b so that its backing file is name (format
// format). The result is never longer than b.
func rewriteQCOW2Header(b []byte, name, format string) ([]byte, error) {
	h, err := parseQCOW2(b)
	if err != nil {
		return nil, err
	}
	switch {
	case int64(len(b)) < h.clusterSize:
		return nil, errors.New("qcow2 image is shorter than its header cluster")
	case h.incompatible&qcow2IncompatCorrupt != 0:
		return nil, errors.New("qcow2 image is marked corrupt (qemu-img check -r all repairs it)")
	case h.incompatible&qcow2IncompatDataFile != 0 || h.dataFile != "":
		return nil, errors.New("qcow2 image keeps its data in an external data file: not supported")
	case h.incompatible&^qcow2IncompatKnown != 0:
		return nil, fmt.Errorf("qcow2 image has unknown incompatible features 0x%x", h.incompatible&^qcow2IncompatKnown)
	case len(name) > qcow2MaxBackingName:
		return nil, fmt.Errorf("backing file name of %d bytes is too long (at most %d)", len(name), qcow2MaxBackingName)
	case len(format) > qcow2MaxFormatName:
		return nil, fmt.Errorf("backing format %q is too long (at most %d bytes)", format, qcow2MaxFormatName)
	case name == "" && format != "":
		return nil, errors.New("a backing format without a backing file")
	case strings.IndexByte(name, 0) >= 0 || strings.IndexByte(format, 0) >= 0:
		return nil, errors.New("backing file name or format holds a NUL byte")
	}
	for what, at := range h.structures() {
		if at < h.clusterSize {
			return nil, fmt.Errorf("qcow2 image has %s at offset %d, inside the header cluster", what, at)
		}
	}

	// The header, the extensions (the backing format first, as QEMU
	// writes them), the end marker, the name.
	var area bytes.Buffer
	be := binary.BigEndian
	ext := func(typ uint32, data []byte) {
		var hdr [8]byte
		be.PutUint32(hdr[:4], typ)
		be.PutUint32(hdr[4:], uint32(len(data)))
		area.Write(hdr[:])
		area.Write(data)
		area.Write(make([]byte, (8-len(data)%8)%8))
	}
	area.Write(b[:h.headerLen])
	if format != "" {
		ext(qcow2ExtBackingFormat, []byte(format))
	}
	for _, e := range h.exts {
		if e.typ != qcow2ExtBackingFormat {
			ext(e.typ, e.data)
		}
	}
	ext(qcow2ExtEnd, nil)
	nameAt := int64(area.Len())
	area.WriteString(name)
	if int64(area.Len()) > h.clusterSize {
		return nil, fmt.Errorf("backing file name of %d bytes does not fit in the %d-byte header cluster (%d bytes free)",
			len(name), h.clusterSize, max(0, h.clusterSize-nameAt))
	}

	out := area.Bytes()
	if name == "" {
		be.PutUint64(out[8:16], 0)
		be.PutUint32(out[16:20], 0)
	} else {
		be.PutUint64(out[8:16], uint64(nameAt))
		be.PutUint32(out[16:20], uint32(len(name)))
	}
	if h.version == 3 {
		// Writers must clear autoclear bits they do not know.
		be.PutUint64(out[88:96], h.autoclear&qcow2AutoclearKnown)
	}
	// Zero whatever the old extensions and name used beyond the new ones.
	used := h.extEnd
	if h.backingOffset != 0 {
		used = max(used, h.backingOffset+h.backingSize)
	}
	if pad := used - int64(len(out)); pad > 0 {
		out = append(out, make([]byte, pad)...)
	}
	return out, nil
}
