package sftp

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	sftpclient "github.com/pkg/sftp"
	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/shipper"
)

// smallRead is the largest Open that is read at once into memory rather
// than streamed, and smallPut the largest Put of known size that is no
// transfer (see acquire): the objects other than segments.
const (
	smallRead = 1 << 20
	smallPut  = 1 << 20
)

// isTransfer says whether a Put of size bytes is a transfer.
func isTransfer(size int64) bool { return size < 0 || size > smallPut }

// Transport stores objects as files under a directory of an SFTP server.
// It keeps a pool of SFTP sessions (streams), each in an SSH channel of its
// own, several to an SSH connection (links), and gives each Put or Open to
// a stream that acquire picks; a session or connection that breaks is
// opened again by the next call that picks it.
type Transport struct {
	dest    *destination
	target  *endpoint
	route   *route // how connections reach the destination
	stderr  io.Writer
	log     func(format string, a ...any) // Config.Log
	links   []*link
	streams []*stream
	rtt     time.Duration // measured on the first connection

	pickMu       sync.Mutex
	closed       atomic.Bool
	bannerShown  atomic.Bool
	refusalShown atomic.Bool

	handshakes chan struct{} // a slot for each connection being made
	stopDials  context.CancelFunc

	upMu sync.Mutex
	up   chan struct{} // closed (and replaced) as a stream's first session is made or fails

	reads *readBuffers // the chunks of all streamed reads

	noticeMu sync.Mutex
	noticed  map[string]time.Time // when each notice was last given

	orphanMu sync.Mutex
	orphans  []string // temporaries left by a Put whose connection broke

	dirs dirSet // folders made
}

var (
	_ shipper.Transport    = (*Transport)(nil)
	_ shipper.LinkReporter = (*Transport)(nil)
)

