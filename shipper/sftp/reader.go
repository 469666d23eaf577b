package sftp

import (
	"context"
	"errors"
	"io"
	"slices"
	"sync"

	sftpclient "github.com/pkg/sftp"
)

// readChunk is how much one read of a rangeReader asks for: a few
// requests' worth, which the SFTP client sends at once. readAhead is how
// much a rangeReader keeps asked for beyond the chunk being read: the SSH
// channel's window of 2 MiB, which is all the server can send per round
// trip. More would only wait at the server, in buffers held here.
const (
	readChunk = 512 << 10
	readAhead = 2 << 20
)

// readBudget bounds the chunk buffers of all rangeReaders of a Transport
// together. Each reader owns the chunk it is reading; the chunks it reads
// ahead are lent while the lent ones and a chunk owned per stream stay
// within the budget. Without it every reader kept its own window asked
// for: a receive over 32 channels held up to 96 MiB of reads, over 64
// twice that, and its peak RSS passed 256 MiB. A receive reads its
// segments in turns, a record at a time, so each reader needs about a
// record ready and one asked for: 64 MiB is what a receive over 32
// channels (MaxAutoStreams) at 200 ms RTT needed to take as long as with
// a window each (with 48 MiB: 13% longer). Beyond 32 transfers each gets
// less.
const readBudget = 64 << 20

// readBuffers are the chunk buffers of a Transport's reads, kept for
// reuse. A reader always gets a chunk of its own, whatever the others
// hold, so that no reader waits for another's consumer; chunks for
// read-ahead are lent within the budget, to the readers waiting for one
// in the order they asked (waking them all at once served the last one
// first, and a receive at 100 ms took 20% longer). Memory is bounded by
// the budget, plus a chunk for each reader open beyond one per stream.
type readBuffers struct {
	limit   int // chunks
	reserve int // chunks kept for the readers' own: one per stream

	mu       sync.Mutex
	free     [][]byte
	owned    int
	lent     int
	queue    []chan []byte // readers waiting for a chunk to lend, first first
	peakOut  int           // the most owned and lent at once (tests)
	peakLent int
}

func newReadBuffers(budget, streams int) *readBuffers {
	return &readBuffers{limit: budget / readChunk, reserve: streams}
}

// lendable says whether the budget allows one more chunk lent: room is
// kept for a chunk owned by each stream's reader; b.mu is held.
func (b *readBuffers) lendable() bool {
	return b.lent+max(b.owned, b.reserve) < b.limit
}

// alloc returns a free buffer or a new one; b.mu is held.
func (b *readBuffers) alloc() []byte {
	b.peakOut = max(b.peakOut, b.owned+b.lent)
	b.peakLent = max(b.peakLent, b.lent)
	if n := len(b.free); n > 0 {
		buf := b.free[n-1]
		b.free = b.free[:n-1]
		return buf
	}
	return make([]byte, readChunk)
}

// own returns a reader's own buffer of readChunk bytes, at once.
func (b *readBuffers) own() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.owned++
	return b.alloc()
}

// lend returns a buffer for read-ahead if the budget allows and no reader
// waits for one; or else nil, and wait (empty, of capacity 1) gets the
// buffer when its turn comes, unless cancel is called first.
func (b *readBuffers) lend(wait chan []byte) []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queue) == 0 && b.lendable() {
		b.lent++
		return b.alloc()
	}
	b.queue = append(b.queue, wait)
	return nil
}

