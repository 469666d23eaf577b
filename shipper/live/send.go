package live

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"

	"filippo.io/age"
	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/shipper"
)

// DefaultMaxRounds bounds the pre-copy rounds of SendOptions.UntilDirty
// when SendOptions.Rounds does not.
const DefaultMaxRounds = 30

// DefaultStallTimeout is SendOptions.StallTimeout when not set: that of
// an SSH connection's default keepalives (15 s × 3).
const DefaultStallTimeout = 45 * time.Second

// helloTimeout bounds the wait for a receiver that was just started, and
// the receiver's wait for the session's description, which the sender
// sends as soon as it has the hello (a variable for tests).
var helloTimeout = 60 * time.Second

// Peer is the far end of a session: a `coldship receive --live` whose
// standard output is In and standard input is Out (see StartRemote).
type Peer struct {
	In  io.Reader
	Out io.Writer
	// DataHost is the host the TCP lanes dial when the receiver does not
	// name one: the address the SSH connection reached.
	DataHost string
	// Host names the receiver's host in messages; "" names none.
	Host string
	// Dial opens a TCP lane; nil means a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// SendOptions configure Send.
type SendOptions struct {
	Version string // this coldship's version, for messages
	Jobs    int    // parallel readers and sealers; 0: all CPUs
	Lanes   int    // direct TCP lanes for the blocks; 0: the blocks travel on the control channel
	// StallTimeout is how long a TCP lane may take nothing from a frame in
	// hand before the session fails (shipper.StallConn): a receiver
	// stopped, or a link that drops the lane's packets, while the SSH
	// connection, which its keepalives check, is still up. It is also the
	// session's heartbeat timeout: how long either end may hear nothing
	// from the other on lane 0 before it fails. 0 means
	// DefaultStallTimeout.
	StallTimeout time.Duration
	BlockSize    int64 // 0: shipper.DefaultBlockSize
	Compress     bool  // zstd per block where it helps
	Label        string

	// Rounds is the number of pre-copy rounds, sent while the sources may
	// still change, before the switch-over; 0 means none. With UntilDirty,
	// pre-copy ends as soon as a round sends at most UntilDirty bytes of
	// data, and Rounds (default DefaultMaxRounds) bounds it. The final round
	// follows the switch-over and must see the sources unchanged.
	Rounds     int
	UntilDirty int64

	// Switchover runs before the final round: it runs the pre-switchover
	// hook, which pauses or shuts down the VM, and any check that the
	// sources are now at rest. Its error aborts the session.
	Switchover func(ctx context.Context, id string) error

	Counters *shipper.Counters // may be nil
	Log      func(format string, a ...any)
	OnRound  func(RoundStats) // called as each round is acknowledged
	Now      func() time.Time
}

// RoundStats describe one round.
type RoundStats struct {
	Round    int           `json:"round"`
	Final    bool          `json:"final"`
	Blocks   int64         `json:"blocks"`     // block records sent: the dirty blocks
	Data     int64         `json:"bytes_data"` // their plaintext bytes
	Wire     int64         `json:"bytes_sent"` // bytes of frames sent on every lane
	Read     int64         `json:"bytes_read"` // bytes read and hashed
	Duration time.Duration `json:"-"`          // from the round's start to the receiver's acknowledgement
	Seconds  float64       `json:"duration_s"` // Duration, for JSON
}

// SendResult describes a finished session.
type SendResult struct {
	ID     string
	Files  []string // the paths restored at the destination, as receive prints them
	Rounds []RoundStats
	// Switchover is the time from the start of the Switchover callback to
	// the receiver's report that every file is in place (and its
	// post-receive hooks ran); Hook is the callback's share of it.
	Switchover time.Duration
	Hook       time.Duration
	Duration   time.Duration
	// Of the final round: logical bytes, and bytes found in holes or zero.
	Total, Hole, Zero int64
}

// RemoteError is the receiver's report of its failure.
type RemoteError struct {
	Code    int // the receiver's exit status: 3 hook, 4 authentication, 5 integrity, 1 other
	Message string
	echo    bool // it failed on the sender's abort: the sender's reason says more
}

func (e *RemoteError) Error() string { return "destination: " + e.Message }

// Unwrap lets errors.Is find the class of the receiver's failure.
func (e *RemoteError) Unwrap() error {
	switch e.Code {
	case 4:
		return shipper.ErrAuth
	case 5:
		return archive.ErrIntegrity
	}
	return nil
}

// srcFile is a source as the sender knows it, and as it knows the
// receiver holds it.
type srcFile struct {
	src   archive.Source
	f     *os.File
	size  int64
	stamp stamp // at the start of the current round
	// held is the digest of the form the receiver holds of each block,
	// from earlier rounds (zero: nothing).
	held []archive.Digest
	// The current round's view, built in order as the blocks go by.
	digest  *archive.FileDigester
	extents []archive.Extent
}

// stamp is what must not change while a file is read.
type stamp = archive.Stamp

var statStamp = archive.StampOf

// resize follows a change of the file's size between rounds. The receiver
// truncates its copy to the new size and zeroes the block that the
// shorter size cuts, so neither that block nor any after it is held there
// any more.
func (f *srcFile) resize(size, bs int64) {
	if size == f.size && f.held != nil {
		return
	}
	keep := min(size, f.size) / bs
	held := make([]archive.Digest, (size+bs-1)/bs)
	if f.held != nil {
		copy(held[:min(keep, int64(len(held)))], f.held)
	}
	f.held, f.size = held, size
}

// extend adds n bytes of kind at the end of the file's extents.
func (f *srcFile) extend(kind string, n int64) {
	if l := len(f.extents); l > 0 && f.extents[l-1].Kind == kind {
		f.extents[l-1].Length += n
		return
	}
	off := int64(0)
	if l := len(f.extents); l > 0 {
		off = f.extents[l-1].Offset + f.extents[l-1].Length
	}
	f.extents = append(f.extents, archive.Extent{Kind: kind, Offset: off, Length: n})
}

type sendSession struct {
	opts   SendOptions
	peer   Peer
	files  []*srcFile
	key    *cipher.Key
	id     string
	codec  *archive.Codec
	lanes  []*outLane // lanes[0] is the control lane
	conns  []net.Conn
	cancel context.CancelCauseFunc

	replies      chan reply
	repliesEnded chan struct{} // closed when the receiver's output ended
	watch        *silence      // of the receiver's output
	stopped      chan struct{} // closed when Send returns
	rr           atomic.Uint64
}

type reply struct {
	frame
	err error
}

// Send streams the sources to the receiver at peer: pre-copy rounds if
// asked, the switch-over, the final round and the manifest, and returns
// once the receiver reports every file in place. The caller closes peer's
// streams afterwards; Send does not.
//
// A failure of the receiver comes back as a *RemoteError. On a failure of
// its own (a source that changed in the final round, a failed
// switch-over, an interruption) Send tells the receiver why, and the
// receiver removes what it wrote.
func Send(ctx context.Context, peer Peer, sources []archive.Source, opts SendOptions) (*SendResult, error) {
	start := time.Now()
	if opts.Jobs <= 0 {
		opts.Jobs = runtime.NumCPU()
	}
	if opts.BlockSize == 0 {
		opts.BlockSize = shipper.DefaultBlockSize
	}
	if opts.BlockSize < archive.MinBlockSize || opts.BlockSize > archive.MaxBlockSize {
		return nil, fmt.Errorf("block size %d out of range [%d, %d]", opts.BlockSize, archive.MinBlockSize, archive.MaxBlockSize)
	}
	if opts.Lanes < 0 || opts.Lanes > maxLanes {
		return nil, fmt.Errorf("live: %d TCP lanes: want 0 to %d", opts.Lanes, maxLanes)
	}
	if opts.Rounds < 0 || opts.UntilDirty < 0 {
		return nil, errors.New("live: negative rounds or dirty size")
	}
	if opts.Counters == nil {
		opts.Counters = new(shipper.Counters)
	}
	if opts.Log == nil {
		opts.Log = func(string, ...any) {}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.StallTimeout <= 0 {
		opts.StallTimeout = DefaultStallTimeout
	}
	opts.StallTimeout = min(max(opts.StallTimeout, minTimeout), maxTimeout)
	if peer.Dial == nil {
		var d net.Dialer
		peer.Dial = d.DialContext
	}

	s := &sendSession{opts: opts, peer: peer, replies: make(chan reply, 16), repliesEnded: make(chan struct{}), stopped: make(chan struct{})}
	defer close(s.stopped)
	s.files = make([]*srcFile, len(sources))
	defer func() {
		for _, f := range s.files {
			if f != nil && f.f != nil {
				f.f.Close()
			}
		}
	}()
	for i, src := range sources {
		f := &srcFile{src: src}
		s.files[i] = f
		if src.Info.IsDir() {
			continue
		}
		fh, err := os.Open(src.Path)
		if err != nil {
			return nil, fmt.Errorf("open source: %w", err)
		}
		f.f = fh
		if f.stamp, err = statStamp(fh); err != nil {
			return nil, err
		}
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s.cancel = cancel
	s.watch = newSilence(peer.In, func(timeout time.Duration) {
		cancel(linkError(errSilent(peer.receiver(), timeout)))
	})
	defer s.watch.stop()
	go s.readReplies(ctx)

	res, err := s.run(ctx)
	if err == nil {
		s.shutdown(false)
		res.Duration = time.Since(start)
		return res, nil
	}
	return nil, s.failed(ctx, err)
}

// failed stops the session after err and returns the error to report: the
// receiver's own report when it sent one, since a broken link is usually
// its consequence.
func (s *sendSession) failed(ctx context.Context, err error) error {
	defer func() { s.shutdown(errors.Is(context.Cause(ctx), errPeerSilent)) }()
	var re *RemoteError
	if errors.As(context.Cause(ctx), &re) || errors.As(err, &re) {
		return re
	}
	if cause := context.Cause(ctx); errors.Is(cause, errPeerSilent) {
		// The receiver fell silent: whatever stopped on that says less.
		err = cause
	}
	if errors.Is(err, errLink) || errors.Is(err, errAborted) {
		// The receiver failed first, probably: wait a little for its word,
		// unless its output already ended without one. The data
		// connections are closed first: a receiver that waits for its lane
		// readers to end must not wait for us. But a data connection may
		// have failed on its own (a link that drops or resets its
		// packets), which the receiver may never hear of: tell it on the
		// control lane, if that still works, so that it ends now, with
		// our reason (its word then only echoes it).
		for _, c := range s.conns {
			c.Close()
		}
		if len(s.lanes) > 0 && !errors.Is(context.Cause(ctx), errPeerSilent) {
			s.lanes[0].abort(err.Error())
		}
		t := time.NewTimer(10 * time.Second)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-s.repliesEnded:
		case <-t.C:
		}
		if errors.As(context.Cause(ctx), &re) && !re.echo {
			return re
		}
		return err
	}
	// The receiver's word may have arrived meanwhile, cancelling ctx.
	if errors.As(context.Cause(ctx), &re) {
		return re
	}
	reason := err.Error()
	if ctx.Err() != nil {
		reason = "the sender was interrupted"
	}
	// Our own failure: tell the receiver why, after the last whole frame.
	if len(s.lanes) > 0 {
		s.lanes[0].abort(reason)
		select {
		case <-s.lanes[0].done:
		case <-time.After(5 * time.Second):
		}
	} else {
		// Before the control lane's writer started: the key exchange.
		writeTimeout(s.peer.Out, appendFrame(nil, frameAbort, []byte(reason)), 5*time.Second)
	}
	return err
}

func writeTimeout(w io.Writer, b []byte, d time.Duration) {
	done := make(chan struct{})
	go func() {
		w.Write(b)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d):
	}
}

// shutdown stops the lanes' writers and closes the TCP lanes. A receiver
// that fell silent takes nothing more: its writers are not waited for.
func (s *sendSession) shutdown(silent bool) {
	for _, c := range s.conns {
		c.Close()
	}
	for _, l := range s.lanes {
		l.abort("")
	}
	if silent {
		return
	}
	// Let the writers finish the frame in hand, so that the caller may
	// end the control channel; one stuck on a receiver that stopped
	// reading is left to the channel's close.
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	for _, l := range s.lanes {
		select {
		case <-l.done:
		case <-deadline.C:
			return
		}
	}
}

func (s *sendSession) readReplies(ctx context.Context) {
	defer close(s.repliesEnded)
	br := bufio.NewReader(s.watch)
	for {
		fr, err := readFrame(br, replyKinds, nil)
		if err == nil && fr.kind == replyBeat {
			continue // it was heard, which is all it says
		}
		if err == nil && fr.kind == replyError {
			var m errorMsg
			if err = unmarshal(fr.body, &m); err == nil {
				if m.Code == 0 {
					m.Code = 1
				}
				s.cancel(&RemoteError{Code: m.Code, Message: m.Message, echo: m.Aborted})
			}
		}
		select {
		case s.replies <- reply{fr, err}:
		case <-s.stopped:
			return
		}
		if err != nil {
			return
		}
	}
}

// waitReply returns the body of the receiver's next reply, which must be
// of kind want.
func (s *sendSession) waitReply(ctx context.Context, want byte, timeout time.Duration) ([]byte, error) {
	var expire <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expire = t.C
	}
	select {
	case r := <-s.replies:
		switch {
		case errors.Is(r.err, io.EOF) || errors.Is(r.err, io.ErrUnexpectedEOF):
			return nil, fmt.Errorf("%w: the receiver ended the session", errLink)
		case r.err != nil:
			return nil, linkError(r.err)
		case r.kind == replyError:
			<-ctx.Done()
			return nil, context.Cause(ctx)
		case r.kind != want:
			return nil, errFrame("receiver sent %q, want %q", r.kind, want)
		}
		return r.body, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	case <-expire:
		return nil, fmt.Errorf("%w: no answer from the receiver after %s", errLink, timeout)
	}
}

