package shipper

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"time"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper/blocks"
)

// sendFile is one source of a send: what was found when it was opened,
// and what an attempt learns of it as its blocks go by, in order.
type sendFile struct {
	src   archive.Source
	f     *os.File // nil for a directory
	stamp archive.Stamp

	// Per attempt, filled in order by the pipeline.
	digest     *archive.FileDigester
	dataBlocks int64
	dataBytes  int64
	firstEntry int64 // ordinal of its first data block in the per-block state
}

// unallocated returns the bytes of a regular file that its file system
// holds no blocks for (holes), which the send will pass without reading;
// 0 for a folder or a device, and when it cannot tell. It only feeds the
// time left shown in progress.
func (sf *sendFile) unallocated() int64 {
	if sf.f == nil {
		return 0
	}
	fi, err := sf.f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return 0
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0
	}
	return max(0, fi.Size()-st.Blocks*512)
}

// openSources opens every file first, so that a missing or unreadable
// source fails before anything is written to the destination. The caller
// closes them (closeSources).
func openSources(sources []archive.Source) ([]*sendFile, error) {
	files := make([]*sendFile, len(sources))
	for i, src := range sources {
		sf := &sendFile{src: src}
		files[i] = sf
		if src.Info.IsDir() {
			continue
		}
		f, err := archive.OpenSource(src)
		if errors.Is(err, fs.ErrNotExist) { // it was there when the sources were listed
			err = fmt.Errorf("%w: %s is gone since the send listed it", ErrSourceChanged, src.Path)
		}
		if err != nil {
			closeSources(files)
			return nil, fmt.Errorf("open source: %w", err)
		}
		sf.f = f
		if sf.stamp, err = archive.StampOf(f); err != nil {
			closeSources(files)
			return nil, err
		}
		if !sf.stamp.Listed(src.Info) {
			closeSources(files)
			return nil, fmt.Errorf("%w: %s changed since the send listed it and read its header", ErrSourceChanged, src.Path)
		}
	}
	return files, nil
}

// checkFolders fails with ErrSourceChanged if a source folder gained,
// lost or renamed an entry since it was collected (its modification time
// moved, or its path names another folder): the shipment would not hold
// what the folder holds. Its files' own changes are found as they are read.
func checkFolders(files []*sendFile) error {
	for _, sf := range files {
		if sf.f != nil || !sf.src.Info.IsDir() {
			continue
		}
		fi, err := os.Stat(sf.src.Path)
		if err != nil || !fi.IsDir() || !os.SameFile(fi, sf.src.Info) || !fi.ModTime().Equal(sf.src.Info.ModTime()) {
			return fmt.Errorf("folder %s: %w", sf.src.Path, ErrSourceChanged)
		}
	}
	return nil
}

func closeSources(files []*sendFile) {
	for _, sf := range files {
		if sf != nil && sf.f != nil {
			sf.f.Close()
		}
	}
}

// readerFiles is the block reader's view of the sources.
func readerFiles(files []*sendFile) []blocks.File {
	out := make([]blocks.File, len(files))
	for i, sf := range files {
		if sf.f != nil {
			out[i] = blocks.File{F: sf.f, Path: sf.src.Path, Stamp: sf.stamp}
		}
	}
	return out
}

// journalFile is how the journal identifies the source: a rerun resumes
// only if every source is as it was.
func (sf *sendFile) journalFile() journalFile {
	jf := journalFile{Path: sf.src.Path, Name: sf.src.Name, Dir: sf.f == nil}
	if sf.f != nil {
		jf.Size, jf.MTime, jf.CTime, jf.Ino = sf.stamp.Size, sf.stamp.MTime.Nano(), sf.stamp.CTime.Nano(), sf.stamp.Ino
	}
	return jf
}

// manifestFile describes the source in a format 3 manifest, from what the
// attempt learned of its blocks: owner, group, device and backing layer as
// the source was collected (archive.Source).
func (sf *sendFile) manifestFile() archive.File {
	fi := sf.src.Info
	uid, gid := sf.src.UID, sf.src.GID
	f := archive.File{Path: sf.src.Name, Mode: fi.Mode().Perm(), MTime: fi.ModTime().UTC(), UID: &uid, GID: &gid}
	if sf.f == nil {
		f.Type = archive.TypeDir
		return f
	}
	f.Type = archive.TypeFile
	f.Size = sf.stamp.Size
	f.MTime = time.Unix(sf.stamp.MTime.Unix()).UTC()
	f.BLAKE3 = sf.digest.Sum()
	f.DataBlocks, f.DataBytes = sf.dataBlocks, sf.dataBytes
	f.Device = sf.src.Device
	f.Backing = sf.src.ManifestBacking()
	f.DataFiles = sf.src.ManifestDataFiles()
	return f
}
