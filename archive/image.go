package archive

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Image formats that coldship reads the header of. Any other file is
// shipped as it is and reported as raw.
const (
	ImageRaw   = "raw"
	ImageQCOW2 = "qcow2"
	ImageVMDK  = "vmdk"
	// ImageQCOW is qcow version 1, and ImageQED QEMU's QED: coldship
	// ships them as they are, reading only whether they name a backing
	// file (they are then refused: their chains are not followed).
	ImageQCOW = "qcow"
	ImageQED  = "qed"
)

// Image is what the header of a disk image says about its format and its
// backing file.
type Image struct {
	Format string // ImageQCOW2, ImageVMDK, ImageQCOW or ImageRaw (anything else)
	// HasBacking: the image is an overlay on a backing file (a vmdk
	// child may name none: Backing is then "").
	HasBacking bool
	// Backing is the backing file name exactly as the header records it
	// (a qcow2 backing file; a vmdk's parentFileNameHint), "" if none.
	Backing string
	// BackingFormat is the backing file's format as the header records
	// it, "" if it does not (QEMU then probes the backing file).
	BackingFormat string
	// DataFile is a qcow2 external data file's name; External is set
	// when the image has one, named or not.
	DataFile string
	External bool
	// Descriptor: a vmdk that is a text descriptor file, whose data is
	// in the extent files it names (VMDKExtentFiles).
	Descriptor bool
}

// Limits of what is read to tell an image's format.
const (
	vmdkMaxDescriptor = 1 << 20 // an embedded descriptor is a few KiB
	vmdkTextPeek      = 64 << 10
)

// ImageInfo reads the header of the image f: its format (by its magic,
// as qemu-img probes it) and backing file. A qcow2 or vmdk header that is
// malformed is an error naming f; a file that is neither is raw. It reads
// at most the first cluster of a qcow2 (2 MiB) and a vmdk's descriptor
// (1 MiB), whatever the header claims. A block device is read the same way.
func ImageInfo(f *os.File) (Image, error) {
	size, err := fileSize(f)
	if err != nil {
		return Image{}, fmt.Errorf("read image header of %s: %w", f.Name(), err)
	}
	img, err := ReadImageInfo(f, size)
	if err != nil {
		return Image{}, fmt.Errorf("read image header of %s: %w", f.Name(), err)
	}
	return img, nil
}

// ReadImageInfo is ImageInfo for the size bytes of r.
func ReadImageInfo(r io.ReaderAt, size int64) (Image, error) {
	var magic [4]byte
	if size < int64(len(magic)) {
		return Image{Format: ImageRaw}, nil
	}
	if _, err := r.ReadAt(magic[:], 0); err != nil {
		return Image{}, err
	}
	switch {
	case string(magic[:]) == qcow2Magic:
		return readQCOW2Info(r, size)
	case string(magic[:]) == "KDMV":
		return readVMDKSparseInfo(r, size)
	case string(magic[:]) == "QED\x00":
		return readQEDInfo(r, size)
	}
	var peek [vmdkProbeLen]byte
	if n, _ := r.ReadAt(peek[:], 0); isVMDKDescriptor(peek[:n]) {
		b := make([]byte, min(size, vmdkTextPeek))
		if n, err := r.ReadAt(b, 0); err != nil && !(errors.Is(err, io.EOF) && int64(n) == size) {
			return Image{}, err
		}
		img := parseVMDKDescriptor(b)
		img.Descriptor = true
		return img, nil
	}
	return Image{Format: ImageRaw}, nil
}

// vmdkProbeLen is how much of a file QEMU reads to probe its format.
const vmdkProbeLen = 2048

// isVMDKDescriptor reports whether b, the start of a file, is the text of
// a vmdk descriptor: it starts with "# Disk DescriptorFile", or, as QEMU's
// vmdk_probe has it, comment and blank lines up to a "version=1", 2 or 3
// line. A descriptor QEMU opens that coldship took for raw would ship
// without its extents.
func isVMDKDescriptor(b []byte) bool {
	if bytes.HasPrefix(b, []byte("# Disk DescriptorFile")) {
		return true
	}
	for {
		line, rest, ok := bytes.Cut(b, []byte("\n"))
		if !ok {
			return false // QEMU wants the version line, and every line before it, ended
		}
		blank := bytes.TrimSuffix(bytes.TrimLeft(line, " "), []byte("\r"))
		switch v := string(bytes.TrimSuffix(line, []byte("\r"))); {
		case strings.HasPrefix(v, "#"):
		case strings.HasPrefix(v, " ") && len(blank) == 0:
		case v == "version=1" || v == "version=2" || v == "version=3":
			return true
		default:
			return false
		}
		b = rest
	}
}

