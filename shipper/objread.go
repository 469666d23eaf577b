package shipper

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/internal/atonce"
)

// The key-less checks (verify without a key, verify --all) read whole
// objects and compare them with their inventory entries. Read one after
// the other, and each over one SFTP channel, a 1 GiB shipment took a
// minute at 100 ms (a channel moves a window, ~1.4 MiB, per round trip):
// readObjects reads many at once, and cuts the large ones into pieces as
// the block reader does (pieceLimit), combining the pieces' CRC32Cs.

// objectRef is an object to read and the inventory entry it is checked
// against (its size and the kind of sum it records).
type objectRef struct {
	name string
	want archive.InventoryEntry
}

// objectPiece is [off, off+n) of object obj of a read; n is -1 for an
// object's last piece, read to the object's end, so that an object longer
// than its entry says is seen to be.
type objectPiece struct {
	obj    int
	off, n int64
}

// pieceSum is what reading a piece found.
type pieceSum struct {
	n   int64
	crc uint32 // CRC32C objects
	sum string // BLAKE3 objects (never cut)
	err error  // the object is not there (wraps ErrNotFound or ErrNotRegular)
}

// readObjects reads the objects of refs, streams reads at once, and
// returns what each holds: its size and its sum in the form of its entry
// (entrySum); an object that is not there is a check with err set. An
// error is returned when an object cannot be read. streams 0 is
// verifyAtOnce.
func readObjects(ctx context.Context, tr Transport, refs []objectRef, streams int, cnt *Counters) ([]*objectCheck, error) {
	if streams <= 0 {
		streams = verifyAtOnce
	}
	pieces := cutObjects(refs, streams)
	sums := make([]pieceSum, len(pieces))
	err := atonce.Each(len(pieces), streams, func(i int) error {
		p := pieces[i]
		s, err := readPiece(ctx, tr, refs[p.obj], p.off, p.n)
		cnt.Done.Add(s.n)
		cnt.Shipped.Add(s.n)
		sums[i] = s
		return err
	})
	if err != nil {
		return nil, err
	}
	checks := make([]*objectCheck, len(refs))
	crcs := make([]uint32, len(refs))
	for i, p := range pieces {
		s, c := sums[i], checks[p.obj]
		if c == nil {
			c = &objectCheck{sum: s.sum}
			c.crc, _ = entrySum(refs[p.obj].want)
			checks[p.obj] = c
		}
		c.err = cmp.Or(c.err, s.err)
		crcs[p.obj] = archive.CRC32CCombine(crcs[p.obj], s.crc, s.n)
		c.size += s.n
	}
	for i, c := range checks {
		if c.crc {
			c.sum = archive.CRC32CString(crcs[i])
		}
	}
	return checks, nil
}

// matches reports whether c is the object want describes: present, of
// its size, with its sum (of the kind it records).
func (c *objectCheck) matches(want archive.InventoryEntry) bool {
	crc, sum := entrySum(want)
	return c.err == nil && c.size == want.Size && c.crc == crc && c.sum == sum
}

// cutObjects cuts refs into the pieces readObjects reads: a CRC32C object
// into pieces of at least pieceLimit's length for the bytes of all of them
// over streams, any other object whole.
func cutObjects(refs []objectRef, streams int) []objectPiece {
	var total int64
	for _, r := range refs {
		total += max(r.want.Size, 0)
	}
	limit := max(minPiece, total/int64(streams))
	var pieces []objectPiece
	for i, r := range refs {
		if crc, _ := entrySum(r.want); !crc || r.want.Size < 2*limit {
			pieces = append(pieces, objectPiece{i, 0, -1})
			continue
		}
		k := r.want.Size / limit
		for j := range k {
			off, end := r.want.Size*j/k, r.want.Size*(j+1)/k
			n := end - off
			if j == k-1 {
				n = -1
			}
			pieces = append(pieces, objectPiece{i, off, n})
		}
	}
	return pieces
}

// readPiece reads [off, off+n) of ref's object (n -1: to its end) and sums
// it as ref's entry asks.
func readPiece(ctx context.Context, tr Transport, ref objectRef, off, n int64) (pieceSum, error) {
	rc, err := tr.Open(ctx, ref.name, off, n)
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrNotRegular) {
		return pieceSum{err: err}, nil
	} else if err != nil {
		return pieceSum{}, fmt.Errorf("open %s: %w", ref.name, err)
	}
	defer rc.Close()
	crc, _ := entrySum(ref.want)
	var s pieceSum
	if crc {
		h := archive.NewCRC32C()
		s.n, err = io.Copy(h, rc)
		s.crc = h.Sum32()
	} else {
		s.n, s.sum, err = objectSum(rc, false)
	}
	if err != nil {
		return s, segmentReadError(ref.name, err)
	}
	return s, nil
}
