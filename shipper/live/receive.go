package live

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"filippo.io/age"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/internal/bufpool"
	"github.com/coldship/coldship/shipper/restore"
)

// DefaultLaneTimeout is how long Receive waits for a session's TCP lanes.
const DefaultLaneTimeout = 30 * time.Second

// laneEOFGrace is how long a TCP lane that ended early waits for the
// control lane to explain it (an abort, or the end of its input).
const laneEOFGrace = 2 * time.Second

// ReceiveOptions configure Receive.
type ReceiveOptions struct {
	Version string // this coldship's version, told to the sender
	Dir     string // restore into
	Force   bool   // overwrite existing files
	Jobs    int    // parallel openers; 0: restore.DefaultOpeners

	// Listen opens the listener of a session's TCP lanes; nil refuses
	// sessions that ask for them. Advertise is the host the sender is told
	// to dial; "" lets it dial the address it reached the SSH server at.
	Listen      func() (net.Listener, error)
	Advertise   string
	LaneTimeout time.Duration // 0: DefaultLaneTimeout

	// PreReceive runs once the session's shipment id is known and before
	// anything is written.
	PreReceive func(ctx context.Context, id string) error

	ReadBack    bool // read every written block back after the sync (see restore.Options)
	NoSameOwner bool
	LockWait    time.Duration // wait this long for another receive into Dir

	Counters *shipper.Counters // may be nil
	Log      func(format string, a ...any)
}

// ReceiveResult describes a restored session.
type ReceiveResult struct {
	ID     string
	Files  []string // every file and directory, as restored
	Rounds int
}

// ErrAborted marks a session that the sender gave up, saying why.
var ErrAborted = errors.New("the sender aborted the session")

// recvFile is what the receiver tracks of a file of the session: its
// place and its size in the current round. Everything per block is in the
// restore writer's blocks files.
type recvFile struct {
	path string
	typ  string
	size int64
}

type recvJob struct {
	lane   uint32
	seq    uint64
	round  uint32
	h      blockHeader
	record []byte
	buf    []byte
}

type laneEnd struct {
	lane   uint32
	round  uint32
	blocks uint64
}

type ctlFrame struct {
	frame
	err error
}

type receiver struct {
	opts  ReceiveOptions
	out   io.Writer
	dir   string
	id    string
	key   *cipher.Key
	sess  sessionMsg
	bs    int64
	codec *archive.Codec
	files []recvFile
	w     *restore.Writer

	pool     *bufpool.Pool
	jobs     chan recvJob
	roundWG  sync.WaitGroup
	gate     gate
	laneEnds chan laneEnd
	ctl      chan ctlFrame
	ctlSeq   uint64
	conns    []net.Conn
	bg       sync.WaitGroup // workers and lane readers: they touch the files

	cancel   context.CancelCauseFunc
	failOnce sync.Once
	failErr  error
	failed   chan struct{}

	blocks atomic.Uint64 // of the current round
	bytes  atomic.Int64
}

// start starts the decrypting workers and the readers of the control
// stream and of every data lane.
func (r *receiver) start(ctx context.Context, br *bufio.Reader) {
	opts := &r.opts
	r.pool = bufpool.New(4*opts.Jobs+2*(len(r.conns)+1), blockHeaderSize+int(maxRecord(r.bs)))
	r.jobs = make(chan recvJob, 2*opts.Jobs)
	r.laneEnds = make(chan laneEnd, len(r.conns))
	for range opts.Jobs {
		r.bg.Add(1)
		go r.work(ctx)
	}
	r.ctl = make(chan ctlFrame)
	go r.readControl(ctx, br)
	for i, c := range r.conns {
		r.bg.Add(1)
		go r.readLane(ctx, uint32(i+1), bufio.NewReaderSize(c, 256<<10))
	}
}