func readQCOW2Info(r io.ReaderAt, size int64) (Image, error) {
	if size < 8 {
		return Image{}, errors.New("qcow2 header: truncated")
	}
	var v [4]byte
	if _, err := r.ReadAt(v[:], 4); err != nil {
		return Image{}, err
	}
	if binary.BigEndian.Uint32(v[:]) == 1 {
		// qcow version 1: the backing file name's offset and size at 8
		// and 16, big endian.
		var hdr [20]byte
		if _, err := r.ReadAt(hdr[:], 0); err != nil {
			return Image{}, fmt.Errorf("qcow header: %w", err)
		}
		be := binary.BigEndian
		return unreadOverlay(r, size, ImageQCOW, be.Uint64(hdr[8:]), uint64(be.Uint32(hdr[16:])), be.Uint64(hdr[8:]) != 0)
	}
	if size < qcow2V2HeaderLen {
		return Image{}, errors.New("qcow2 header: truncated")
	}
	b, err := readQCOW2Cluster(r, size)
	if err != nil {
		return Image{}, err
	}
	h, err := parseQCOW2(b)
	if err != nil {
		return Image{}, err
	}
	return Image{
		Format: ImageQCOW2, HasBacking: h.backing != "", Backing: h.backing, BackingFormat: h.backingFormat,
		DataFile: h.dataFile, External: h.dataFile != "" || h.incompatible&qcow2IncompatDataFile != 0,
	}, nil
}

// readQEDInfo reads whether a QED image has a backing file: feature bit
// 0, its name's offset and size at 56 and 60 of the little-endian header.
func readQEDInfo(r io.ReaderAt, size int64) (Image, error) {
	var hdr [64]byte
	if size < int64(len(hdr)) {
		return Image{Format: ImageQED}, nil // shipped as it is: QEMU would not open it either
	}
	if _, err := r.ReadAt(hdr[:], 0); err != nil {
		return Image{}, fmt.Errorf("qed header: %w", err)
	}
	le := binary.LittleEndian
	return unreadOverlay(r, size, ImageQED, uint64(le.Uint32(hdr[56:])), uint64(le.Uint32(hdr[60:])), le.Uint64(hdr[16:])&1 != 0)
}

// unreadOverlay is the Image of a format whose data coldship does not
// read: whether it has a backing file, and its name when it lies within
// the file and is of a sane length (for messages only).
func unreadOverlay(r io.ReaderAt, size int64, format string, off, n uint64, backed bool) (Image, error) {
	img := Image{Format: format, HasBacking: backed}
	if backed && n > 0 && n <= qcow2MaxBackingName && off < uint64(size) && off+n <= uint64(size) {
		b := make([]byte, n)
		if _, err := r.ReadAt(b, int64(off)); err == nil {
			img.Backing = string(b)
		}
	}
	return img, nil
}

// readVMDKSparseInfo reads the descriptor embedded in a hosted sparse
// extent (monolithicSparse, streamOptimized): its offset and size, in
// 512-byte sectors, are at bytes 28 and 36 of the little-endian header.
func readVMDKSparseInfo(r io.ReaderAt, size int64) (Image, error) {
	var hdr [44]byte
	if size < int64(len(hdr)) {
		return Image{}, errors.New("vmdk header: truncated")
	}
	if _, err := r.ReadAt(hdr[:], 0); err != nil {
		return Image{}, err
	}
	off, n := binary.LittleEndian.Uint64(hdr[28:]), binary.LittleEndian.Uint64(hdr[36:])
	if off == 0 || n == 0 {
		return Image{Format: ImageVMDK}, nil // an extent of a descriptor file
	}
	if n > vmdkMaxDescriptor/512 || off > uint64(size)/512 || off*512+n*512 > uint64(size) {
		return Image{}, fmt.Errorf("vmdk header: descriptor at sector %d, %d sectors, is out of the file", off, n)
	}
	b := make([]byte, n*512)
	if _, err := r.ReadAt(b, int64(off*512)); err != nil {
		return Image{}, fmt.Errorf("vmdk descriptor: %w", err)
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return parseVMDKDescriptor(b), nil
}

// parseVMDKDescriptor reads parentCID and parentFileNameHint from the text
// of a vmdk descriptor: a parent CID other than ffffffff makes the image
// a child (a delta disk) of another.
func parseVMDKDescriptor(b []byte) Image {
	img := Image{Format: ImageVMDK}
	for _, line := range strings.Split(string(b), "\n") {
		key, value, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		switch strings.TrimSpace(key) {
		case "parentCID":
			img.HasBacking = !strings.EqualFold(value, "ffffffff")
		case "parentFileNameHint":
			img.Backing = strings.Trim(value, `"`)
		}
	}
	if !img.HasBacking {
		img.Backing = ""
	}
	return img
}

// fileSize returns the size of a regular file, or of a block device
// (which stat reports as 0).
func fileSize(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if isBlockDevice(fi.Mode()) {
		return blockDeviceSize(f)
	}
	return fi.Size(), nil
}