func (s *sendSession) run(ctx context.Context) (*SendResult, error) {
	opts := s.opts
	defer func() {
		if s.codec != nil {
			s.codec.Close()
		}
	}()
	created, err := s.handshake(ctx)
	if err != nil {
		return nil, err
	}
	res := &SendResult{ID: s.id}
	round := uint32(0)
	if opts.Rounds > 0 || opts.UntilDirty > 0 {
		maxRounds := opts.Rounds
		if maxRounds == 0 {
			maxRounds = DefaultMaxRounds
		}
		for range maxRounds {
			round++
			st, err := s.sendRound(ctx, round, false)
			if err != nil {
				return nil, err
			}
			res.Rounds = append(res.Rounds, st)
			if opts.UntilDirty > 0 && st.Data <= opts.UntilDirty {
				break
			}
		}
	}

	// The switch-over: the VM stops, the final round sends what is still
	// dirty, and the receiver finishes.
	switchStart := time.Now()
	if opts.Switchover != nil {
		if err := opts.Switchover(ctx, s.id); err != nil {
			return nil, err
		}
	}
	res.Hook = time.Since(switchStart)
	// The final round's reader fails with ErrSourceChanged if a source
	// changed while it read it: it would restore as a mix of old and new
	// blocks.
	round++
	st, err := s.sendRound(ctx, round, true)
	if err != nil {
		return nil, err
	}
	res.Rounds = append(res.Rounds, st)

	s.sendSealed(s.lanes[0], frameManifest, round, marshal(s.manifest(created, s.compression(), round)))
	body, err := s.waitReply(ctx, replyDone, 0)
	if errors.Is(err, errLink) {
		// The receiver had everything: it may have landed it all before
		// the link failed, and started the VM there.
		return nil, fmt.Errorf("%w (after the final round: the destination may have put every file in place and run its post-receive hooks; look there before starting the VM here again)", err)
	}
	if err != nil {
		return nil, err
	}
	var done doneMsg
	if err := unmarshal(body, &done); err != nil {
		return nil, err
	}
	res.Switchover = time.Since(switchStart)
	res.Files = done.Files
	cnt := opts.Counters
	res.Total, res.Hole, res.Zero = cnt.Total.Load(), cnt.Hole.Load(), cnt.Zero.Load()
	return res, nil
}

