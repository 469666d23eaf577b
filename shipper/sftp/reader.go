package sftp

import (
	"context"
	"errors"
	"io"
	"sync"

	sftpclient "github.com/pkg/sftp"
)

// readChunk is how much one read of a rangeReader asks for: a few
// requests' worth, which the SFTP client sends at once. readAhead is how
// much a rangeReader keeps asked for: the SSH channel's window of 2 MiB,
// which is all the server can send per round trip. More would only wait
// at the server, in buffers held here (a receive at 100 ms RTT keeps 32
// readers busy).
const (
	readChunk = 512 << 10
	readAhead = 2 << 20
)

// rangeReader streams the bytes [off, off+n) of a remote file: reads of
// a chunk each, readAhead bytes of them in flight, handed on in order. Memory is bounded by its chunk buffers, whatever the range, and
// nothing beyond the range is read.
type rangeReader struct {
	ctx     context.Context
	t       *Transport
	c       *conn
	f       *sftpclient.File
	p       string
	release func(err error) // set by Open: gives the stream back

	chunks chan chan chunk // in order; closed once every read is asked for
	pool   chan []byte     // the buffers; a nil one is made when taken
	stop   chan struct{}
	issued chan struct{} // closed when the issuer ends
	reads  sync.WaitGroup

	cur  []byte // what is left of the chunk being read
	held []byte // its buffer
	err  error  // sticky
	once sync.Once
}

type chunk struct {
	buf []byte
	n   int
	err error
}

// newRangeReader returns a reader of head, already read, and then of the
// n bytes from off.
func newRangeReader(ctx context.Context, t *Transport, c *conn, f *sftpclient.File, p string, head []byte, off, n int64) *rangeReader {
	size := max(c.packet, readChunk/c.packet*c.packet)
	depth := max(readAhead/size, 2) + 1 // one is being read
	r := &rangeReader{
		ctx: ctx, t: t, c: c, f: f, p: p, release: func(error) {},
		chunks: make(chan chan chunk, depth),
		pool:   make(chan []byte, depth),
		stop:   make(chan struct{}),
		issued: make(chan struct{}),
		cur:    head,
	}
	for range depth {
		r.pool <- nil
	}
	go r.issue(off, off+n, size)
	return r
}

// issue asks for the chunks of [off, end) in order, as buffers come free.
func (r *rangeReader) issue(off, end int64, size int) {
	defer close(r.issued)
	defer close(r.chunks)
	for off < end {
		var buf []byte
		select {
		case buf = <-r.pool:
		case <-r.stop:
			return
		}
		if buf == nil {
			buf = make([]byte, size)
		}
		n := int(min(int64(size), end-off))
		res := make(chan chunk, 1)
		r.chunks <- res // room: one per buffer
		r.reads.Add(1)
		go func(off int64) {
			defer r.reads.Done()
			m, err := r.f.ReadAt(buf[:n], off)
			switch {
			case m == n:
				err = nil
			case err == nil || err == io.EOF:
				err = r.t.shortRead(r.c, r.f, r.p)
			default:
				err = r.t.classify(r.c, "read", r.p, err)
			}
			res <- chunk{buf, m, err}
		}(off)
		off += int64(n)
	}
}

func (r *rangeReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.held != nil {
			r.pool <- r.held
			r.held = nil
		}
		var res chan chunk
		var ok bool
		select {
		case res, ok = <-r.chunks:
		case <-r.ctx.Done():
			r.err = r.ctx.Err()
			continue
		}
		if !ok {
			r.err = io.EOF
			continue
		}
		select {
		case ck := <-res:
			r.held = ck.buf
			r.cur, r.err = ck.buf[:ck.n], ck.err
			if ck.err != nil {
				r.cur = nil
			}
		case <-r.ctx.Done():
			r.err = r.ctx.Err()
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// Close stops the reads, waits for those under way, closes the remote file
// (without waiting for the server's answer) and gives the stream back.
func (r *rangeReader) Close() error {
	r.once.Do(func() {
		close(r.stop)
		<-r.issued
		r.reads.Wait()
		go r.f.Close()
		err := r.err
		if errors.Is(err, io.EOF) {
			err = nil
		}
		r.release(err)
		if r.err == nil {
			r.err = errReaderClosed
		}
	})
	return nil
}

var errReaderClosed = errors.New("read from a closed object reader")
