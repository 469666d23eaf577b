// Package bufpool hands out fixed-size buffers and blocks when all are in
// use: it is what bounds the memory of the send, receive and live
// pipelines, whatever the size of the input.
package bufpool

// Pool is a bounded set of buffers of one size.
type Pool struct {
	ch   chan []byte
	size int
}

// New returns a pool of count buffers of size bytes, allocated on first use.
func New(count, size int) *Pool {
	p := &Pool{ch: make(chan []byte, count), size: size}
	for range count {
		p.ch <- nil
	}
	return p
}

// Get returns a buffer, waiting for one to be free; false if done closes
// first.
func (p *Pool) Get(done <-chan struct{}) ([]byte, bool) {
	select {
	case b := <-p.ch:
		if b == nil {
			b = make([]byte, p.size)
		}
		return b[:p.size], true
	case <-done:
		return nil, false
	}
}

// Size returns the size of the buffers.
func (p *Pool) Size() int { return p.size }

// Put returns a buffer from Get to the pool; nil is ignored.
func (p *Pool) Put(b []byte) {
	if b == nil {
		return
	}
	if cap(b) < p.size {
		panic("bufpool: internal error: foreign buffer returned to pool")
	}
	p.ch <- b[:p.size]
}