// Receive runs the receiving end of a session: it reads the sender's
// control lane from in, answers on out, restores the shipment into
// opts.Dir and returns once every file is checked and renamed into place.
// On any failure nothing is left at a final name. The caller then tells
// the sender the outcome with ReplyDone or ReplyError.
//
// Once the session is described, Receive sends heartbeats on out and
// fails if a read from in waits for the session's timeout without a
// byte (the sender stopped). Given Replies (NewReplies), it leaves the
// heartbeats running when it returns, so that the sender hears the
// receiver while the caller runs its post-receive hooks.
//
// Receive does not close in or out. A read from in that cannot be
// interrupted may outlive it, on a goroutine that touches nothing else.
func Receive(ctx context.Context, in io.Reader, out io.Writer, opts ReceiveOptions) (res *ReceiveResult, err error) {
	if opts.Jobs <= 0 {
		opts.Jobs = restore.DefaultOpeners()
	}
	if opts.LaneTimeout <= 0 {
		opts.LaneTimeout = DefaultLaneTimeout
	}
	if opts.Counters == nil {
		opts.Counters = new(shipper.Counters)
	}
	if opts.Log == nil {
		opts.Log = func(string, ...any) {}
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	replies := asReplies(out)
	if replies != out {
		// Nobody else can end the heartbeats of our own Replies.
		defer replies.stopBeats()
	}
	r := &receiver{opts: opts, out: replies, dir: dir, cancel: cancel, failed: make(chan struct{})}
	r.gate.cond.L = &r.gate.mu
	stopGate := context.AfterFunc(ctx, r.gate.close)
	watch := newSilence(in, func(timeout time.Duration) { r.fail(fmt.Errorf("live: %w", errSilent("the sender", timeout))) })
	defer func() {
		watch.stop()
		cancel(nil)
		stopGate()
		r.gate.close()
		for _, c := range r.conns {
			c.Close()
		}
		r.bg.Wait()
		if r.codec != nil {
			r.codec.Close()
		}
		// A live session cannot resume: what a failed one wrote goes.
		r.w.Close(false)
	}()

	br := bufio.NewReaderSize(watch, 256<<10)
	// Until the session says how long to wait, a sender that stopped
	// before describing it is given helloTimeout.
	watch.arm(helloTimeout)
	if err := r.handshake(ctx, br); err != nil {
		return nil, err
	}
	timeout := time.Duration(r.sess.TimeoutMS) * time.Millisecond
	replies.beat(beatInterval(timeout))
	watch.arm(timeout)
	if opts.PreReceive != nil {
		if err := opts.PreReceive(ctx, r.id); err != nil {
			return nil, err
		}
	}
	if err := r.openLanes(ctx); err != nil {
		return nil, err
	}

	r.start(ctx, br)
	rounds, err := r.rounds(ctx)
	if err != nil {
		return nil, err
	}
	fr, err := r.nextControl(ctx, "M")
	if err != nil {
		return nil, err
	}
	plain, err := r.openControl(fr, frameManifest, rounds)
	if err != nil {
		return nil, err
	}
	m, err := archive.ParseLiveManifest(plain)
	if err != nil {
		return nil, err
	}
	files, err := r.finish(ctx, m, rounds)
	if err != nil {
		return nil, err
	}
	return &ReceiveResult{ID: r.id, Files: files, Rounds: int(rounds)}, nil
}

// ReplyDone tells the sender that the shipment is restored as files.
// Replies given to Receive stop their heartbeats.
func ReplyDone(out io.Writer, files []string) error {
	return asReplies(out).last(appendFrame(nil, replyDone, marshal(doneMsg{Files: files})))
}

// ReplyError tells the sender that the session failed and how the
// receiver exits (code, as the command's exit status). Replies given to
// Receive stop their heartbeats.
func ReplyError(out io.Writer, code int, err error) error {
	m := errorMsg{Code: code, Message: err.Error(), Aborted: errors.Is(err, ErrAborted)}
	return asReplies(out).last(appendFrame(nil, replyError, marshal(m)))
}

func (r *receiver) fail(err error) {
	r.failOnce.Do(func() {
		r.failErr = err
		close(r.failed)
		r.cancel(err)
	})
}

func (r *receiver) reply(kind byte, v any) error {
	if _, err := r.out.Write(appendFrame(nil, kind, marshal(v))); err != nil {
		return fmt.Errorf("reply to the sender: %w", err)
	}
	return nil
}

// handshake offers an ephemeral key, unwraps the shipment key the sender
// wrapped for it and opens the session's description.
func (r *receiver) handshake(ctx context.Context, br *bufio.Reader) error {
	identity, err := age.GenerateX25519Identity()
	if err != nil {
		return err
	}
	if err := r.reply(replyHello, helloMsg{Protocol: Protocol, Recipient: identity.Recipient().String(), Version: r.opts.Version}); err != nil {
		return err
	}
	fr, err := r.handshakeFrame(br, sessionKinds)
	if err != nil {
		return streamError(err, "before the session started")
	}
	if fr.kind == frameAbort {
		return abortError(fr.body)
	}
	id, wrapped, err := parseKey(fr.body)
	if err != nil {
		return err
	}
	if r.key, err = cipher.UnwrapKey(wrapped, identity); err != nil {
		// Not wrapped for this session's key: not from the sender that
		// started us.
		return fmt.Errorf("live: shipment key: %v: %w", err, archive.ErrIntegrity)
	}
	r.id = id
	// A heartbeat may come first: the sender's writer of lane 0 puts them
	// before the frames it holds.
	for fr.kind != frameSession {
		if fr, err = r.handshakeFrame(br, "SAP"); err != nil {
			return streamError(err, "before the session started")
		}
		if fr.kind == frameAbort {
			return abortError(fr.body)
		}
	}
	plain, err := r.openControl(fr, frameSession, 0)
	if err != nil {
		return err
	}
	s := &r.sess
	if err := unmarshal(plain, s); err != nil {
		return err
	}
	switch {
	case s.Format != Protocol || s.ID != id:
		return errFrame("session of protocol %d, shipment %q", s.Format, s.ID)
	case s.BlockSize < archive.MinBlockSize || s.BlockSize > archive.MaxBlockSize:
		return errFrame("block size %d out of range", s.BlockSize)
	case s.Compression != "none" && s.Compression != "zstd":
		return errFrame("compression %q", s.Compression)
	case s.Lanes < 0 || s.Lanes > maxLanes:
		return errFrame("%d lanes", s.Lanes)
	case s.TimeoutMS < minTimeout.Milliseconds() || s.TimeoutMS > maxTimeout.Milliseconds():
		return errFrame("timeout of %d ms", s.TimeoutMS)
	}
	r.bs = s.BlockSize
	r.codec, err = archive.NewCodec(r.key, id, archive.FormatV3, s.Compression == "zstd", r.opts.Jobs)
	return err
}

// handshakeFrame reads the next frame of the handshake, unless the sender
// falls silent first: the read, which cannot be interrupted, is then left
// to end on its own, touching nothing else.
func (r *receiver) handshakeFrame(br *bufio.Reader, allowed string) (frame, error) {
	type read struct {
		fr  frame
		err error
	}
	c := make(chan read, 1)
	go func() {
		fr, err := readFrame(br, allowed, nil)
		c <- read{fr, err}
	}()
	select {
	case got := <-c:
		return got.fr, got.err
	case <-r.failed:
		return frame{}, r.failErr
	}
}

// maxRecord is the longest sealed record of a block of bs bytes: its
// form, or a zstd frame of it, sealed.
func maxRecord(bs int64) int64 {
	n := int64(archive.MaxFormLen(bs))
	return cipher.SealedSize(n + n/8 + 1024)
}

// openControl authenticates the next sealed message of the control lane.
func (r *receiver) openControl(fr frame, kind byte, round uint32) ([]byte, error) {
	seq := r.ctlSeq
	r.ctlSeq++
	plain, err := r.key.Open(nil, archive.LiveContext(r.id, kind, 0, seq, round), fr.body)
	if err != nil {
		return nil, fmt.Errorf("live: control message %d (%q, round %d): %w", seq, kind, round, integrity(err))
	}
	return plain, nil
}

// integrity makes a record that fails to open read as an integrity
// failure (exit 5) whichever layer reported it.
func integrity(err error) error {
	switch {
	case errors.Is(err, archive.ErrIntegrity):
		return err
	case errors.Is(err, cipher.ErrIntegrity):
		return fmt.Errorf("not authentic (tampered with, replayed, reordered, injected, or one before it dropped): %w", archive.ErrIntegrity)
	}
	return fmt.Errorf("%v: %w", err, archive.ErrIntegrity)
}

func streamError(err error, when string) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("live: the sender's stream ended %s: %w", when, archive.ErrIntegrity)
	}
	return err
}