func (s *sendSession) compression() string {
	return map[bool]string{false: "none", true: "zstd"}[s.opts.Compress]
}

// handshake takes the receiver's hello, hands it the session's key
// wrapped for its ephemeral recipient, describes the session and opens
// the TCP lanes. It returns the session's creation time.
func (s *sendSession) handshake(ctx context.Context) (time.Time, error) {
	opts := s.opts
	body, err := s.waitReply(ctx, replyHello, helloTimeout)
	if err != nil {
		return time.Time{}, err
	}
	var hello helloMsg
	if err := unmarshal(body, &hello); err != nil {
		return time.Time{}, err
	}
	if hello.Protocol != Protocol {
		return time.Time{}, protocolMismatch(hello, opts.Version)
	}
	recipient, err := age.ParseX25519Recipient(hello.Recipient)
	if err != nil {
		return time.Time{}, errFrame("receiver's key: %v", err)
	}
	// The shipment key: fresh, and handed over only wrapped for the
	// receiver's key of this session, inside the SSH channel.
	if s.key, err = cipher.NewKey(); err != nil {
		return time.Time{}, err
	}
	now := opts.Now()
	if s.id, err = archive.NewID(now); err != nil {
		return time.Time{}, err
	}
	wrapped, err := s.key.Wrap(recipient)
	if err != nil {
		return time.Time{}, err
	}
	if _, err := s.peer.Out.Write(appendFrame(nil, frameKey, appendKey(nil, s.id, wrapped))); err != nil {
		return time.Time{}, linkError(err)
	}
	if s.codec, err = archive.NewCodec(s.key, s.id, archive.FormatV3, opts.Compress, opts.Jobs); err != nil {
		return time.Time{}, err
	}
	s.lanes = []*outLane{newOutLane(0, s.peer.Out)}
	created := now.UTC().Truncate(time.Second)
	s.sendSealed(s.lanes[0], frameSession, 0, marshal(sessionMsg{
		Format: Protocol, ID: s.id, Created: created, Label: opts.Label,
		BlockSize: opts.BlockSize, Compression: s.compression(), Lanes: opts.Lanes,
		TimeoutMS: opts.StallTimeout.Milliseconds(),
	}))
	// From here on the receiver beats, whatever it is doing; so do we, on
	// a goroutine that waits for nothing the data path does.
	s.watch.arm(opts.StallTimeout)
	go every(beatInterval(opts.StallTimeout), s.lanes[0].beat, s.stopped)
	if body, err = s.waitReply(ctx, replyReady, 0); err != nil {
		return created, err
	}
	var ready readyMsg
	if err := unmarshal(body, &ready); err != nil {
		return created, err
	}
	if opts.Lanes > 0 {
		return created, s.openLanes(ctx, ready)
	}
	return created, nil
}

