package shipper

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/coldship/coldship/archive"
)

// blockState is the per-block state of one send attempt, kept on disk so
// that the sender's memory does not grow with the image: one entry per
// data block, at the block's ordinal among the data blocks of the
// shipment (they come in (file, block) order), written with pwrite by the
// segment writers as they place the records, and scanned in order to
// produce the block table and the next DR table. Not mmap: its pages would
// count as the process's memory.
//
// An entry is an archive.TableEntry (its layout) followed by the block's
// keyed digest. Base is 0 for a record of this shipment, whose Segment is
// then the segment's number (not yet its index), and k > 0 for a record of
// shipment k-1 of the base's DR table, whose Segment indexes that
// shipment's segments.
type blockState struct {
	f      *os.File
	remove bool
}

const stateEntrySize = archive.TableEntrySize + 32

// newBlockState creates the state file in dir, or a temporary file when
// dir is "". It is removed by close.
func newBlockState(dir, name string) (*blockState, error) {
	var f *os.File
	var err error
	if dir == "" {
		f, err = os.CreateTemp("", "coldship-blocks-*")
	} else if err = os.MkdirAll(dir, 0o700); err == nil {
		f, err = os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	}
	if err != nil {
		return nil, fmt.Errorf("per-block state: %w", err)
	}
	return &blockState{f: f, remove: true}, nil
}

// reset empties the file for a new attempt.
func (s *blockState) reset() error {
	if err := s.f.Truncate(0); err != nil {
		return fmt.Errorf("per-block state: %w", err)
	}
	return nil
}

// put writes encoded entries starting at ordinal ord.
func (s *blockState) put(ord int64, entries []byte) error {
	if _, err := s.f.WriteAt(entries, ord*stateEntrySize); err != nil {
		return fmt.Errorf("per-block state: %w", err)
	}
	return nil
}

// putEntry encodes e and its keyed digest into b (stateEntrySize bytes).
func putEntry(b []byte, e *archive.TableEntry, kd *archive.Digest) {
	archive.EncodeTableEntry(b, e)
	copy(b[archive.TableEntrySize:], kd[:])
}

// scan calls fn for the n entries in order.
func (s *blockState) scan(n int64, fn func(e *archive.TableEntry, kd *archive.Digest) error) error {
	r := bufio.NewReaderSize(io.NewSectionReader(s.f, 0, n*stateEntrySize), 256<<10)
	var buf [stateEntrySize]byte
	for range n {
		if _, err := io.ReadFull(r, buf[:]); err != nil {
			return fmt.Errorf("per-block state: %w", err)
		}
		e, err := archive.DecodeTableEntry(buf[:])
		if err != nil {
			return fmt.Errorf("per-block state: %w", err)
		}
		var kd archive.Digest
		copy(kd[:], buf[archive.TableEntrySize:])
		if err := fn(&e, &kd); err != nil {
			return err
		}
	}
	return nil
}

// close closes and removes the file.
func (s *blockState) close() {
	if s == nil || s.f == nil {
		return
	}
	s.f.Close()
	if s.remove {
		os.Remove(s.f.Name())
	}
	s.f = nil
}