func abortError(reason []byte) error {
	return fmt.Errorf("%w: %s", ErrAborted, reason)
}

// openLanes accepts the session's TCP lanes. A connection that does not
// prove it belongs to the session (its first frame sealed under the
// session's key for a lane not yet taken) is closed and ignored: a port
// scanner must not stop a migration.
func (r *receiver) openLanes(ctx context.Context) error {
	n := r.sess.Lanes
	if n == 0 {
		return r.reply(replyReady, readyMsg{})
	}
	if r.opts.Listen == nil {
		return errors.New("live: the sender asked for TCP data connections, which this receiver does not accept")
	}
	ln, err := r.opts.Listen()
	if err != nil {
		return fmt.Errorf("live: listen for data connections: %w", err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	if err := r.reply(replyReady, readyMsg{Host: r.opts.Advertise, Port: port}); err != nil {
		return err
	}

	type hello struct {
		lane uint32
		conn net.Conn
		err  error
	}
	hellos := make(chan hello)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				lane, err := r.laneHello(c)
				c.SetReadDeadline(time.Time{})
				select {
				case hellos <- hello{lane, c, err}:
				case <-stop:
					c.Close()
				}
			}()
		}
	}()
	conns := make([]net.Conn, n)
	timeout := time.NewTimer(r.opts.LaneTimeout)
	defer timeout.Stop()
	for bound := 0; bound < n; {
		select {
		case h := <-hellos:
			if h.err == nil && (h.lane < 1 || int(h.lane) > n || conns[h.lane-1] != nil) {
				h.err = fmt.Errorf("lane %d is not open", h.lane)
			}
			if h.err != nil {
				r.opts.Log("refused a data connection from %s: %v", h.conn.RemoteAddr(), h.err)
				h.conn.Close()
				continue
			}
			conns[h.lane-1] = h.conn
			bound++
		case <-timeout.C:
			for _, c := range conns {
				if c != nil {
					c.Close()
				}
			}
			return fmt.Errorf("live: %d of %d data connections arrived in %s (a firewall in the way? try --data ssh)", bound, n, r.opts.LaneTimeout)
		case <-ctx.Done():
			for _, c := range conns {
				if c != nil {
					c.Close()
				}
			}
			return context.Cause(ctx)
		}
	}
	r.conns = conns
	return nil
}

