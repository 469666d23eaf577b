package shipper

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/coldship/coldship/archive"
)

// A key object is never overwritten: a rerun that wrote its new key over
// keys/0000 would destroy the key of the segments already uploaded. Each
// attempt takes a slot above every slot its journal recorded and every key
// object at the destination, and creates it exclusively.

// maxKeySlot is the highest slot a key object may have (4 digits).
const maxKeySlot = 9999

// putKeySlot writes wrapped to the first free slot from slot on,
// recording each slot in the journal before it is written, and returns
// the slot it took.
func putKeySlot(ctx context.Context, tr Transport, j *journal, id string, slot int, wrapped []byte) (int, error) {
	d := archive.ObjectDigest(wrapped)
	for ; slot <= maxKeySlot; slot++ {
		j.addSlot(slot, d)
		err := putNew(ctx, tr, id+"/"+archive.KeyObject(slot), wrapped)
		if errors.Is(err, ErrObjectExists) {
			continue
		}
		return slot, err
	}
	return 0, fmt.Errorf("shipment %s: no key slot left (%d attempts)", id, maxKeySlot+1)
}

// putNew creates an object that must not exist yet: with the transport's
// PutNew where it has one; otherwise it checks that nothing is there
// before, and reads the object back after, so that a race with another
// writer fails instead of leaving a key that does not open our records.
func putNew(ctx context.Context, tr Transport, name string, b []byte) error {
	if ec, ok := tr.(ExclusiveCreator); ok {
		return ec.PutNew(ctx, name, bytes.NewReader(b), int64(len(b))) // its error names the object
	}
	if _, err := tr.Stat(ctx, name); err == nil {
		return fmt.Errorf("put %s: %w", name, ErrObjectExists)
	} else if !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("stat %s: %w", name, err)
	}
	if err := tr.Put(ctx, name, bytes.NewReader(b), int64(len(b))); err != nil {
		return err // it names the object
	}
	got, err := getObject(ctx, tr, name, int64(len(b))+1)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, b) {
		return fmt.Errorf("put %s: another run wrote it at the same time: %w", name, ErrPermanent)
	}
	return nil
}
