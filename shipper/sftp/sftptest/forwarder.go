package sftptest

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Forwarder relays TCP connections from a loopback port to a target. It can
// cut every live connection at once and delay the data in both directions,
// to emulate a long link.
type Forwarder struct {
	ln     net.Listener
	target string
	delay  atomic.Int64 // one-way, in nanoseconds
	drop   atomic.Bool  // Blackhole: data read is discarded

	accepted atomic.Int64

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// NewForwarder listens on a free loopback port and forwards to target.
func NewForwarder(target string) (*Forwarder, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &Forwarder{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

// Addr is the address to dial.
func (f *Forwarder) Addr() string { return f.ln.Addr().String() }

// Port is the port of Addr.
func (f *Forwarder) Port() int { return f.ln.Addr().(*net.TCPAddr).Port }

// Accepted is the number of connections accepted so far.
func (f *Forwarder) Accepted() int { return int(f.accepted.Load()) }

// SetDelay delays the data forwarded from now on by oneWay in each
// direction, so that a round trip takes 2*oneWay longer. Bandwidth stays
// unlimited, which leaves the protocol's flow-control windows as the limit,
// as on a long fat link.
func (f *Forwarder) SetDelay(oneWay time.Duration) { f.delay.Store(int64(oneWay)) }

// Blackhole makes every connection, live or new, silently lose the data it
// carries while on is true, without closing anything: a link that died
// where no one tells the ends (a NAT that forgot it, a cable pulled
// between two switches).
func (f *Forwarder) Blackhole(on bool) { f.drop.Store(on) }

// CloseAll closes every live connection, both sides.
func (f *Forwarder) CloseAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.Close()
		delete(f.conns, c)
	}
}

// Close stops listening and closes every connection.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	err := f.ln.Close()
	f.CloseAll()
	f.wg.Wait()
	return err
}

func (f *Forwarder) track(cs ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	for _, c := range cs {
		f.conns[c] = struct{}{}
	}
	return true
}

func (f *Forwarder) untrack(cs ...net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range cs {
		c.Close()
		delete(f.conns, c)
	}
}

func (f *Forwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.accepted.Add(1)
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			up, err := net.DialTimeout("tcp", f.target, 5*time.Second)
			if err != nil {
				c.Close() // the server is down: like a refused connection
				return
			}
			if !f.track(c, up) {
				c.Close()
				up.Close()
				return
			}
			var wg sync.WaitGroup
			wg.Go(func() { f.relay(up, c) })
			wg.Go(func() { f.relay(c, up) })
			wg.Wait()
			f.untrack(c, up)
		}()
	}
}

type chunk struct {
	due  time.Time
	data []byte
}

// relay copies src to dst, each chunk no earlier than the delay after it
// was read. When src ends, dst's write side is closed; when dst fails, both
// are closed.
func (f *Forwarder) relay(dst, src net.Conn) {
	queue := make(chan chunk, 512)
	go func() {
		defer close(queue)
		for {
			buf := make([]byte, 64<<10)
			n, err := src.Read(buf)
			if n > 0 && !f.drop.Load() {
				queue <- chunk{time.Now().Add(time.Duration(f.delay.Load())), buf[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	for ch := range queue {
		if d := time.Until(ch.due); d > 0 {
			time.Sleep(d)
		}
		if _, err := dst.Write(ch.data); err != nil {
			dst.Close()
			src.Close()
			for range queue {
			}
			return
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}