// laneHello reads and checks the first frame of a TCP connection.
func (r *receiver) laneHello(c net.Conn) (uint32, error) {
	fr, err := readFrame(c, helloKinds, nil)
	if err != nil {
		return 0, err
	}
	lane, sealed, err := parseHello(fr.body)
	if err != nil {
		return 0, err
	}
	plain, err := r.key.Open(nil, archive.LiveContext(r.id, frameHello, lane, 0, 0), sealed)
	if err != nil {
		return 0, fmt.Errorf("not sealed for this session: %w", integrity(err))
	}
	if len(plain) != 0 {
		return 0, errFrame("hello with a payload")
	}
	return lane, nil
}

// allocBlock gives block frames a buffer from the pool, so that the
// records in flight are bounded whatever the senders do.
func (r *receiver) allocBlock(ctx context.Context) func(kind byte, n int) ([]byte, error) {
	return func(kind byte, n int) ([]byte, error) {
		if kind != frameBlock {
			return nil, nil
		}
		if n > r.pool.Size() {
			return nil, errFrame("block frame of %d bytes for blocks of %d", n, r.bs)
		}
		b, ok := r.pool.Get(ctx.Done())
		if !ok {
			return nil, context.Cause(ctx)
		}
		return b, nil
	}
}

func (r *receiver) readControl(ctx context.Context, br *bufio.Reader) {
	alloc := r.allocBlock(ctx)
	for {
		fr, err := readFrame(br, controlKinds, alloc)
		if err == nil && fr.kind == frameBeat {
			continue // it was heard, which is all it says
		}
		select {
		case r.ctl <- ctlFrame{fr, err}:
		case <-ctx.Done():
			r.pool.Put(fr.buf)
			return
		}
		if err != nil {
			return
		}
	}
}

