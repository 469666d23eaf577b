package shipper

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// StallConn fails a Read or Write of a connection that has moved nothing
// either way for Timeout, with an error that names the peer (Peer, such
// as "the S3 server 127.0.0.1:9000" or "data connection 2 to
// host:port"). Every byte read or written pushes both deadlines on, so a
// slow transfer that is moving never fails, while a peer that stopped
// reading or sending (a process stopped, a link or firewall that drops
// packets without closing the connection) fails within Timeout instead
// of blocking forever: TCP itself retransmits for many minutes, and a
// writer blocks for good once the socket buffers are full.
//
// It is the one rule for connections that carry no keepalives of their
// own: S3's HTTP connections and the TCP lanes of send --live.
type StallConn struct {
	net.Conn
	Timeout time.Duration
	Peer    string
}

// ErrStalled marks a connection given up by StallConn.
var ErrStalled = errors.New("connection stalled")

func (c *StallConn) Read(p []byte) (int, error) {
	c.Conn.SetDeadline(time.Now().Add(c.Timeout))
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.Conn.SetDeadline(time.Now().Add(c.Timeout))
	}
	return n, c.stalled(err)
}

// Write keeps writing while each attempt moves some bytes: a deadline
// ends a Write that is only slow, not stalled, with part of p written.
func (c *StallConn) Write(p []byte) (int, error) {
	done := 0
	for {
		c.Conn.SetDeadline(time.Now().Add(c.Timeout))
		n, err := c.Conn.Write(p[done:])
		done += n
		if err != nil && n > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		return done, c.stalled(err)
	}
}

// stalled says what a deadline of StallConn means.
func (c *StallConn) stalled(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w: %s sent and took nothing for %v (a stopped peer, or a link that drops packets): %w", ErrStalled, c.Peer, c.Timeout, err)
	}
	return err
}
