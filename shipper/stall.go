package shipper

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
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

// GiveUpUnacked makes the kernel give the connection up, too, once data
// written to it has gone unacknowledged for Timeout (TCP_USER_TIMEOUT;
// nothing for a connection that is not TCP). The deadlines cannot see
// that for a writer whose last writes fit in the socket buffers and who
// now only waits (elsewhere) for the peer's word about them: the kernel
// would retransmit them for many minutes. Broken then tells.
func (c *StallConn) GiveUpUnacked() {
	c.control(func(fd int) {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(c.Timeout.Milliseconds()))
	})
}

// Broken returns the error the kernel holds for the connection, naming
// the peer, if it gave the connection up (see GiveUpUnacked) or the peer
// reset it since the last Read or Write; else nil.
func (c *StallConn) Broken() error {
	var errno int
	c.control(func(fd int) { errno, _ = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR) })
	switch err := syscall.Errno(errno); {
	case errno == 0:
		return nil
	case err == syscall.ETIMEDOUT:
		return c.stalled(err)
	default:
		return fmt.Errorf("%s: %w", c.Peer, err)
	}
}

// control runs fn on the connection's socket, if it has one.
func (c *StallConn) control(fn func(fd int)) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return
	}
	if raw, err := sc.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) { fn(int(fd)) })
	}
}

// stalled says what a deadline of StallConn, or the kernel giving the
// connection up (GiveUpUnacked), means.
func (c *StallConn) stalled(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, syscall.ETIMEDOUT) {
		return fmt.Errorf("%w: %s sent and took nothing for %v (a stopped peer, or a link that drops packets): %w", ErrStalled, c.Peer, c.Timeout, err)
	}
	return err
}
