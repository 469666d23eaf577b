package live

// bufferPool hands out fixed-size buffers and blocks when all are in use:
// it bounds the memory of both engines whatever the size of the input.
type bufferPool struct {
	ch   chan []byte
	size int
}

func newBufferPool(count, size int) *bufferPool {
	p := &bufferPool{ch: make(chan []byte, count), size: size}
	for range count {
		p.ch <- nil // allocated on first use
	}
	return p
}

func (p *bufferPool) get(done <-chan struct{}) ([]byte, bool) {
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

func (p *bufferPool) put(b []byte) {
	if b == nil {
		return
	}
	if cap(b) < p.size {
		panic("live: internal error: foreign buffer returned to pool")
	}
	p.ch <- b[:p.size]
}