// Dial resolves cfg through ssh_config, connects, authenticates and starts
// the pool: cfg.Streams SFTP sessions (without it, as many as AutoStreams
// says for the round trip measured on the first), spread over SSH
// connections as Plan says. The first connection is made alone, so that a
// passphrase is asked and a new host key recorded once; as soon as it has
// authenticated, the connections that AheadLinks guesses from its
// handshake's duration are dialled while its first session opens and
// times the round trip, and Dial returns with that session: the other
// sessions and connections are opened in parallel in the background (on a
// 100 ms link a connection takes about a second), and a
// transfer that picks a stream before it is up waits for it. A stream that
// cannot connect (sshd's MaxStartups, a transient error) is opened again
// when used; one whose channel the server refuses (MaxSessions) is
// retired. The remote directory is created by the first Put.
func Dial(ctx context.Context, cfg Config) (*Transport, error) {
	d, err := resolve(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.Streams < 0 {
		return nil, fmt.Errorf("sftp: invalid number of streams %d", cfg.Streams)
	}
	t, err := newTransport(d, cfg)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	sc, err := t.dialSSH(ctx)
	if err != nil {
		return nil, err
	}
	// The background work outlives Dial's ctx (a deadline for connecting,
	// often): Close stops it.
	bg, stop := context.WithCancel(context.WithoutCancel(ctx))
	t.stopDials = stop
	ahead := t.dialAhead(bg, AheadLinks(time.Since(start), cfg.Streams, t.route.tunnelled()))
	first, rtt, err := openSession(ctx, sc, true)
	if err != nil {
		stop()
		for _, l := range ahead {
			l.abandon()
		}
		sc.client.Close()
		return nil, fmt.Errorf("connect to %s: %w", d.addr(), err)
	}
	t.rtt = rtt
	plan := Plan(rtt, cfg.Streams, t.route.tunnelled())
	if len(plan) < 1+len(ahead) {
		plan = spread(sum(plan), 1+len(ahead))
	}
	var groups [][]*stream
	for i, n := range plan {
		l := &link{t: t}
		if i > 0 && i <= len(ahead) {
			l = ahead[i-1]
		}
		t.links = append(t.links, l)
		var group []*stream
		for range n {
			group = append(group, &stream{t: t, l: l})
		}
		t.streams = append(t.streams, group...)
		groups = append(groups, group)
	}
	t.reads = newReadBuffers(readBudget, len(t.streams))
	t.links[0].set(sc)
	t.streams[0].set(first)
	for i, l := range t.links {
		streams := groups[i]
		if i == 0 {
			streams = streams[1:]
		}
		// Locked before Dial returns, so that a call picking one of them
		// waits for this rather than starting its own.
		for _, s := range streams {
			s.mu.Lock()
			s.dialing.Store(true)
		}
		go t.fill(bg, l, streams)
	}
	return t, nil
}

// newTransport prepares the authentication to the destination and the
// route to it, without connecting.
func newTransport(d *destination, cfg Config) (*Transport, error) {
	target, err := newEndpoint(d, cfg)
	if err != nil {
		return nil, err
	}
	r, err := newRoute(d, cfg)
	if err != nil {
		return nil, err
	}
	return &Transport{
		dest:       d,
		target:     target,
		route:      r,
		stderr:     cfg.Stderr,
		log:        cfg.Log,
		handshakes: make(chan struct{}, maxHandshakes),
		up:         make(chan struct{}),
	}, nil
}

// fill connects l if it is not, and opens the sessions of its streams,
// all at once (the channels of one connection open in parallel); the
// caller locked every stream.
func (t *Transport) fill(ctx context.Context, l *link, streams []*stream) {
	done := func(s *stream) {
		s.dialing.Store(false)
		s.mu.Unlock()
		t.upMu.Lock()
		close(t.up)
		t.up = make(chan struct{})
		t.upMu.Unlock()
	}
	sc, err := l.get(ctx)
	if err != nil {
		for _, s := range streams {
			done(s)
		}
		return
	}
	for _, s := range streams {
		go func() {
			defer done(s)
			c, _, err := openSession(ctx, sc, false)
			var refused *channelRefusedError
			switch {
			case errors.As(err, &refused):
				s.refuse(err)
			case err != nil:
			case t.closed.Load(): // Close ran meanwhile
				c.close()
			default:
				s.set(c)
			}
		}()
	}
}

var _ shipper.StreamWaiter = (*Transport)(nil)

// WaitStreams returns once n streams have a live session, or none is
// being made any more (one that failed is made again by the call that
// picks it).
func (t *Transport) WaitStreams(ctx context.Context, n int) error {
	for {
		t.upMu.Lock()
		up := t.up
		t.upMu.Unlock()
		live, dialing := 0, false
		for _, s := range t.streams {
			if s.healthy() {
				live++
			}
			dialing = dialing || s.dialing.Load()
		}
		if live >= n || !dialing {
			return nil
		}
		select {
		case <-up:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Streams is the number of SFTP sessions the Transport keeps: how many
// segments to move at once.
func (t *Transport) Streams() int { return len(t.streams) }

// LinkStats reports the round trip measured on the first connection and
// the SSH connections and SFTP channels that are up.
func (t *Transport) LinkStats() shipper.LinkStats {
	st := shipper.LinkStats{RTT: t.rtt}
	for _, l := range t.links {
		if sc := l.live.Load(); sc != nil && sc.alive() {
			st.Connections++
		}
	}
	for _, s := range t.streams {
		if s.healthy() {
			st.Channels++
		}
	}
	return st
}

// String names the destination as an sftp URL.
func (t *Transport) String() string { return t.dest.String() }

// Close closes the connections. It does not delete anything. It does not
// wait for a dial in progress, which closes its connection itself.
func (t *Transport) Close() error {
	t.closed.Store(true)
	if t.stopDials != nil {
		t.stopDials()
	}
	for _, l := range t.links {
		if l.mu.TryLock() {
			if l.sc != nil {
				l.sc.client.Close()
			}
			l.abandon()
			l.mu.Unlock()
		}
	}
	for _, s := range t.streams {
		if c := s.live.Swap(nil); c != nil {
			c.close()
		}
	}
	t.route.close()
	return nil
}

// remote returns the remote path of a checked object name.
func (t *Transport) remote(name string) string {
	if t.dest.root == "" {
		return name
	}
	return path.Join(t.dest.root, name)
}

// Put writes r to a temporary file next to the object, syncs it
// (fsync@openssh.com) and renames it over the object
// (posix-rename@openssh.com), so that the object appears complete or not at
// all. SFTP cannot sync a directory, so the rename itself is as durable as
// the server's file system makes it. Many write requests are kept in
// flight, whether or not size is known.
func (t *Transport) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if err := shipper.CheckName(name); err != nil {
		return err
	}
	err := t.do(ctx, isTransfer(size), func(c *conn) error { return t.put(ctx, c, t.remote(name), r, size, false, nil) })
	if err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	return nil
}

var _ shipper.GatedPutter = (*Transport)(nil)

// PutGated is Put, but the object is renamed into place only once ready
// has returned nil: the temporary is created, written and synced first.
func (t *Transport) PutGated(ctx context.Context, name string, r io.Reader, size int64, ready func() error) error {
	if err := shipper.CheckName(name); err != nil {
		return err
	}
	var gate *gateError
	err := t.do(ctx, isTransfer(size), func(c *conn) error {
		return t.put(ctx, c, t.remote(name), r, size, false, func() error {
			if err := ready(); err != nil {
				gate = &gateError{err}
				return gate
			}
			return nil
		})
	})
	switch {
	case gate != nil:
		return gate.err
	case err != nil:
		return fmt.Errorf("put %s: %w", name, err)
	}
	return nil
}

// gateError is a failure of PutGated's ready: it says nothing about the
// session.
type gateError struct{ err error }

func (e *gateError) Error() string { return e.err.Error() }
func (e *gateError) Unwrap() error { return e.err }

var _ shipper.ExclusiveCreator = (*Transport)(nil)

// PutNew is Put for an object that must not exist yet (a key slot): the
// synced temporary is published with a hard link (hardlink@openssh.com),
// or else with SFTP's own rename, which the protocol defines to fail when
// the target exists and which OpenSSH's sftp-server implements with
// link(2) too. Either fails when the object exists or appears meanwhile,
// and the object is left as it was: the error then wraps
// shipper.ErrObjectExists. (On a file system without hard links, OpenSSH
// falls back to a check followed by a rename, which two racing writers
// could both pass.)
func (t *Transport) PutNew(ctx context.Context, name string, r io.Reader, size int64) error {
	if err := shipper.CheckName(name); err != nil {
		return err
	}
	err := t.do(ctx, isTransfer(size), func(c *conn) error { return t.put(ctx, c, t.remote(name), r, size, true, nil) })
	if err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	return nil
}

// put writes the object through a temporary; exclusive publishes it only
// where no object exists; ready, if not nil, must return nil before it is
// published.
func (t *Transport) put(ctx context.Context, c *conn, final string, r io.Reader, size int64, exclusive bool, ready func() error) (err error) {
	dir := path.Dir(final)
	tmp := path.Join(dir, "."+path.Base(final)+".tmp-"+randomSuffix())
	const flags = os.O_WRONLY | os.O_CREATE | os.O_EXCL
	t.dirs.ensure(dir, func() { t.makeDirs(c, dir) })
	f, err := c.sftp.OpenFile(tmp, flags)
	if errors.Is(err, os.ErrNotExist) {
		// The folder was not made (the root is missing), or a Delete of
		// its last object removed it: make it level by level, with the
		// precise error if it cannot be.
		if err := mkdirAll(c.sftp, dir); err != nil {
			return t.classify(c, "create directory", dir, err)
		}
		f, err = c.sftp.OpenFile(tmp, flags)
	}
	if err != nil {
		return t.classify(c, "create", tmp, err)
	}
	open := true
	defer func() {
		if err != nil {
			if open {
				f.Close()
			}
			t.discard(c, tmp)
		}
	}()

	src := &sourceReader{ctx: ctx, r: r}
	if every := earlySyncEvery(len(t.streams)); every > 0 && c.fsync && (size < 0 || size > smallPut) {
		src.early = newEarlySync(c, tmp, every)
	}
	var in io.Reader = src
	concurrency := c.requests()
	if size >= 0 {
		// One byte more than announced is enough to notice a longer source.
		in = io.LimitReader(src, size+1)
		concurrency = int(min(int64(concurrency), size/int64(c.packet)+1))
	}
	// ReadFrom would write sequentially for a reader of unknown size (an
	// io.Pipe): ReadFromWithConcurrency keeps the requests in flight.
	_, err = f.ReadFromWithConcurrency(in, concurrency)
	src.early.stop()
	if src.err != nil {
		return &sourceError{src.err}
	}
	if err != nil {
		return t.classify(c, "write", tmp, err)
	}
	if size >= 0 && src.n != size {
		return fmt.Errorf("the source yielded %d bytes, want %d", src.n, size)
	}
	open = false
	return t.publish(c, f, tmp, final, exclusive, ready)
}

// publish closes the written temporary f, syncing it first where the
// server can, and gives it its final name once ready (if any) returns nil;
// exclusive publishes it only where no object exists.
func (t *Transport) publish(c *conn, f *sftpclient.File, tmp, final string, exclusive bool, ready func() error) error {
	publish := t.rename
	if exclusive {
		publish = t.publishNew
	}
	if !c.fsync {
		if err := f.Close(); err != nil {
			return t.classify(c, "close", tmp, err)
		}
		if err := gate(ready); err != nil {
			return err
		}
		return publish(c, tmp, final)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return t.classify(c, "sync", tmp, err)
	}
	if err := gate(ready); err != nil {
		f.Close()
		return err
	}
	// Synced: the file is complete on the server's disk, so the handle is
	// closed while it is renamed, one round trip instead of two. (Only
	// where fsync@openssh.com says the server writes through to a file
	// system; a server that stores a file when it is closed gets the
	// rename after the close.)
	closed := make(chan error, 1)
	go func() { closed <- f.Close() }()
	perr := publish(c, tmp, final)
	cerr := <-closed
	if perr != nil {
		return perr
	}
	if cerr != nil {
		return t.classify(c, "close", final, cerr)
	}
	return nil
}

// makeDirs makes the root and the folders below it down to dir, whatever
// the answers (an error shows in the create that follows), in one round
// trip: the requests are sent together, parents first, and a server that
// runs them in order (OpenSSH does) makes every level. One that a parent
// missing at that moment failed (another server, or a request overtaken
// on its way out) is sent again once the others have been answered. A
// new shipment's folders, and a new destination's root, then cost one
// round trip, not one per level or the failed create, failed folder,
// parent, folder and create again of making them only once a create fails.
func (t *Transport) makeDirs(c *conn, dir string) {
	rel := dir
	if t.dest.root != "" {
		var ok bool
		if rel, ok = strings.CutPrefix(dir, strings.TrimSuffix(t.dest.root, "/")+"/"); !ok {
			return
		}
	}
	if rel == "." || shipper.CheckName(rel) != nil {
		return
	}
	var levels []string
	if r := strings.TrimSuffix(t.dest.root, "/"); r != "" && r != "." {
		levels = append(levels, r)
	}
	parts := strings.Split(rel, "/")
	for i := range parts {
		levels = append(levels, t.remote(strings.Join(parts[:i+1], "/")))
	}
	missing := make([]bool, len(levels))
	var wg sync.WaitGroup
	for i, d := range levels {
		wg.Add(1)
		go func() {
			defer wg.Done()
			missing[i] = errors.Is(c.sftp.Mkdir(d), os.ErrNotExist)
		}()
		runtime.Gosched() // parents go out first, as a rule
	}
	wg.Wait()
	for i, d := range levels {
		if missing[i] {
			c.sftp.Mkdir(d)
		}
	}
}

// dirSet is the folders a Transport has made (or found), so that a Put
// makes its folder once, and Puts into one new folder wait for the first
// to make it rather than all trying.
type dirSet struct {
	mu sync.Mutex
	m  map[string]chan struct{} // closed once made or tried
}

func (d *dirSet) ensure(dir string, mkdir func()) {
	d.mu.Lock()
	if d.m == nil {
		d.m = map[string]chan struct{}{}
	}
	done, ok := d.m[dir]
	if !ok {
		done = make(chan struct{})
		d.m[dir] = done
	}
	d.mu.Unlock()
	if ok {
		<-done
		return
	}
	defer close(done)
	mkdir()
}

// mkdirAll creates dir and its missing parents in fewer round trips than
// the client's MkdirAll, which stats every level first: Mkdir at once, and
// a parent only when Mkdir says it is missing.
func mkdirAll(c *sftpclient.Client, dir string) error {
	err := c.Mkdir(dir)
	if err == nil {
		return nil
	}
	if parent := path.Dir(dir); errors.Is(err, os.ErrNotExist) && parent != dir && parent != "." && parent != "/" {
		if err := mkdirAll(c, parent); err != nil {
			return err
		}
		if err = c.Mkdir(dir); err == nil {
			return nil
		}
	}
	// SFTP says only "failure" for a directory that exists (a concurrent
	// Put made it): look. A file in its place will not go away by itself.
	if fi, serr := c.Stat(dir); serr == nil {
		if fi.IsDir() {
			return nil
		}
		return &notDirError{dir}
	}
	return err
}

// notDirError is a file where the destination needs a directory.
type notDirError struct{ path string }

func (e *notDirError) Error() string {
	return e.path + " is not a directory"
}

// rename moves tmp over final. Without posix-rename@openssh.com, SFTPv3's
// rename fails if final exists, so final is removed first: the only window
// in which neither version of the object exists.
func (t *Transport) rename(c *conn, tmp, final string) error {
	if c.posixRename {
		if err := c.sftp.PosixRename(tmp, final); err != nil {
			return t.publishError(c, final, err)
		}
		return nil
	}
	err := c.sftp.Rename(tmp, final)
	if err == nil {
		return nil
	}
	if _, serr := c.sftp.Stat(final); serr != nil {
		return t.classify(c, "rename to", final, err)
	}
	if err := c.sftp.Remove(final); err != nil {
		return t.publishError(c, final, err)
	}
	if err := c.sftp.Rename(tmp, final); err != nil {
		return t.classify(c, "rename to", final, err)
	}
	return nil
}

// publishNew gives tmp the name final only if final does not exist: a
// hard link, which link(2) makes exclusive, then the temporary's removal;
// without hardlink@openssh.com, or on a file system without hard links,
// SFTP's rename, exclusive by the protocol.
func (t *Transport) publishNew(c *conn, tmp, final string) error {
	if c.hardlink {
		err := c.sftp.Link(tmp, final)
		if err == nil {
			if err := c.sftp.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
				t.remember(tmp)
			}
			return nil
		}
		if exists, perr := t.existing(c, final); exists || perr != nil {
			return perr
		}
		if isConnError(err) {
			return t.classify(c, "link to", final, err)
		}
	}
	err := c.sftp.Rename(tmp, final)
	if err == nil {
		return nil
	}
	if exists, perr := t.existing(c, final); exists || perr != nil {
		return perr
	}
	return t.classify(c, "rename to", final, err)
}

// existing says whether final exists after a failed publication, and the
// error to report if it does: ErrObjectExists for a file, a permanent
// error for a directory.
func (t *Transport) existing(c *conn, final string) (bool, error) {
	fi, err := c.sftp.Lstat(final)
	switch {
	case err != nil:
		return false, nil
	case fi.IsDir():
		return true, fmt.Errorf("%s is a directory (%w)", final, shipper.ErrPermanent)
	}
	return true, fmt.Errorf("%s: %w", final, shipper.ErrObjectExists)
}

// publishError classifies a failed rename over final: a directory in the
// way is permanent, as OpenSSH reports it only as a failure.
func (t *Transport) publishError(c *conn, final string, err error) error {
	if fi, serr := c.sftp.Lstat(final); serr == nil && fi.IsDir() {
		return fmt.Errorf("rename to %s: it is a directory (%w)", final, shipper.ErrPermanent)
	}
	return t.classify(c, "rename to", final, err)
}

// discard removes a temporary, or remembers it for when the connection is
// back.
func (t *Transport) discard(c *conn, tmp string) {
	if err := c.sftp.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.remember(tmp)
	}
}

// remember keeps a temporary to remove once a connection is back.
func (t *Transport) remember(tmp string) {
	t.orphanMu.Lock()
	t.orphans = append(t.orphans, tmp)
	t.orphanMu.Unlock()
}

// removeOrphans removes the temporaries that broken connections left, on a
// fresh connection. It is best effort: a temporary is never listed.
func (t *Transport) removeOrphans(c *conn) {
	t.orphanMu.Lock()
	orphans := t.orphans
	t.orphans = nil
	t.orphanMu.Unlock()
	for i, tmp := range orphans {
		if err := c.sftp.Remove(tmp); err != nil && isConnError(err) {
			t.orphanMu.Lock()
			t.orphans = append(t.orphans, orphans[i:]...)
			t.orphanMu.Unlock()
			return
		}
	}
}

func randomSuffix() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// sourceReader counts what Put reads, keeps the source's error apart from
// the server's, and stops when ctx is cancelled.
type sourceReader struct {
	ctx   context.Context
	r     io.Reader
	n     int64
	err   error
	early *earlySync // nil: none
}

func (s *sourceReader) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		s.err = err
		return 0, err
	}
	n, err := s.r.Read(p)
	s.n += int64(n)
	s.early.read(s.n)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// gate runs ready, if any.