// cancel gives up a wait of lend, giving back the buffer if it came.
func (b *readBuffers) cancel(wait chan []byte) {
	b.mu.Lock()
	if i := slices.Index(b.queue, wait); i >= 0 {
		b.queue = slices.Delete(b.queue, i, i+1)
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	b.put(<-wait, true) // sent under b.mu, before it was taken here
}

// put takes back a buffer from own or, with lent, from lend, and lends
// it on to the first reader waiting, if the budget allows.
func (b *readBuffers) put(buf []byte, lent bool) {
	if cap(buf) != readChunk {
		panic("sftp: internal error: foreign buffer returned to the read buffers")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.free = append(b.free, buf[:readChunk])
	if lent {
		b.lent--
	} else {
		b.owned--
	}
	for len(b.queue) > 0 && b.lendable() {
		wait := b.queue[0]
		b.queue = b.queue[1:]
		b.lent++
		wait <- b.alloc()
	}
}

// rangeReader streams the bytes [off, off+n) of a remote file: reads of a
// chunk each, handed on in order; while one chunk is read, up to
// readAhead more are asked for, as the Transport's budget allows. Memory
// is its own chunk and what the budget lends it, whatever the range, and
// nothing beyond the range is read. Read and Close are not to be called
// concurrently.
type rangeReader struct {
	ctx     context.Context
	t       *Transport
	c       *conn
	f       *sftpclient.File
	p       string
	release func(err error) // set by Open: gives the stream back

	chunks chan chan chunk // in order; closed once every read is asked for
	own    chan []byte     // the reader's own buffer, when free
	ahead  chan struct{}   // a token per chunk this reader has lent
	wait   chan []byte     // where a chunk lent comes
	stop   chan struct{}
	issued chan struct{} // closed when the issuer ends
	reads  sync.WaitGroup

	next chan chunk // the chunk Read waits for, if it stopped waiting
	cur  []byte     // what is left of the chunk being read
	held chunk      // its buffer
	err  error      // sticky
	once sync.Once
}

type chunk struct {
	buf  []byte
	lent bool // from the Transport's budget, else the reader's own
	n    int
	err  error
}

// newRangeReader returns a reader of head, already read into own (a
// buffer of t.reads, which the reader then owns), and then of the n bytes
// from off.
func newRangeReader(ctx context.Context, t *Transport, c *conn, f *sftpclient.File, p string, own, head []byte, off, n int64) *rangeReader {
	size := max(c.packet, readChunk/c.packet*c.packet)
	depth := max(readAhead/size, 1)
	r := &rangeReader{
		ctx: ctx, t: t, c: c, f: f, p: p, release: func(error) {},
		chunks: make(chan chan chunk, depth+1),
		own:    make(chan []byte, 1),
		ahead:  make(chan struct{}, depth),
		wait:   make(chan []byte, 1),
		stop:   make(chan struct{}),
		issued: make(chan struct{}),
		cur:    head,
		held:   chunk{buf: own},
	}
	go r.issue(off, off+n, size)
	return r
}

// issue asks for the chunks of [off, end) in order, as buffers come free.
func (r *rangeReader) issue(off, end int64, size int) {
	defer close(r.issued)
	defer close(r.chunks)
	for off < end {
		buf, lent, ok := r.take()
		if !ok {
			return
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
			res <- chunk{buf, lent, m, err}
		}(off)
		off += int64(n)
	}
}

// take returns a buffer for the next chunk: the reader's own once Read
// is done with it, or one lent by the Transport, if this reader reads
// ahead less than readAhead and the budget allows; whichever comes first.
func (r *rangeReader) take() (buf []byte, lent, ok bool) {
	select {
	case buf = <-r.own:
		return buf, false, true
	default:
	}
	select {
	case buf = <-r.own:
		return buf, false, true
	case <-r.stop:
		return nil, false, false
	case r.ahead <- struct{}{}:
	}
	if buf = r.t.reads.lend(r.wait); buf != nil {
		return buf, true, true
	}
	select {
	case buf = <-r.wait:
		return buf, true, true
	case buf = <-r.own:
		ok = true
	case <-r.stop:
	}
	r.t.reads.cancel(r.wait)
	<-r.ahead
	return buf, false, ok
}

// giveBack returns a chunk's buffer: to the reader if it is its own and
// the reader goes on, else to the Transport.
func (r *rangeReader) giveBack(ck chunk, closing bool) {
	switch {
	case ck.buf == nil:
	case ck.lent:
		r.t.reads.put(ck.buf, true)
		<-r.ahead
	case closing:
		r.t.reads.put(ck.buf, false)
	default:
		r.own <- ck.buf
	}
}

func (r *rangeReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		r.giveBack(r.held, false)
		r.held = chunk{}
		if r.next == nil {
			var ok bool
			select {
			case r.next, ok = <-r.chunks:
			case <-r.ctx.Done():
				r.err = r.ctx.Err()
				continue
			}
			if !ok {
				r.err = io.EOF
				continue
			}
		}
		select {
		case ck := <-r.next:
			r.next = nil
			r.held = ck
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

// Close stops the reads, waits for those under way, gives every buffer
// back, closes the remote file (without waiting for the server's answer)
// and gives the stream back.
func (r *rangeReader) Close() error {
	r.once.Do(func() {
		close(r.stop)
		<-r.issued
		r.reads.Wait()
		r.cur = nil
		r.giveBack(r.held, true)
		r.held = chunk{}
		if r.next != nil {
			r.giveBack(<-r.next, true)
		}
		for res := range r.chunks {
			r.giveBack(<-res, true)
		}
		select {
		case buf := <-r.own:
			r.t.reads.put(buf, false)
		default:
		}
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
