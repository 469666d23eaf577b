package s3test

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// SlowProxy forwards TCP connections to the server, each connection and
// direction limited to rate bytes per second, as a link to a distant store
// limits a single stream. It returns the proxy's endpoint and stops with
// the test.
func (s *Server) SlowProxy(t testing.TB, rate int) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("s3test: proxy: %v", err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	track := func(c net.Conn, add bool) {
		mu.Lock()
		defer mu.Unlock()
		if add {
			conns[c] = true
		} else {
			delete(conns, c)
		}
	}
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", s.addr)
			if err != nil {
				c.Close()
				continue
			}
			track(c, true)
			track(up, true)
			wg.Add(2)
			pipe := func(dst, src net.Conn) {
				defer wg.Done()
				slowCopy(dst, src, rate)
				dst.Close()
				src.Close()
				track(dst, false)
				track(src, false)
			}
			go pipe(up, c)
			go pipe(c, up)
		}
	}()
	return "http://" + l.Addr().String()
}

// slowCopy copies src to dst at no more than rate bytes per second.
func slowCopy(dst io.Writer, src io.Reader, rate int) {
	buf := make([]byte, 32<<10)
	start := time.Now()
	var sent int64
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			sent += int64(n)
			if due := time.Duration(float64(sent) / float64(rate) * float64(time.Second)); due > time.Since(start) {
				time.Sleep(due - time.Since(start))
			}
		}
		if err != nil {
			return
		}
	}
}