func gate(ready func() error) error {
	if ready == nil {
		return nil
	}
	return ready()
}

// sourceError is a failure of the reader given to Put.
type sourceError struct{ err error }

func (e *sourceError) Error() string { return "read source: " + e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

// Open returns a reader of the object's bytes [offset, offset+length). A
// large range is streamed with several reads in flight; the reader stops
// with ctx.
func (t *Transport) Open(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	if err := shipper.CheckName(name); err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, fmt.Errorf("open %s: negative offset %d", name, offset)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	transfer := length < 0 || length > smallRead
	s, c, err := t.session(ctx, t.acquire(transfer), transfer)
	if err != nil {
		s.release(transfer)
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	rc, err := t.open(ctx, c, name, offset, length)
	if err != nil {
		s.checkBroken(c, err)
		s.release(transfer)
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	if rr, ok := rc.(*rangeReader); ok {
		rr.release = func(err error) {
			if err != nil {
				s.checkBroken(c, err)
			}
			s.release(transfer)
		}
		return rr, nil
	}
	s.release(transfer)
	return rc, nil
}

// open opens the object on c: a small range is read at once, a large one
// returned as a rangeReader. The size and the first bytes (all of a small
// object) are asked for together, one round trip, into a buffer of
// t.reads that becomes the rangeReader's own; the handle is closed
// without waiting for the server's answer.
func (t *Transport) open(ctx context.Context, c *conn, name string, offset, length int64) (io.ReadCloser, error) {
	p := t.remote(name)
	f, err := c.sftp.Open(p)
	if err != nil {
		return nil, t.classify(c, "open", p, err)
	}
	var own, head []byte
	if length >= 0 && length < readChunk {
		head = make([]byte, length)
	} else {
		own = t.reads.own()
		head = own
	}
	var m int
	var rerr error
	read := make(chan struct{})
	go func() {
		defer close(read)
		if len(head) > 0 {
			m, rerr = f.ReadAt(head, offset)
		}
	}()
	fi, err := f.Stat()
	<-read
	fail := func(err error) (io.ReadCloser, error) {
		if own != nil {
			t.reads.put(own, false)
		}
		go f.Close()
		return nil, err
	}
	switch {
	case err != nil:
		return fail(t.classify(c, "stat", p, err))
	case !fi.Mode().IsRegular():
		return fail(fmt.Errorf("%s is %w (%w)", p, shipper.ErrNotRegular, shipper.ErrPermanent))
	case offset > fi.Size():
		return fail(fmt.Errorf("offset %d beyond size %d", offset, fi.Size()))
	case rerr != nil && rerr != io.EOF:
		return fail(t.classify(c, "read", p, rerr))
	}
	n := fi.Size() - offset
	if length >= 0 && length < n {
		n = length
	}
	if int64(m) < min(n, int64(len(head))) {
		return fail(t.shortRead(c, f, p))
	}
	head = head[:min(n, int64(len(head)))]
	if n > smallRead {
		return newRangeReader(ctx, t, c, f, p, own, head, offset+int64(len(head)), n-int64(len(head))), nil
	}
	// Small: read whole, and the buffer goes back.
	defer func() { go f.Close() }()
	buf := make([]byte, n)
	copy(buf, head)
	if own != nil {
		t.reads.put(own, false)
	}
	if rest := buf[len(head):]; len(rest) > 0 {
		m, err := f.ReadAt(rest, offset+int64(len(head)))
		switch {
		case err != nil && err != io.EOF:
			return nil, t.classify(c, "read", p, err)
		case m < len(rest):
			return nil, t.shortRead(c, f, p)
		}
	}
	return io.NopCloser(bytes.NewReader(buf)), nil
}

// shortRead explains a read of p (open as f on c) that ended before the
// size the server had given: a connection that broke while it was read
// (pkg/sftp reports that as io.EOF too) is a lost connection, which is
// retried; only if the connection still answers did the object shrink.
func (t *Transport) shortRead(c *conn, f *sftpclient.File, p string) error {
	if !c.alive() {
		return fmt.Errorf("read %s: %w", p, sftpclient.ErrSSHFxConnectionLost)
	}
	if _, err := f.Stat(); err != nil {
		if isConnError(err) {
			return fmt.Errorf("read %s: %w (%v)", p, sftpclient.ErrSSHFxConnectionLost, err)
		}
		return t.classify(c, "stat", p, err)
	}
	return fmt.Errorf("read %s: %w (the object shrank while it was read)", p, io.ErrUnexpectedEOF)
}

// Stat returns the size of the object's file.
func (t *Transport) Stat(ctx context.Context, name string) (shipper.ObjectInfo, error) {
	if err := shipper.CheckName(name); err != nil {
		return shipper.ObjectInfo{}, err
	}
	p := t.remote(name)
	var oi shipper.ObjectInfo
	err := t.do(ctx, false, func(c *conn) error {
		fi, err := c.sftp.Stat(p)
		if err != nil {
			return t.classify(c, "stat", p, err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("stat %s: %w (%w)", p, shipper.ErrNotRegular, shipper.ErrPermanent)
		}
		oi = shipper.ObjectInfo{Name: name, Size: fi.Size()}
		return nil
	})
	return oi, err
}

// listParallel bounds the directories List reads at once. Reading one
// takes four round trips (open, read, read to its end, close), so the
// folders of a level are read together, over several channels.
const listParallel = 16

// List walks the remote root, from the deepest folder that prefix names,
// reading the folders of each level in parallel; fn is called from one
// goroutine at a time. Files and directories whose names start with '.'
// (temporaries) are skipped, and so are directories that cannot hold a
// match.
func (t *Transport) List(ctx context.Context, prefix string, fn func(shipper.ObjectInfo) error) error {
	return t.list(ctx, prefix, 0, fn, nil, nil)
}

var _ shipper.FolderLister = (*Transport)(nil)

// ListFolders names the folders at the root (but those whose names start
// with '.'), in one folder read; fn is called from one goroutine at a time.
func (t *Transport) ListFolders(ctx context.Context, fn func(name string) error) error {
	return t.list(ctx, "", 1, func(shipper.ObjectInfo) error { return nil }, fn, nil)
}

var _ shipper.SkippingLister = (*Transport)(nil)

// ListSkipping is List without reading the folders that skip names.
func (t *Transport) ListSkipping(ctx context.Context, prefix string, skip func(string) bool, fn func(shipper.ObjectInfo) error) error {
	return t.list(ctx, prefix, 0, fn, nil, skip)
}

// list walks the folders that can hold a name starting with prefix, down
// to names of depth components (0: all), but those that skip names (nil:
// none); with dirFn, the folders that are too deep to read are named to
// it.
func (t *Transport) list(ctx context.Context, prefix string, depth int, fn func(shipper.ObjectInfo) error, dirFn func(string) error, skip func(string) bool) error {
	start := ""
	if i := strings.LastIndex(prefix, "/"); i > 0 && shipper.CheckName(prefix[:i]) == nil {
		start = prefix[:i]
	}
	w := &walker{t: t, prefix: prefix, depth: depth, fn: fn, dirFn: dirFn, skip: skip, sem: make(chan struct{}, listParallel)}
	var gctx context.Context
	w.g, gctx = errgroup.WithContext(ctx)
	w.g.Go(func() error { return w.walk(gctx, start, true) })
	err := w.g.Wait()
	switch {
	case err == nil:
		return nil
	case w.fnErr != nil && errors.Is(err, w.fnErr):
		return w.fnErr
	}
	return fmt.Errorf("list %s: %w", t.dest, err)
}

// walker is one List in progress.
type walker struct {
	t      *Transport
	prefix string
	depth  int               // the most components a listed name has; 0: no limit
	skip   func(string) bool // folders not read; nil: none
	g      *errgroup.Group
	sem    chan struct{}

	mu    sync.Mutex // serialises fn and dirFn
	fn    func(shipper.ObjectInfo) error
	dirFn func(string) error // nil: none
	fnErr error
}

// call calls f under the walker's lock, unless an earlier call failed.
func (w *walker) call(f func() error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fnErr == nil {
		w.fnErr = f()
	}
	return w.fnErr
}

// walk reads the folder rel (relative to the root) and walks the folders
// in it that can hold a match, each in a goroutine of its own.
func (w *walker) walk(ctx context.Context, rel string, first bool) error {
	dir := w.t.remote(rel)
	if rel == "" {
		dir = w.t.remote(".")
		if w.t.dest.root == "" {
			dir = "."
		}
	}
	var entries []os.FileInfo
	select {
	case w.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	err := w.t.do(ctx, false, func(c *conn) error {
		var err error
		entries, err = c.sftp.ReadDirContext(ctx, dir)
		switch {
		case err == nil:
		case !errors.Is(err, fs.ErrNotExist):
			return w.t.classify(c, "read directory", dir, err)
		case first:
			// A missing root holds nothing, and a directory may vanish
			// meanwhile; but a root that is a file (or under one) is a
			// mistake that no retry mends.
			return w.t.checkRoot(c, dir)
		}
		return nil
	})
	<-w.sem
	if err != nil {
		return err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		name := e.Name()
		if rel != "" {
			name = rel + "/" + name
		}
		switch {
		case e.IsDir() && w.skip != nil && w.skip(name):
		case e.IsDir():
			if w.depth > 0 && strings.Count(name, "/")+2 > w.depth {
				// The names in it would be too deep.
				if w.dirFn != nil {
					if err := w.call(func() error { return w.dirFn(name) }); err != nil {
						return err
					}
				}
				continue
			}
			if strings.HasPrefix(name+"/", w.prefix) || strings.HasPrefix(w.prefix, name+"/") {
				w.g.Go(func() error { return w.walk(ctx, name, false) })
			}
		case e.Mode().IsRegular() && strings.HasPrefix(name, w.prefix):
			if err := w.call(func() error { return w.fn(shipper.ObjectInfo{Name: name, Size: e.Size()}) }); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkRoot fails if the root, or a folder above it, is not a directory.
func (t *Transport) checkRoot(c *conn, root string) error {
	for p := root; p != "." && p != "/"; p = path.Dir(p) {
		fi, err := c.sftp.Stat(p)
		switch {
		case err == nil && fi.IsDir():
			return nil
		case err == nil:
			return t.classify(c, "read directory", root, &notDirError{p})
		case !errors.Is(err, fs.ErrNotExist):
			return nil
		}
	}
	return nil
}

// Delete removes the object's file and then the directories it leaves
// empty.
func (t *Transport) Delete(ctx context.Context, name string) error {
	if err := shipper.CheckName(name); err != nil {
		return err
	}
	p := t.remote(name)
	err := t.do(ctx, false, func(c *conn) error {
		if err := c.sftp.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return t.classify(c, "delete", p, err)
		}
		for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
			if c.sftp.RemoveDirectory(t.remote(dir)) != nil {
				break
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// RemoveTemporaries deletes the temporaries that interrupted Puts (of this
// or an earlier, killed process) left under dir.
func (t *Transport) RemoveTemporaries(ctx context.Context, dir string) error {
	if err := shipper.CheckName(dir); err != nil {
		return err
	}
	return t.do(ctx, false, func(c *conn) error {
		walker := c.sftp.Walk(t.remote(dir))
		for walker.Step() {
			if walker.Err() != nil {
				continue
			}
			if fi := walker.Stat(); fi != nil && fi.Mode().IsRegular() && shipper.IsTemporary(path.Base(walker.Path())) {
				c.sftp.Remove(walker.Path())
			}
		}
		return nil
	})
}