// sendSealed seals plaintext as the next message of lane l and queues it.
func (s *sendSession) sendSealed(l *outLane, kind byte, round uint32, plaintext []byte) {
	t := l.take(false)
	b := make([]byte, frameHeaderSize, frameHeaderSize+int(cipher.SealedSize(int64(len(plaintext)))))
	b, err := s.key.Seal(b, archive.LiveContext(s.id, kind, l.n, t, round), plaintext)
	if err != nil {
		panic("live: internal error: seal: " + err.Error())
	}
	putFrameHeader(b, kind)
	l.deposit(t, outFrame{data: b})
}

// openLanes dials the TCP lanes and proves, on each, that it belongs to
// this session: its first frame is a message sealed under the session's
// key, bound to the lane's number.
func (s *sendSession) openLanes(ctx context.Context, ready readyMsg) error {
	if ready.Port <= 0 || ready.Port > 65535 {
		return errFrame("the receiver opened no data port")
	}
	host := ready.Host
	if host == "" {
		host = s.peer.DataHost
	}
	addr := net.JoinHostPort(host, strconv.Itoa(ready.Port))
	conns := make([]*shipper.StallConn, s.opts.Lanes)
	g, gctx := errgroup.WithContext(ctx)
	for i := range conns {
		g.Go(func() error {
			dctx, cancel := context.WithTimeout(gctx, 30*time.Second)
			defer cancel()
			c, err := s.peer.Dial(dctx, "tcp", addr)
			if err != nil {
				return fmt.Errorf("%w: open data connection to %s: %v", errLink, addr, err)
			}
			conns[i] = &shipper.StallConn{Conn: c, Timeout: s.opts.StallTimeout, Peer: fmt.Sprintf("the receiver on data connection %d (%s)", i+1, addr)}
			return nil
		})
	}
	err := g.Wait()
	for _, c := range conns {
		if c != nil {
			s.conns = append(s.conns, c)
		}
	}
	if err != nil {
		return err
	}
	s.watchLanes(conns)
	for i, c := range conns {
		l := newOutLane(uint32(i+1), c)
		s.lanes = append(s.lanes, l)
		t := l.take(false)
		b := make([]byte, frameHeaderSize, 128)
		b = append(b, 0, 0, 0, 0)
		putUint32(b[frameHeaderSize:], l.n)
		b, err := s.key.Seal(b, archive.LiveContext(s.id, frameHello, l.n, t, 0), nil)
		if err != nil {
			panic("live: internal error: seal: " + err.Error())
		}
		putFrameHeader(b, frameHello)
		l.deposit(t, outFrame{data: b})
	}
	return nil
}

