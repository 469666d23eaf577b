package live

import (
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Remote is a receiver started over SSH: `coldship receive --live - ...`
// with its standard input and output as the session's control lane.
type Remote struct {
	session *ssh.Session
	stdin   *eofWriter
	stdout  io.Reader
	host    string
	exit    chan error
}

// StartRemote runs argv on the server of client, each argument quoted for
// the remote shell, with its standard error copied to stderr. Nothing
// secret is on the command line: the key travels inside the session.
func StartRemote(client *ssh.Client, argv []string, stderr io.Writer) (*Remote, error) {
	session, err := client.NewSession()
	if err != nil {
		return nil, fmt.Errorf("open an SSH session: %w", err)
	}
	stdin, err := session.StdinPipe()
	if err != nil {
		session.Close()
		return nil, err
	}
	stdout, err := session.StdoutPipe()
	if err != nil {
		session.Close()
		return nil, err
	}
	session.Stderr = stderr
	if err := session.Start(ShellQuote(argv)); err != nil {
		session.Close()
		return nil, fmt.Errorf("start the receiver: %w", err)
	}
	r := &Remote{session: session, stdin: &eofWriter{w: stdin}, stdout: stdout, exit: make(chan error, 1)}
	if a, ok := client.RemoteAddr().(*net.TCPAddr); ok {
		r.host = a.IP.String()
	}
	go func() { r.exit <- session.Wait() }()
	return r, nil
}

// Peer is the session's peer for Send: TCP lanes dial the address the SSH
// connection reached.
func (r *Remote) Peer() Peer {
	return Peer{In: r.stdout, Out: r.stdin, DataHost: r.host}
}

// Finish ends the session after Send returned err: it closes the
// receiver's input, waits for its exit status, and returns the error to
// report, which accounts for how the receiver ended.
func (r *Remote) Finish(err error) error {
	r.stdin.closeWrite()
	wait := 30 * time.Second
	switch {
	case errors.Is(err, errPeerSilent):
		// It stopped answering: it will not report its exit either.
		wait = 0
	case err != nil:
		wait = 10 * time.Second
	}
	status := -1
	select {
	case werr := <-r.exit:
		var ee *ssh.ExitError
		switch {
		case werr == nil:
			status = 0
		case errors.As(werr, &ee):
			status = ee.ExitStatus()
		}
	case <-time.After(wait):
	}
	r.session.Close()

	var re *RemoteError
	switch {
	case err == nil && status > 0:
		return &RemoteError{Code: status, Message: fmt.Sprintf("the receiver reported success but exited with status %d", status)}
	case err == nil, errors.As(err, &re):
		return err
	case status == 0:
		// Too late: the receiver was renaming the files into place when
		// the sender gave up or lost its word, and it succeeded.
		return fmt.Errorf("%w; but the receiver had already put every file in place and exited 0: the shipment is restored at the destination, its post-receive hooks ran", err)
	case status == 127 || status == 126:
		return fmt.Errorf("the receiver could not be started (exit status %d: not found or not executable): "+
			"install coldship on the destination or give its path with --remote-coldship", status)
	case status == 2:
		return fmt.Errorf("the receiver refused its command line (exit status 2): does the destination's coldship support --live? (%w)", err)
	case status == 3 || status == 4 || status == 5:
		return &RemoteError{Code: status, Message: fmt.Sprintf("the receiver failed with exit status %d: %v", status, err)}
	}
	return err
}

var shellSafe = regexp.MustCompile(`^[A-Za-z0-9_./:=@%+,-]+$`)

// ShellQuote joins argv into one command line for a POSIX shell, as
// sshd hands it to the user's shell.
func ShellQuote(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if shellSafe.MatchString(a) {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}

// eofWriter is the session's standard input, written by one lane writer at
// a time. x/crypto/ssh does not allow sending EOF while a write is in
// flight, and a write stuck on a receiver that stopped reading must not
// stop Finish: closeWrite sends EOF only between writes, and otherwise
// leaves the end to the session's close.
type eofWriter struct {
	mu     sync.Mutex // held for the whole of each write
	w      io.WriteCloser
	closed bool
}

func (e *eofWriter) Write(p []byte) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return 0, io.ErrClosedPipe
	}
	return e.w.Write(p)
}

func (e *eofWriter) closeWrite() {
	if !e.mu.TryLock() {
		return
	}
	defer e.mu.Unlock()
	if !e.closed {
		e.closed = true
		e.w.Close()
	}
}
