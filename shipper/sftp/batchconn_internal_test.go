package sftp

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair is a connected pair of loopback TCP connections.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestBatchConnBytes: whatever the sizes of the writes, the peer reads the
// same bytes in the same order, and the buffer the caller passed may be
// reused at once.
func TestBatchConnBytes(t *testing.T) {
	client, server := tcpPair(t)
	b := newBatchConn(client)
	rng := rand.New(rand.NewPCG(1, 2))
	want := make([]byte, 8<<20)
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	got := make(chan []byte, 1)
	go func() {
		data := make([]byte, len(want))
		n, _ := io.ReadFull(server, data)
		got <- data[:n]
	}()
	scratch := make([]byte, 0, 2*batchLimit)
	for off := 0; off < len(want); {
		n := min(len(want)-off, []int{1, 4, 4092, 32 << 10, batchLimit + 7}[rng.IntN(5)])
		scratch = append(scratch[:0], want[off:off+n]...)
		if w, err := b.Write(scratch); w != n || err != nil {
			t.Fatalf("Write(%d bytes) = %d, %v", n, w, err)
		}
		clear(scratch[:n]) // the caller's buffer is its own again
		off += n
	}
	select {
	case data := <-got:
		if !bytes.Equal(data, want) {
			t.Fatalf("peer read %d bytes, not the %d written in order", len(data), len(want))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the peer did not get every byte")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestBatchConnStuckPeer: a peer that stops reading holds Write once the
// buffer is full, and Close releases it at once with an error.
func TestBatchConnStuckPeer(t *testing.T) {
	client, _ := net.Pipe() // nobody reads the other end
	b := newBatchConn(client)
	errc := make(chan error, 1)
	go func() {
		chunk := make([]byte, 32<<10)
		for {
			if _, err := b.Write(chunk); err != nil {
				errc <- err
				return
			}
		}
	}()
	select {
	case err := <-errc:
		t.Fatalf("Write returned %v before the buffer filled", err)
	case <-time.After(200 * time.Millisecond):
	}
	b.mu.Lock()
	held := len(b.buf)
	b.mu.Unlock()
	if held > batchLimit {
		t.Errorf("%d bytes gathered, limit %d", held, batchLimit)
	}
	closed := make(chan struct{})
	go func() { b.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited for a peer that does not read")
	}
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.ErrClosedPipe) {
			t.Errorf("Write after Close: %v, want a closed-connection error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Write still blocked after Close")
	}
}

// TestBatchConnWriteError: the socket's write error (here an expired
// deadline, as connect uses to interrupt a handshake) reaches the Write
// calls after it, and stays.
func TestBatchConnWriteError(t *testing.T) {
	client, _ := net.Pipe()
	b := newBatchConn(client)
	defer b.Close()
	b.SetDeadline(time.Unix(1, 0))
	var err error
	for i := 0; i < 1000 && err == nil; i++ {
		_, err = b.Write([]byte("packet"))
		time.Sleep(time.Millisecond)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write after a failed write: %v, want the deadline error", err)
	}
	if _, err := b.Write([]byte("again")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("second Write: %v, want the same error", err)
	}
}