// nextControl returns the next frame of the control lane, of a kind in
// allowed.
func (r *receiver) nextControl(ctx context.Context, allowed string) (frame, error) {
	select {
	case c := <-r.ctl:
		switch {
		case c.err != nil:
			return frame{}, streamError(c.err, "before the shipment was complete")
		case c.kind == frameAbort:
			return frame{}, abortError(c.body)
		case !containsByte(allowed, c.kind):
			r.pool.Put(c.buf)
			return frame{}, errFrame("unexpected %q frame on the control lane", c.kind)
		}
		return c.frame, nil
	case <-r.failed:
		return frame{}, r.failErr
	case <-ctx.Done():
		return frame{}, context.Cause(ctx)
	}
}

// unexpectedControl reports a control frame that arrived while the
// receiver finished a round: only an abort may come then.
func (r *receiver) unexpectedControl(c ctlFrame) error {
	switch {
	case c.err != nil:
		return streamError(c.err, "before the shipment was complete")
	case c.kind == frameAbort:
		return abortError(c.body)
	}
	r.pool.Put(c.buf)
	return errFrame("unexpected %q frame on the control lane", c.kind)
}

func containsByte(s string, b byte) bool {
	for i := range len(s) {
		if s[i] == b {
			return true
		}
	}
	return false
}

// rounds runs the rounds up to the final one and returns its number.
func (r *receiver) rounds(ctx context.Context) (uint32, error) {
	for round := uint32(1); ; round++ {
		fr, err := r.nextControl(ctx, "B")
		if err != nil {
			return 0, err
		}
		plain, err := r.openControl(fr, frameBegin, round)
		if err != nil {
			return 0, err
		}
		var begin beginMsg
		if err := unmarshal(plain, &begin); err != nil {
			return 0, err
		}
		if begin.Round != round {
			return 0, errFrame("round %d begins as round %d", round, begin.Round)
		}
		if err := r.begin(ctx, begin); err != nil {
			return 0, err
		}
		r.blocks.Store(0)
		r.bytes.Store(0)
		r.gate.open(round, begin.Final)
		end, err := r.controlBlocks(ctx, round)
		if err != nil {
			return 0, err
		}
		if err := r.roundWritten(ctx, round, end); err != nil {
			return 0, err
		}
		n, b := r.blocks.Load(), r.bytes.Load()
		r.opts.Log("round %d: %d blocks, %d bytes written", round, n, b)
		if err := r.reply(replyAck, ackMsg{Round: round, Blocks: n, Bytes: b}); err != nil {
			return 0, err
		}
		if begin.Final {
			return round, nil
		}
	}
}

