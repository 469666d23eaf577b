package restore

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/archive"
)

// A blocks file records, for one restored file, what each of its blocks
// holds: one SlotSize-byte slot per block, at offset block * SlotSize,
// read and written with pread and pwrite so that nothing per block is held
// in memory. A slot that is all zero (a hole of the blocks file, which is
// as sparse as the image) means a zero block. It is both the record that
// lets an interrupted receive resume (which blocks were written, with
// which digest) and, once the restore is done, what the restore marker
// vouches for the file with.

// SlotSize is the size of one slot of a blocks file:
//
//	[32] the block's digest (FormDigest in format 3, BlockDigest in 1 and 2)
//	u32  the block's data bytes (format 3: bytes in its non-zero pages)
//	u32  mark: who wrote it (stored receives: the run's tag; live: the round)
const SlotSize = 40

// Slot is one block's entry in a blocks file.
type Slot struct {
	Digest archive.Digest
	Data   uint32
	Mark   uint32
}

// Zero reports whether the slot records nothing (a zero block).
func (s Slot) Zero() bool { return s.Digest == (archive.Digest{}) }

func (s Slot) put(b []byte) {
	copy(b[:32], s.Digest[:])
	binary.BigEndian.PutUint32(b[32:], s.Data)
	binary.BigEndian.PutUint32(b[36:], s.Mark)
}

func parseSlot(b []byte) Slot {
	var s Slot
	copy(s.Digest[:], b[:32])
	s.Data = binary.BigEndian.Uint32(b[32:])
	s.Mark = binary.BigEndian.Uint32(b[36:])
	return s
}

// slotFile is an open blocks file. Its methods are safe for concurrent
// use on different blocks.
type slotFile struct {
	f    *os.File
	name string // relative to the output folder, for messages

	mu      sync.Mutex
	pending []pendingSlot // putLater's, not yet written
	batch   int           // how many putLater gathers
}

type pendingSlot struct {
	block int64
	b     [SlotSize]byte
}

// A batch of slots is at most slotBatch slots and covers at most
// slotBatchBytes of blocks: what a crash can make a resumed receive write
// again.
const (
	slotBatch      = 512
	slotBatchBytes = 32 << 20
)

// slotFile opens the blocks file sf, named name in the blocks folder.
func (w *Writer) slotFile(sf *os.File, name string) *slotFile {
	b := int(min(slotBatch, max(1, slotBatchBytes/w.sh.BlockSize)))
	return &slotFile{f: sf, name: path.Join(w.names.blocks, name), batch: b}
}

// putLater records a block's slot, written with others in as few writes as
// their order allows (the blocks of a receive come nearly in order); flush
// writes the rest. A slot not yet written is lost in a crash: a resumed
// receive then writes that block again.
func (s *slotFile) putLater(block int64, sl Slot) error {
	p := pendingSlot{block: block}
	sl.put(p.b[:])
	s.mu.Lock()
	s.pending = append(s.pending, p)
	var batch []pendingSlot
	if len(s.pending) >= s.batch {
		batch, s.pending = s.pending, make([]pendingSlot, 0, s.batch)
	}
	s.mu.Unlock()
	return s.writeBatch(batch)
}

// flush writes the slots putLater holds.
func (s *slotFile) flush() error {
	if s == nil || s.f == nil {
		return nil
	}
	s.mu.Lock()
	batch := s.pending
	s.pending = nil
	s.mu.Unlock()
	return s.writeBatch(batch)
}

func (s *slotFile) writeBatch(batch []pendingSlot) error {
	sort.Slice(batch, func(i, j int) bool { return batch[i].block < batch[j].block })
	buf := make([]byte, 0, len(batch)*SlotSize)
	for i := 0; i < len(batch); {
		j := i
		buf = buf[:0]
		for ; j < len(batch) && batch[j].block == batch[i].block+int64(j-i); j++ {
			buf = append(buf, batch[j].b[:]...)
		}
		if _, err := s.f.WriteAt(buf, batch[i].block*SlotSize); err != nil {
			return fmt.Errorf("write %s: %w", s.name, err)
		}
		i = j
	}
	return nil
}

