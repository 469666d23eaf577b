package shipper_test

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coldship/coldship/shipper"
)

// TestStallConnBroken: a connection that its peer reset while the writer
// had nothing more to write is found by Broken, naming the peer; a healthy
// one is not, and setting the user timeout leaves it healthy.
func TestStallConnBroken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *net.TCPConn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c.(*net.TCPConn)
		}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := &shipper.StallConn{Conn: raw, Timeout: 5 * time.Second, Peer: "the test peer"}
	defer c.Close()
	c.GiveUpUnacked()
	peer := <-accepted
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := c.Broken(); err != nil {
		t.Fatalf("a healthy connection: %v", err)
	}
	peer.SetLinger(0) // close with a reset
	peer.Close()
	var broken error
	for deadline := time.Now().Add(10 * time.Second); broken == nil && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		broken = c.Broken()
	}
	if !errors.Is(broken, syscall.ECONNRESET) || !strings.Contains(broken.Error(), "the test peer") {
		t.Errorf("Broken() = %v, want a reset naming the peer", broken)
	}
}