// controlBlocks takes the block records of the control lane up to the
// end of the round, and checks the end's count of them.
func (r *receiver) controlBlocks(ctx context.Context, round uint32) (endMsg, error) {
	var blocks uint64
	var end endMsg
	for {
		fr, err := r.nextControl(ctx, "DE")
		if err != nil {
			return end, err
		}
		if fr.kind == frameBlock {
			if err := r.dispatch(ctx, 0, r.ctlSeq, round, fr); err != nil {
				return end, err
			}
			r.ctlSeq++
			blocks++
			continue
		}
		plain, err := r.openControl(fr, frameRoundEnd, round)
		if err != nil {
			return end, err
		}
		if err := unmarshal(plain, &end); err != nil {
			return end, err
		}
		break
	}
	if end.Round != round || len(end.Blocks) != len(r.conns)+1 {
		return end, errFrame("round %d ends as round %d with %d lanes", round, end.Round, len(end.Blocks))
	}
	if end.Blocks[0] != blocks {
		return end, errFrame("round %d: the control lane carried %d blocks, the sender sent %d", round, blocks, end.Blocks[0])
	}
	return end, nil
}

// roundWritten waits for the end of the round on every TCP lane, then for
// every block of the round to be written. Meanwhile the control lane may
// only abort; if it ends, the lanes and workers first get to report what
// they saw.
func (r *receiver) roundWritten(ctx context.Context, round uint32, end endMsg) error {
	ctl, ended := r.ctl, error(nil)
	// control takes a control frame that arrived meanwhile: an abort
	// fails at once; the lane's end is reported once the rest has, or
	// once the lanes had laneEOFGrace to report: a lane whose packets
	// vanish would not end for many minutes, holding the folder.
	var grace <-chan time.Time
	control := func(c ctlFrame) error {
		if ended = r.unexpectedControl(c); c.err == nil {
			return ended
		}
		ctl, grace = nil, time.After(laneEOFGrace)
		return nil
	}
	for lanes := len(r.conns); lanes > 0; {
		select {
		case le := <-r.laneEnds:
			if le.round != round || le.blocks != end.Blocks[le.lane] {
				return errFrame("round %d: lane %d carried %d blocks, the sender sent %d", round, le.lane, le.blocks, end.Blocks[le.lane])
			}
			lanes--
		case c := <-ctl:
			if err := control(c); err != nil {
				return err
			}
		case <-grace:
			return ended
		case <-r.failed:
			return r.failErr
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	// Workers stop on a failure: wait for them only while nothing failed.
	written := make(chan struct{})
	go func() {
		r.roundWG.Wait()
		close(written)
	}()
	for waiting := true; waiting; {
		select {
		case <-written:
			waiting = false
		case c := <-ctl:
			if err := control(c); err != nil {
				return err
			}
		case <-r.failed:
			return r.failErr
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	select {
	case <-r.failed:
		return r.failErr
	default:
	}
	return ended
}

// begin applies a round's file table: the first opens the restore
// writer (which checks the final paths and creates the temporary files),
// later ones follow changes of size.
func (r *receiver) begin(ctx context.Context, b beginMsg) error {
	if err := archive.CheckLiveFiles(b.Files); err != nil {
		return errFrame("round %d: %v", b.Round, err)
	}
	cnt := r.opts.Counters
	cnt.Total.Store(0)
	cnt.Done.Store(0)
	cnt.Hole.Store(0) // zero blocks passed, counted per round as Done is
	for _, f := range b.Files {
		cnt.Total.Add(f.Size)
	}
	if b.Round == 1 {
		return r.create(ctx, b.Files)
	}
	if len(b.Files) != len(r.files) {
		return errFrame("round %d has %d files, round 1 had %d", b.Round, len(b.Files), len(r.files))
	}
	for i, f := range b.Files {
		rf := &r.files[i]
		if f.Path != rf.path || f.Type != rf.typ {
			return errFrame("round %d: file %d is %s %q, was %s %q", b.Round, i, f.Type, f.Path, rf.typ, rf.path)
		}
		if f.Type == archive.TypeFile && f.Size != rf.size {
			// The block the shorter size cuts is zeroed, so that every
			// block not written since holds zeros, as the sender assumes.
			if err := r.w.Resize(i, f.Size); err != nil {
				return err
			}
			rf.size = f.Size
		}
	}
	return nil
}

// create opens the restore writer on round 1's file table.
func (r *receiver) create(ctx context.Context, files []archive.File) error {
	r.files = make([]recvFile, len(files))
	for i, f := range files {
		r.files[i] = recvFile{path: f.Path, typ: f.Type, size: f.Size}
	}
	w, err := restore.Open(ctx, restore.Shipment{ID: r.id, Format: archive.FormatV3, BlockSize: r.bs, Files: files}, restore.Options{
		Dir: r.dir, Force: r.opts.Force, Live: true, ReadBack: r.opts.ReadBack, NoSameOwner: r.opts.NoSameOwner,
		LockWait: r.opts.LockWait, Jobs: r.opts.Jobs, Counters: r.opts.Counters, Log: r.opts.Log,
	})
	if err != nil {
		return err
	}
	r.w = w
	return nil
}

// dispatch checks a block frame's place and hands it to the workers.
func (r *receiver) dispatch(ctx context.Context, lane uint32, seq uint64, round uint32, fr frame) error {
	h, record, err := parseBlock(fr.body)
	if err == nil && (int64(h.file) >= int64(len(r.files)) || r.files[h.file].typ != archive.TypeFile ||
		h.block >= uint64((r.files[h.file].size+r.bs-1)/r.bs)) {
		err = errFrame("lane %d record %d: block %d of file %d is out of range", lane, seq, h.block, h.file)
	}
	if err != nil {
		r.pool.Put(fr.buf)
		return err
	}
	r.opts.Counters.Shipped.Add(int64(len(fr.body) + frameHeaderSize))
	r.roundWG.Add(1)
	select {
	case r.jobs <- recvJob{lane: lane, seq: seq, round: round, h: h, record: record, buf: fr.buf}:
		return nil
	case <-ctx.Done():
		r.roundWG.Done()
		r.pool.Put(fr.buf)
		return context.Cause(ctx)
	}
}

func (r *receiver) work(ctx context.Context) {
	defer r.bg.Done()
	n := int64(archive.MaxFormLen(r.bs))
	out, scratch := make([]byte, n), make([]byte, 0, n+n/8+1024)
	for {
		select {
		case j := <-r.jobs:
			if err := r.writeBlock(j, out, scratch); err != nil {
				r.fail(err)
			}
			r.pool.Put(j.buf)
			r.roundWG.Done()
		case <-ctx.Done():
			return
		}
	}
}

// writeBlock opens a block record in its place (shipment, lane, position,
// round, file, block), checks its form and hands it to the restore
// writer, which writes its data pages and keeps its digest: the
// whole-file digests that must match the sender's manifest are made of
// the digests of the forms written last.
func (r *receiver) writeBlock(j recvJob, out, scratch []byte) error {
	select {
	case <-r.failed:
		return nil
	default:
	}
	f := &r.files[j.h.file]
	n := archive.BlockLen(f.size, r.bs, int64(j.h.block))
	context := archive.LiveBlockContext(r.id, j.lane, j.seq, j.round, j.h.file, j.h.block, j.h.compressed)
	form, data, err := r.codec.OpenLiveForm(out, scratch, j.record, context, j.h.compressed, n)
	if err != nil {
		return fmt.Errorf("live: lane %d record %d (%s block %d, round %d): %w", j.lane, j.seq, f.path, j.h.block, j.round, integrity(err))
	}
	if err := r.w.WriteLive(int(j.h.file), int64(j.h.block), form, data, j.round); err != nil {
		if errors.Is(err, archive.ErrIntegrity) {
			return errFrame("%v", err)
		}
		return err
	}
	r.blocks.Add(1)
	r.bytes.Add(n)
	return nil
}

// readLane reads TCP lane n, round after round: its block records, then
// the sealed end of the round that counts them.
func (r *receiver) readLane(ctx context.Context, n uint32, br *bufio.Reader) {
	defer r.bg.Done()
	alloc := r.allocBlock(ctx)
	seq := uint64(1) // 0 was the hello
	for round := uint32(1); ; round++ {
		final, ok := r.gate.wait(round)
		if !ok {
			return
		}
		var blocks uint64
		for {
			fr, err := readFrame(br, laneKinds, alloc)
			if err != nil {
				if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					// A sender that gives up says why on the control lane,
					// and closes this one: give that word time to arrive.
					select {
					case <-ctx.Done():
						return
					case <-time.After(laneEOFGrace):
					}
					err = fmt.Errorf("live: data connection %d ended in round %d: %w", n, round, archive.ErrIntegrity)
				} else if ctx.Err() == nil && !errors.Is(err, archive.ErrIntegrity) {
					err = fmt.Errorf("live: data connection %d: %w", n, err)
				}
				r.fail(err)
				return
			}
			if fr.kind == frameBlock {
				if err := r.dispatch(ctx, n, seq, round, fr); err != nil {
					r.fail(err)
					return
				}
				seq++
				blocks++
				continue
			}
			plain, err := r.key.Open(nil, archive.LiveContext(r.id, frameLaneEnd, n, seq, round), fr.body)
			seq++
			if err != nil {
				r.fail(fmt.Errorf("live: data connection %d: the end of round %d: %w", n, round, integrity(err)))
				return
			}
			endRound, endBlocks, err := parseLaneEnd(plain)
			if err == nil && (endRound != round || endBlocks != blocks) {
				err = errFrame("data connection %d ends round %d as round %d with %d blocks, it carried %d", n, round, endRound, endBlocks, blocks)
			}
			if err != nil {
				r.fail(err)
				return
			}
			select {
			case r.laneEnds <- laneEnd{lane: n, round: round, blocks: blocks}:
			case <-ctx.Done():
				return
			}
			break
		}
		if final {
			return
		}
	}
}

// finish checks every file against the manifest, then has the restore
// writer check and rename them all into place.
func (r *receiver) finish(ctx context.Context, m *archive.LiveManifest, rounds uint32) ([]string, error) {
	if m.ID != r.id || m.BlockSize != r.bs || m.Compression != r.sess.Compression || m.Rounds != int(rounds) || len(m.Files) != len(r.files) {
		return nil, errFrame("the manifest does not match the session")
	}
	defer r.watchControl()()
	for i := range m.Files {
		mf, rf := &m.Files[i], &r.files[i]
		if mf.Path != rf.path || mf.Type != rf.typ || mf.Size != rf.size {
			return nil, errFrame("manifest: file %d is %s %q of %d bytes, the final round sent %s %q of %d", i,
				mf.Type, mf.Path, mf.Size, rf.typ, rf.path, rf.size)
		}
		if err := ctx.Err(); err != nil {
			return nil, context.Cause(ctx)
		}
		if err := r.w.Settle(i, *mf); err != nil {
			return nil, err
		}
	}
	res, err := r.w.Commit(ctx)
	if err != nil {
		return nil, err
	}
	return res.Files, nil
}

// watchControl fails the session if the control lane aborts or ends while
// the files are checked, until it returns stop: the sender gave up
// (interrupted, or its link dropped) and reports a failure, so nothing
// may land. Once the files are landing, they all land.
func (r *receiver) watchControl() (stop func()) {
	done := make(chan struct{})
	go func() {
		select {
		case c := <-r.ctl:
			r.fail(r.unexpectedControl(c))
		case <-done:
		}
	}()
	return func() { close(done) }
}

// gate lets the TCP lanes' readers into a round once the control lane has
// begun it, so that no block of a round is written before every block of
// the round before.
type gate struct {
	mu     sync.Mutex
	cond   sync.Cond
	round  uint32
	final  bool
	closed bool
}

func (g *gate) open(round uint32, final bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.round, g.final = round, final
	g.cond.Broadcast()
}

func (g *gate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	g.cond.Broadcast()
}

// wait waits for round to begin and reports whether it is the final one;
// ok is false once the session is over.
func (g *gate) wait(round uint32) (final, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.round < round && !g.closed {
		g.cond.Wait()
	}
	if g.closed {
		return false, false
	}
	return g.final, true
}