func (s *slotFile) get(block int64) (Slot, error) {
	var b [SlotSize]byte
	n, err := s.f.ReadAt(b[:], block*SlotSize)
	if err != nil && !errors.Is(err, io.EOF) {
		return Slot{}, fmt.Errorf("read %s: %w", s.name, err)
	}
	if n < SlotSize {
		return Slot{}, nil // past the end: never written
	}
	return parseSlot(b[:]), nil
}

func (s *slotFile) put(block int64, sl Slot) error {
	var b [SlotSize]byte
	sl.put(b[:])
	if _, err := s.f.WriteAt(b[:], block*SlotSize); err != nil {
		return fmt.Errorf("write %s: %w", s.name, err)
	}
	return nil
}

// truncate drops the slots of blocks from nblocks on.
func (s *slotFile) truncate(nblocks int64) error {
	if err := s.f.Truncate(nblocks * SlotSize); err != nil {
		return fmt.Errorf("truncate %s: %w", s.name, err)
	}
	return nil
}

func (s *slotFile) close() {
	if s != nil && s.f != nil {
		s.f.Close()
		s.f = nil
	}
}

// each calls fn for every slot that records a block, in ascending block
// order, below nblocks. It skips the holes of the blocks file (zero
// blocks) without reading them, so it costs what the image holds in data.
func (s *slotFile) each(nblocks int64, fn func(block int64, sl Slot) error) error {
	return s.eachIn(0, nblocks, fn)
}

// eachIn is each for the blocks from from to to (excluded).
func (s *slotFile) eachIn(from, to int64, fn func(block int64, sl Slot) error) error {
	end := to * SlotSize
	fd := int(s.f.Fd())
	buf := make([]byte, 64*SlotSize*16)
	for off := from * SlotSize; off < end; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, syscall.ENXIO) {
			return nil
		}
		if err != nil {
			data = off // no SEEK_DATA: read everything
		}
		if data >= end {
			return nil
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			hole = end
		}
		hole = min(hole, end)
		data -= data % SlotSize
		r := bufio.NewReaderSize(io.NewSectionReader(s.f, data, hole-data), len(buf))
		for b := data / SlotSize; b*SlotSize < hole; b++ {
			if _, err := io.ReadFull(r, buf[:SlotSize]); err != nil {
				if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					break
				}
				return fmt.Errorf("read %s: %w", s.name, err)
			}
			if sl := parseSlot(buf[:SlotSize]); !sl.Zero() {
				if err := fn(b, sl); err != nil {
					return err
				}
			}
		}
		off = max(hole, data+SlotSize)
		off += (SlotSize - off%SlotSize) % SlotSize
	}
	return nil
}

// cursor reads the slots of a blocks file in ascending block order,
// buffered: the sequential walk of an update.
type cursor struct {
	s    *slotFile
	size int64 // of the blocks file when the walk began
	r    *bufio.Reader
	next int64 // the block r reads next
	buf  [SlotSize]byte
}

func newCursor(s *slotFile) (*cursor, error) {
	fi, err := s.f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", s.name, err)
	}
	return &cursor{s: s, size: fi.Size()}, nil
}

// blocks returns the number of blocks the file has slots for.
func (c *cursor) blocks() int64 { return c.size / SlotSize }

// at returns the slot of block, which must not be below the last asked.
func (c *cursor) at(block int64) (Slot, error) {
	if block >= c.blocks() {
		return Slot{}, nil
	}
	if c.r == nil || block < c.next || block-c.next > 4096 {
		c.r = bufio.NewReaderSize(io.NewSectionReader(c.s.f, block*SlotSize, c.size-block*SlotSize), 256*SlotSize)
		c.next = block
	}
	for ; c.next <= block; c.next++ {
		if _, err := io.ReadFull(c.r, c.buf[:]); err != nil {
			return Slot{}, fmt.Errorf("read %s: %w", c.s.name, err)
		}
	}
	return parseSlot(c.buf[:]), nil
}