// watchLanes fails the session once the kernel gives a TCP lane up (see
// shipper.StallConn.GiveUpUnacked): after a round small enough for the
// socket buffers the sender writes nothing more and waits for the
// receiver's acknowledgement on lane 0, whose heartbeats go on, so no
// write would tell that the round's data never arrives.
func (s *sendSession) watchLanes(conns []*shipper.StallConn) {
	for _, c := range conns {
		c.GiveUpUnacked()
	}
	go every(beatInterval(s.opts.StallTimeout), func() {
		for _, c := range conns {
			if err := c.Broken(); err != nil {
				s.cancel(linkError(err)) // the first cause stays
				return
			}
		}
	}, s.stopped)
}

// receiver names the receiver in messages.
func (p Peer) receiver() string {
	if p.Host == "" {
		return "the receiver"
	}
	return "the receiver on " + p.Host
}

func putUint32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
}

// protocolMismatch says which coldship each end runs when they speak
// different live protocols.
func protocolMismatch(hello helloMsg, ours string) error {
	theirs := hello.Version
	if theirs == "" {
		theirs = "an older version"
	}
	if ours == "" {
		ours = "this version"
	}
	return fmt.Errorf("the receiver runs coldship %s, which speaks live protocol %d; this coldship (%s) speaks protocol %d: "+
		"install the same coldship at both ends (--remote-coldship PATH picks the receiver's binary)", theirs, hello.Protocol, ours, Protocol)
}
