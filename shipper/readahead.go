package shipper

import (
	"bytes"
	"context"
	"io"
	"sync"

	"github.com/coldship/coldship/archive"
)

// tableHead is how much of a shipment's block table OpenShipment reads
// ahead: the whole table of a shipment of up to ~13,000 blocks.
const tableHead = 1 << 20

// readAhead holds what OpenShipment reads while it reads the header, the
// manifest and the inventory, before it knows it needs them: the key
// object of slot 0 (the slot of every shipment whose first attempt ended
// it) and the first tableHead bytes of the block table. On a long link
// each read would otherwise wait for the manifest, a round of requests
// after it. The bytes are only kept: they are checked as any read of the
// objects is (the key against the inventory and the manifest, the table
// against the manifest as it streams). Each is used once.
type readAhead struct {
	mu    sync.Mutex
	key0  func() ([]byte, error)
	table func() ([]byte, error)
}

// start begins the reads of shipment id's objects at tr.
func (ra *readAhead) start(ctx context.Context, tr Transport, id string) {
	ra.key0 = goRead(func() ([]byte, error) {
		return getObject(ctx, tr, id+"/"+archive.KeyObject(0), archive.MaxKeyObject)
	})
	ra.table = goRead(func() ([]byte, error) {
		rc, err := tr.Open(ctx, id+"/"+archive.BlocksObject, 0, tableHead)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		return io.ReadAll(rc)
	})
}

// goRead runs read on a goroutine of its own and returns what waits for
// its outcome.
func goRead[T any](read func() (T, error)) func() (T, error) {
	type result struct {
		b   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		b, err := read()
		ch <- result{b, err}
	}()
	return sync.OnceValues(func() (T, error) {
		r := <-ch
		return r.b, r.err
	})
}

// take returns the outcome of a read ahead, once; nil, false when there is
// none (or it was taken) or the read failed (the caller reads the object
// itself and reports its own error).
func (ra *readAhead) take(which *func() ([]byte, error)) ([]byte, bool) {
	ra.mu.Lock()
	wait := *which
	*which = nil
	ra.mu.Unlock()
	if wait == nil {
		return nil, false
	}
	b, err := wait()
	return b, err == nil
}

// keyObject returns the bytes read ahead for key object name, if it is
// that of slot 0 and was read.
func (ra *readAhead) keyObject(name string) ([]byte, bool) {
	if ra == nil || name != archive.KeyObject(0) {
		return nil, false
	}
	return ra.take(&ra.key0)
}

// tableReader returns a reader of the block table name from the bytes
// read ahead and, past them, from tr (opened only if read past them); false
// when nothing was read ahead. It reads the object as it is, shorter or
// longer than the manifest says, as a read from tr would: the table's
// reader checks its length by reading one byte past it.
func (ra *readAhead) tableReader(ctx context.Context, tr Transport, name string) (io.ReadCloser, bool) {
	if ra == nil {
		return nil, false
	}
	head, ok := ra.take(&ra.table)
	if !ok {
		return nil, false
	}
	if len(head) < tableHead { // the whole object
		return io.NopCloser(bytes.NewReader(head)), true
	}
	rest := &lazyOpen{open: func() (io.ReadCloser, error) { return tr.Open(ctx, name, int64(len(head)), -1) }}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(head), rest), rest}, true
}

// lazyOpen opens its object on the first Read.
type lazyOpen struct {
	open func() (io.ReadCloser, error)
	rc   io.ReadCloser
	err  error
}

func (l *lazyOpen) Read(p []byte) (int, error) {
	if l.rc == nil && l.err == nil {
		l.rc, l.err = l.open()
	}
	if l.err != nil {
		return 0, l.err
	}
	return l.rc.Read(p)
}

func (l *lazyOpen) Close() error {
	if l.rc != nil {
		return l.rc.Close()
	}
	return nil
}
