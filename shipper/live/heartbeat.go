package live

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// Heartbeats: once the session is described, each end tells the other it
// is alive every beatInterval, on lane 0, from a goroutine of its own and
// whatever phase it is in (data, hooks, checks, waits between rounds), and
// each end fails once a read of lane 0 has waited for the session's
// timeout without a byte. Neither SSH's keepalives (sshd answers them for
// a stopped process) nor its flow control (it holds a sender whose
// receiver stopped reading) can tell a stopped peer from a slow one; a
// heartbeat can, because it is sent by the peer itself.

// beatInterval is how often each end sends a heartbeat when the session
// gives up after timeout of silence: three may be lost before it does.
func beatInterval(timeout time.Duration) time.Duration {
	return max(timeout/3, time.Millisecond)
}

// Bounds of the session's timeout (sessionMsg.TimeoutMS).
const (
	minTimeout = 100 * time.Millisecond
	maxTimeout = 24 * time.Hour
)

// silence watches the reads of a peer's stream: once a read has waited
// for timeout without a byte, it calls onSilent, once. Time spent outside
// a read does not count: a reader busy with what it already has (a slow
// disk, a hook) is not waiting for the peer, whose heartbeats wait in the
// stream meanwhile. It watches nothing until armed.
type silence struct {
	r        io.Reader
	onSilent func(timeout time.Duration)

	mu      sync.Mutex
	timeout time.Duration // 0: not armed
	reading bool
	since   time.Time // start of the current read, or of the arming
	gen     uint64    // counts reads, so that a timer of an earlier one does nothing
	timer   *time.Timer
	over    bool // fired or stopped
}

func newSilence(r io.Reader, onSilent func(time.Duration)) *silence {
	return &silence{r: r, onSilent: onSilent}
}

func (s *silence) Read(p []byte) (int, error) {
	s.mu.Lock()
	s.reading, s.since = true, time.Now()
	s.gen++
	s.startLocked()
	s.mu.Unlock()

	n, err := s.r.Read(p)

	s.mu.Lock()
	s.reading = false
	s.gen++
	if s.timer != nil {
		s.timer.Stop()
	}
	s.mu.Unlock()
	return n, err
}

// arm starts watching with timeout; a read in progress counts from now.
func (s *silence) arm(timeout time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.timeout, s.since = timeout, time.Now()
	s.startLocked()
}

// stop ends the watch: onSilent is not called from now on.
func (s *silence) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.over = true
	if s.timer != nil {
		s.timer.Stop()
	}
}

func (s *silence) startLocked() {
	if !s.reading || s.timeout == 0 || s.over {
		return
	}
	gen, timeout := s.gen, s.timeout
	if s.timer != nil {
		s.timer.Stop()
	}
	s.timer = time.AfterFunc(timeout-time.Since(s.since), func() {
		s.mu.Lock()
		fire := !s.over && s.reading && s.gen == gen
		if fire {
			s.over = true
		}
		s.mu.Unlock()
		if fire {
			s.onSilent(timeout)
		}
	})
}

// every calls fn every interval until stop is closed: the heartbeats, and
// the sender's watch of its TCP lanes.
func every(interval time.Duration, fn func(), stop <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			fn()
		case <-stop:
			return
		}
	}
}

// Replies is the receiver's end of lane 0 towards the sender: its replies
// and, from a goroutine of their own, its heartbeats, each written whole.
// Receive starts the heartbeats once the session is described; they go on
// after it returns, while the caller runs its post-receive hooks, until
// ReplyDone or ReplyError tells the sender the outcome. Receive given another writer
// stops them when it returns.
type Replies struct {
	mu   sync.Mutex
	w    io.Writer
	once sync.Once
	halt chan struct{}
}

// NewReplies returns the replies written to w, the receiver's standard
// output.
func NewReplies(w io.Writer) *Replies {
	return &Replies{w: w, halt: make(chan struct{})}
}

// Write writes p, whole frames, between the heartbeats.
func (r *Replies) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.w.Write(p)
}

// beat starts the heartbeats, every interval.
func (r *Replies) beat(interval time.Duration) {
	go every(interval, func() {
		r.Write(appendFrame(nil, replyBeat, nil))
	}, r.halt)
}

func (r *Replies) stopBeats() { r.once.Do(func() { close(r.halt) }) }

// last stops the heartbeats and writes the session's last reply.
func (r *Replies) last(frame []byte) error {
	r.stopBeats()
	_, err := r.Write(frame)
	return err
}

// asReplies returns out as Replies: those the caller made, or new ones
// for out alone.
func asReplies(out io.Writer) *Replies {
	if r, ok := out.(*Replies); ok {
		return r
	}
	return NewReplies(out)
}

// errPeerSilent marks the failure of a peer that fell silent: it will not
// take what is still to write, or report how it ended.
var errPeerSilent = errors.New("stopped answering")

// errSilent is the error of a peer that has been silent for timeout.
func errSilent(who string, timeout time.Duration) error {
	return fmt.Errorf("%s %w: heard nothing from it for %s (stopped, hung, or its link dropped)", who, errPeerSilent, timeout)
}
