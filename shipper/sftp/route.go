package sftp

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/coldship/coldship/internal/childenv"
)

// route is how the SSH connections of a Transport reach the destination:
// a TCP connection; the standard input and output of its ProxyCommand, a
// process of its own for each connection; or a channel through the jump
// hosts of its ProxyJump, whose connections all of them share.
type route struct {
	command string      // ProxyCommand, tokens expanded
	jumps   []*endpoint // ProxyJump, in order
	stderr  io.Writer

	mu      sync.Mutex
	clients []*ssh.Client // the jump hosts' connections, once made
	done    chan struct{} // closed once the last of them ends
	closed  bool
}

func newRoute(d *destination, cfg Config) (*route, error) {
	r := &route{command: d.proxyCommand, stderr: cfg.Stderr}
	for _, hop := range d.jumps {
		e, err := newEndpoint(hop, cfg)
		if err != nil {
			return nil, fmt.Errorf("jump host %s: %w", hop.alias, err)
		}
		r.jumps = append(r.jumps, e)
	}
	return r, nil
}

// tunnelled says whether the connections travel inside something else
// (an SSH channel of a jump host, most often), which may cap each one's
// throughput with a window of its own.
func (r *route) tunnelled() bool { return r.command != "" || len(r.jumps) > 0 }

// dial opens a connection to d that carries bytes both ways.
func (r *route) dial(ctx context.Context, d *destination, deadline time.Time, banner ssh.BannerCallback) (net.Conn, error) {
	switch {
	case r.command != "":
		c, err := dialCommand(r.command, d.addr(), r.stderr)
		if err != nil {
			return nil, fmt.Errorf("connect to %s: %w", d.addr(), err)
		}
		return c, nil
	case len(r.jumps) > 0:
		last, err := r.chain(ctx, deadline, banner)
		if err != nil {
			return nil, err
		}
		c, err := last.DialContext(ctx, "tcp", d.addr())
		if err != nil {
			return nil, fmt.Errorf("connect to %s through jump host %s: %w", d.addr(), r.jumps[len(r.jumps)-1].d.alias, err)
		}
		return c, nil
	}
	return dialTCP(ctx, d.addr(), deadline)
}

func dialTCP(ctx context.Context, addr string, deadline time.Time) (net.Conn, error) {
	dialer := net.Dialer{Deadline: deadline, KeepAlive: keepaliveInterval}
	c, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	return c, nil
}

// chain returns the connection to the last jump host, connecting through
// every hop (each checked and authenticated as its ssh_config entry says)
// if it is not up.
func (r *route) chain(ctx context.Context, deadline time.Time, banner ssh.BannerCallback) (*ssh.Client, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, errClosed
	}
	if r.done != nil {
		select {
		case <-r.done:
		default:
			return r.clients[len(r.clients)-1], nil
		}
	}
	r.closeClients()
	for i, hop := range r.jumps {
		var nc net.Conn
		var err error
		if i == 0 {
			nc, err = dialTCP(ctx, hop.d.addr(), deadline)
		} else {
			nc, err = r.clients[i-1].DialContext(ctx, "tcp", hop.d.addr())
		}
		var client *ssh.Client
		if err == nil {
			client, err = hop.handshake(ctx, nc, deadline, banner)
		}
		if err != nil {
			r.closeClients()
			return nil, fmt.Errorf("jump host %s: %w", hop.d.alias, err)
		}
		go keepAliveClient(client, hop.d.alive)
		r.clients = append(r.clients, client)
	}
	last := r.clients[len(r.clients)-1]
	done := make(chan struct{})
	go func() {
		last.Wait()
		close(done)
	}()
	r.done = done
	return last, nil
}

// closeClients closes the jump hosts' connections, the last first; the
// caller holds r.mu.
func (r *route) closeClients() {
	for i := len(r.clients) - 1; i >= 0; i-- {
		r.clients[i].Close()
	}
	r.clients, r.done = nil, nil
}

// close ends the jump hosts' connections, for good.
func (r *route) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	r.closeClients()
}

// commandConn is a ProxyCommand's standard input and output, as a
// net.Conn.
type commandConn struct {
	cmd  *exec.Cmd
	r, w *os.File // its standard output and input
	addr string   // the destination's host:port, for RemoteAddr
	once sync.Once
}

// dialCommand runs command with `sh -c` (exec'd, as OpenSSH does, so that
// closing the connection ends the command itself); its standard error
// goes to stderr.
func dialCommand(command, addr string, stderr io.Writer) (*commandConn, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	cmd := exec.Command("/bin/sh", "-c", "exec "+command)
	cmd.Env = childenv.Environ()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, fmt.Errorf("run ProxyCommand: %w", err)
	}
	return &commandConn{cmd: cmd, r: outR, w: inW, addr: addr}, nil
}

func (c *commandConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *commandConn) Write(p []byte) (int, error) { return c.w.Write(p) }

// Close closes the pipes and ends the command (its process group).
func (c *commandConn) Close() error {
	c.once.Do(func() {
		c.w.Close()
		c.r.Close()
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGTERM)
		go c.cmd.Wait()
	})
	return nil
}

func (c *commandConn) SetDeadline(t time.Time) error {
	c.r.SetReadDeadline(t)
	return c.w.SetWriteDeadline(t)
}

func (c *commandConn) SetReadDeadline(t time.Time) error  { return c.r.SetReadDeadline(t) }
func (c *commandConn) SetWriteDeadline(t time.Time) error { return c.w.SetWriteDeadline(t) }
func (c *commandConn) LocalAddr() net.Addr                { return commandAddr("") }

// RemoteAddr is the destination's address, which known_hosts is checked
// for (there is no address of the server's own to check).
func (c *commandConn) RemoteAddr() net.Addr { return commandAddr(c.addr) }

type commandAddr string

func (commandAddr) Network() string  { return "proxycommand" }
func (a commandAddr) String() string { return string(a) }
