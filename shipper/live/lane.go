package live

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/coldship/coldship/shipper"
)

// outLane is the sending end of one lane. The position of a sealed frame
// in its lane is part of its context, so it must be known before the frame
// is sealed: a sealer takes a ticket (the position) first, seals, and
// deposits the frame; the lane's writer writes the frames in ticket order,
// whatever order the sealers finish in.
type outLane struct {
	n uint32
	w *bufio.Writer

	mu      sync.Mutex
	cond    sync.Cond
	ticket  uint64 // next position to hand out
	next    uint64 // next position to write
	pending map[uint64]outFrame
	idle    bool   // everything up to next is written and flushed
	beating bool   // a heartbeat is due, ahead of the pending frames
	blocks  uint64 // block frames in the current round
	err     error  // sticky write error
	aborted bool
	reason  string // written as an abort frame by lane 0 once aborted
	done    chan struct{}
}

type outFrame struct {
	data []byte
	done func() // called once the frame is written or dropped; may be nil
}

func (f outFrame) release() {
	if f.done != nil {
		f.done()
	}
}

// errLink marks a failure to write to or read from the receiver: the
// receiver's own report, if it sends one, explains it better.
var errLink = errors.New("connection to the receiver failed")

// linkError marks err as a failure of the link. The cause follows on the
// same line (errors.Join would put it on a line of its own, and a bare
// "EOF" there reads as a second error).
func linkError(err error) error { return fmt.Errorf("%w: %w", errLink, err) }

func newOutLane(n uint32, w io.Writer) *outLane {
	l := &outLane{n: n, w: bufio.NewWriterSize(w, 256<<10), pending: map[uint64]outFrame{}, done: make(chan struct{})}
	l.cond.L = &l.mu
	go l.run()
	return l
}

// take hands out the next position. A block frame counts towards the
// round's blocks.
func (l *outLane) take(block bool) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.ticket
	l.ticket++
	if block {
		l.blocks++
	}
	return t
}

// deposit queues the frame of position t for writing. It never blocks. A
// frame deposited into an aborted lane is dropped.
func (l *outLane) deposit(t uint64, f outFrame) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.aborted || l.err != nil {
		f.release()
		return
	}
	l.pending[t] = f
	l.cond.Broadcast()
}

// run writes frames in position order, flushing whenever it has nothing
// ready to write.
func (l *outLane) run() {
	defer close(l.done)
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		if l.beating && !l.aborted && l.err == nil {
			l.beating, l.idle = false, false
			l.mu.Unlock()
			_, err := l.w.Write(beatFrame)
			l.mu.Lock()
			if err != nil {
				l.fail(err)
			}
			continue
		}
		f, ok := l.pending[l.next]
		if !ok {
			if l.aborted || l.err != nil {
				if l.aborted && l.reason != "" && l.err == nil {
					l.w.Write(appendFrame(nil, frameAbort, []byte(l.reason)))
					l.w.Flush()
				}
				for _, f := range l.pending {
					f.release()
				}
				l.pending = nil
				return
			}
			if !l.idle {
				l.mu.Unlock()
				err := l.w.Flush()
				l.mu.Lock()
				if err != nil {
					l.fail(err)
					continue
				}
				l.idle = true
				l.cond.Broadcast()
				continue
			}
			l.cond.Wait()
			continue
		}
		delete(l.pending, l.next)
		l.idle = false
		l.mu.Unlock()
		_, err := l.w.Write(f.data)
		f.release()
		l.mu.Lock()
		if err != nil {
			l.fail(err)
			continue
		}
		l.next++
	}
}

func (l *outLane) fail(err error) {
	if l.n > 0 && !errors.Is(err, shipper.ErrStalled) { // which names it
		err = fmt.Errorf("data connection %d: %w", l.n, err)
	}
	if l.err == nil {
		l.err = linkError(err)
	}
	l.cond.Broadcast()
}

// drain waits until every position handed out is written and flushed.
func (l *outLane) drain(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		l.mu.Lock()
		l.cond.Broadcast()
		l.mu.Unlock()
	})
	defer stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	for !(l.next == l.ticket && l.idle) && l.err == nil && !l.aborted && ctx.Err() == nil {
		l.cond.Wait()
	}
	switch {
	case l.err != nil:
		return l.err
	case ctx.Err() != nil:
		return context.Cause(ctx)
	case l.aborted:
		return errAborted
	}
	return nil
}

var errAborted = errors.New("live: session aborted")

// roundBlocks returns the block frames of the round and starts counting
// the next.
func (l *outLane) roundBlocks() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.blocks
	l.blocks = 0
	return b
}

var beatFrame = appendFrame(nil, frameBeat, nil)

// beat has a heartbeat written after the frame being written, ahead of
// the frames waiting, and flushed. It never blocks: a writer stuck on a
// peer that takes nothing has a heartbeat due, and needs no more.
func (l *outLane) beat() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.beating = true
	l.cond.Broadcast()
}

// abort stops the lane: frames not yet written are dropped and, on lane 0,
// an abort frame carrying reason follows the last whole frame written.
func (l *outLane) abort(reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.aborted {
		l.aborted, l.reason = true, reason
	}
	l.cond.Broadcast()
}
