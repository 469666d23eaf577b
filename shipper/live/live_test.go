package live

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/live/livetest"
)

const testBS = 64 << 10

// session runs Send and Receive against each other in-process: the
// control lane over pipes, the TCP lanes over loopback.
type session struct {
	t        *testing.T
	src, out string
	send     SendOptions
	recv     ReceiveOptions
	// attack, if set, wraps the n-th TCP lane (from 0) the sender opens.
	attack func(n int, c net.Conn) net.Conn
	// control, if set, wraps the control lane from the sender.
	control func(w io.Writer) io.Writer
	ctx     context.Context // of Send; nil: Background
}

type outcome struct {
	send    *SendResult
	sendErr error
	recv    *ReceiveResult
	recvErr error
}

func newSession(t *testing.T) *session {
	dir := t.TempDir()
	s := &session{t: t, src: filepath.Join(dir, "src"), out: filepath.Join(dir, "out")}
	os.Mkdir(s.src, 0o755)
	s.send = SendOptions{Jobs: 2, BlockSize: testBS, Compress: true}
	s.recv = ReceiveOptions{Dir: s.out, Jobs: 2, Listen: func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }}
	return s
}

func (s *session) run(names ...string) outcome {
	s.t.Helper()
	var args []string
	for _, n := range names {
		args = append(args, filepath.Join(s.src, n))
	}
	sources, err := archive.CollectSources(args)
	if err != nil {
		s.t.Fatal(err)
	}
	toRecvR, toRecvW := io.Pipe()
	toSendR, toSendW := io.Pipe()
	var o outcome
	var wg sync.WaitGroup
	wg.Go(func() {
		o.recv, o.recvErr = Receive(context.Background(), toRecvR, toSendW, s.recv)
		if o.recvErr != nil {
			code := 1
			if errors.Is(o.recvErr, archive.ErrIntegrity) {
				code = 5
			}
			ReplyError(toSendW, code, o.recvErr)
		} else {
			ReplyDone(toSendW, o.recv.Files)
		}
		toSendW.Close()
		toRecvR.CloseWithError(errors.New("receiver exited"))
	})
	var out io.Writer = toRecvW
	if s.control != nil {
		out = s.control(toRecvW)
	}
	var mu sync.Mutex
	lanes := 0
	peer := Peer{In: toSendR, Out: out, DataHost: "127.0.0.1", Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil || s.attack == nil {
			return c, err
		}
		mu.Lock()
		n := lanes
		lanes++
		mu.Unlock()
		return s.attack(n, c), nil
	}}
	ctx := s.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	o.send, o.sendErr = Send(ctx, peer, sources, s.send)
	toRecvW.Close()
	toSendR.Close()
	wg.Wait()
	return o
}

func (s *session) write(name string, size int64, regions ...[3]int64) string {
	s.t.Helper()
	p := filepath.Join(s.src, name)
	os.MkdirAll(filepath.Dir(p), 0o755)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		s.t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		s.t.Fatal(err)
	}
	for _, r := range regions { // offset, length, kind: 0 random, 1 text, 2 zeros
		b := make([]byte, r[1])
		switch r[2] {
		case 0:
			rand.Read(b)
		case 1:
			for i := range b {
				b[i] = "coldship live test line\n"[i%24]
			}
		}
		if _, err := f.WriteAt(b, r[0]); err != nil {
			s.t.Fatal(err)
		}
	}
	return p
}

func (s *session) same(name string) {
	s.t.Helper()
	a, err := os.ReadFile(filepath.Join(s.src, name))
	if err != nil {
		s.t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(s.out, name))
	if err != nil {
		s.t.Fatalf("restored: %v", err)
	}
	if !bytes.Equal(a, b) {
		s.t.Fatalf("%s: restored copy differs (%d vs %d bytes)", name, len(a), len(b))
	}
}

func allocated(t *testing.T, p string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// nothingLeft checks that a failed session left no file in the output
// directory, final or temporary.
func (s *session) nothingLeft() {
	s.t.Helper()
	filepath.Walk(s.out, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			s.t.Errorf("left behind: %s", p)
		}
		return nil
	})
}

func TestLiveRoundTrip(t *testing.T) {
	for _, lanes := range []int{0, 3} {
		t.Run(map[int]string{0: "ssh", 3: "tcp"}[lanes], func(t *testing.T) {
			s := newSession(t)
			s.send.Lanes = lanes
			img := s.write("vm/disk.img", 40*testBS+123,
				[3]int64{0, 5 * testBS, 0}, [3]int64{12 * testBS, 3 * testBS, 1}, [3]int64{20 * testBS, 2 * testBS, 2},
				[3]int64{39 * testBS, testBS + 123, 0})
			s.write("vm/vm.xml", 40, [3]int64{0, 40, 1})
			s.write("vm/empty", 0)
			os.Mkdir(filepath.Join(s.src, "vm", "snapshots"), 0o700)
			o := s.run("vm")
			if o.sendErr != nil || o.recvErr != nil {
				t.Fatalf("send: %v; receive: %v", o.sendErr, o.recvErr)
			}
			for _, n := range []string{"vm/disk.img", "vm/vm.xml", "vm/empty"} {
				s.same(n)
			}
			if fi, err := os.Stat(filepath.Join(s.out, "vm", "snapshots")); err != nil || fi.Mode().Perm() != 0o700 {
				t.Errorf("directory not restored with its mode: %v %v", fi, err)
			}
			if fi, _ := os.Stat(filepath.Join(s.out, "vm/vm.xml")); fi.Mode().Perm() != 0o640 {
				t.Errorf("mode %v, want 0640", fi.Mode())
			}
			if a, b := allocated(t, img), allocated(t, filepath.Join(s.out, "vm/disk.img")); b > a {
				t.Errorf("restored image allocates %d bytes, the source %d: holes not kept", b, a)
			}
			if len(o.send.Files) != 5 || o.send.ID != o.recv.ID || len(o.send.Rounds) != 1 || !o.send.Rounds[0].Final {
				t.Errorf("result: %+v", o.send)
			}
			if st := o.send.Rounds[0]; st.Blocks != 5+3+2+1 || st.Data != 9*testBS+123+40 {
				t.Errorf("round sent %d blocks, %d bytes", st.Blocks, st.Data)
			}
		})
	}
}

// TestLivePreCopy changes the image between rounds (grows, shrinks, blocks
// rewritten, zeroed and punched) and checks that each later round sends
// only what changed and that the final copy is exact.
func TestLivePreCopy(t *testing.T) {
	for _, lanes := range []int{0, 2} {
		t.Run(map[int]string{0: "ssh", 2: "tcp"}[lanes], func(t *testing.T) {
			s := newSession(t)
			s.send.Lanes = lanes
			s.send.Rounds = 4
			img := s.write("disk.img", 30*testBS+7, [3]int64{0, 30*testBS + 7, 0})
			var sent []RoundStats
			s.send.OnRound = func(st RoundStats) {
				sent = append(sent, st)
				f, _ := os.OpenFile(img, os.O_RDWR, 0)
				defer f.Close()
				b := make([]byte, 2*testBS)
				rand.Read(b)
				switch st.Round {
				case 1: // two blocks rewritten, the file grows by a block and a half
					f.WriteAt(b, 3*testBS)
					f.WriteAt(b, 30*testBS+7)
				case 2: // a block zeroed, one punched, the file shrinks into a block
					f.WriteAt(make([]byte, testBS), 5*testBS)
					syscall.Fallocate(int(f.Fd()), 0x01|0x02, 8*testBS, testBS)
					f.Truncate(25*testBS + 100)
				case 3: // nothing changes
				}
			}
			s.send.Switchover = func(ctx context.Context, id string) error {
				f, _ := os.OpenFile(img, os.O_RDWR, 0)
				defer f.Close()
				f.Truncate(27 * testBS) // grows again: the cut block comes back with zeros
				f.WriteAt([]byte("last"), 10*testBS)
				return nil
			}
			o := s.run("disk.img")
			if o.sendErr != nil || o.recvErr != nil {
				t.Fatalf("send: %v; receive: %v", o.sendErr, o.recvErr)
			}
			s.same("disk.img")
			if len(o.send.Rounds) != 5 || o.recv.Rounds != 5 {
				t.Fatalf("%d rounds sent, %d received; want 5", len(o.send.Rounds), o.recv.Rounds)
			}
			want := []int64{31, 5, 1, 0, 2} // blocks per round
			for i, st := range o.send.Rounds {
				if st.Blocks != want[i] {
					t.Errorf("round %d sent %d blocks, want %d", i+1, st.Blocks, want[i])
				}
			}
			if a, b := allocated(t, img), allocated(t, filepath.Join(s.out, "disk.img")); b > a {
				t.Errorf("restored image allocates %d bytes, the source %d: the punched block was not punched", b, a)
			}
		})
	}
}

func TestLiveUntilDirty(t *testing.T) {
	s := newSession(t)
	s.send.UntilDirty = 3 * testBS
	img := s.write("disk.img", 20*testBS, [3]int64{0, 20 * testBS, 0})
	round := 0
	s.send.OnRound = func(st RoundStats) {
		round++
		// Ever fewer blocks change: 8, 4, 2, ...
		f, _ := os.OpenFile(img, os.O_RDWR, 0)
		defer f.Close()
		b := make([]byte, testBS)
		for i := range 16 >> round {
			rand.Read(b)
			f.WriteAt(b, int64(i)*testBS)
		}
	}
	o := s.run("disk.img")
	if o.sendErr != nil {
		t.Fatal(o.sendErr)
	}
	s.same("disk.img")
	// Rounds 1 (20 blocks), 2 (8), 3 (4), 4 (2 <= 3: stop), final (1).
	if n := len(o.send.Rounds); n != 5 {
		t.Errorf("%d rounds, want 4 pre-copy and the final", n)
	}
}

// TestLiveRunningWriter writes to the image all through the pre-copy rounds
// and stops when the switch-over asks: the copy is the image as it was
// then.
func TestLiveRunningWriter(t *testing.T) {
	s := newSession(t)
	s.send.Lanes = 2
	s.send.Rounds = 3
	img := s.write("disk.img", 64*testBS, [3]int64{0, 64 * testBS, 0})
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		f, _ := os.OpenFile(img, os.O_RDWR, 0)
		defer f.Close()
		b := make([]byte, 4096)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			rand.Read(b)
			f.WriteAt(b, int64(i*7919%(64*16))*4096)
			time.Sleep(100 * time.Microsecond)
		}
	}()
	s.send.Switchover = func(context.Context, string) error {
		close(stop)
		<-stopped
		return nil
	}
	o := s.run("disk.img")
	if o.sendErr != nil || o.recvErr != nil {
		t.Fatalf("send: %v; receive: %v", o.sendErr, o.recvErr)
	}
	s.same("disk.img")
}

// TestLiveSourceChangedInFinalRound: the final round must see the sources at
// rest; the receiver is told why and keeps nothing.
func TestLiveSourceChangedInFinalRound(t *testing.T) {
	s := newSession(t)
	img := s.write("disk.img", 16*testBS, [3]int64{0, 16 * testBS, 0})
	// A write lands while the round is under way: as the first block
	// leaves.
	s.control = func(w io.Writer) io.Writer {
		return livetest.Wrap(writerConn{w}, func(i int, frame []byte) [][]byte {
			if frame[0] == livetest.Block && i == 3 {
				f, _ := os.OpenFile(img, os.O_RDWR, 0)
				f.WriteAt([]byte("late write"), 15*testBS)
				f.Close()
			}
			return [][]byte{frame}
		})
	}
	o := s.run("disk.img")
	if o.sendErr == nil || !strings.Contains(o.sendErr.Error(), "source changed") {
		t.Fatalf("send: %v, want the source changed", o.sendErr)
	}
	if !errors.Is(o.recvErr, ErrAborted) {
		t.Errorf("receive: %v, want ErrAborted", o.recvErr)
	}
	s.nothingLeft()
}

// TestLiveSenderInterrupted: the receiver learns that the sender was
// interrupted, and keeps nothing.
func TestLiveSenderInterrupted(t *testing.T) {
	for _, lanes := range []int{0, 2} {
		s := newSession(t)
		s.send.Lanes = lanes
		s.write("disk.img", 64*testBS, [3]int64{0, 64 * testBS, 0})
		ctx, cancel := context.WithCancel(context.Background())
		s.ctx = ctx
		s.control = func(w io.Writer) io.Writer {
			return livetest.Wrap(writerConn{w}, func(i int, frame []byte) [][]byte {
				if i == 3 {
					cancel()
				}
				return [][]byte{frame}
			})
		}
		o := s.run("disk.img")
		// The receiver learns it from the abort frame, or, if the round
		// was complete by then, from its acknowledgement going nowhere.
		if !errors.Is(o.sendErr, context.Canceled) || o.recvErr == nil ||
			!strings.Contains(o.recvErr.Error(), "interrupted") && !strings.Contains(o.recvErr.Error(), "reply to the sender") {
			t.Fatalf("send: %v; receive: %v", o.sendErr, o.recvErr)
		}
		s.nothingLeft()
	}
}

// TestLiveAbortAfterManifest: a sender that gives up once its manifest is
// sent (interrupted while the receiver checks the files) reports a
// failure, so the receiver lands nothing either.
func TestLiveAbortAfterManifest(t *testing.T) {
	s := newSession(t)
	s.write("disk.img", 256*testBS, [3]int64{0, 256 * testBS, 0})
	s.control = func(w io.Writer) io.Writer {
		return livetest.Wrap(writerConn{w}, func(_ int, frame []byte) [][]byte {
			if frame[0] == frameManifest {
				return [][]byte{frame, appendFrame(nil, frameAbort, []byte("the sender was interrupted"))}
			}
			return [][]byte{frame}
		})
	}
	o := s.run("disk.img")
	if o.sendErr == nil || !errors.Is(o.recvErr, ErrAborted) {
		t.Fatalf("send: %v; receive: %v", o.sendErr, o.recvErr)
	}
	s.nothingLeft()
}

func TestLiveSwitchoverFails(t *testing.T) {
	s := newSession(t)
	s.send.Rounds = 1
	s.write("disk.img", 8*testBS, [3]int64{0, 8 * testBS, 0})
	s.send.Switchover = func(context.Context, string) error { return errors.New("pre-switchover hook failed") }
	o := s.run("disk.img")
	if o.sendErr == nil || !errors.Is(o.recvErr, ErrAborted) || !strings.Contains(o.recvErr.Error(), "pre-switchover hook failed") {
		t.Fatalf("send: %v; receive: %v", o.sendErr, o.recvErr)
	}
	s.nothingLeft()
}

// TestLiveAttacks tampers with, replays, drops, reorders and injects records
// on a TCP lane, in the first or a later round: the receiver fails with
// ErrIntegrity, the sender reports the receiver's failure, and nothing is
// left.
func TestLiveAttacks(t *testing.T) {
	attacks := map[string]func(k int) livetest.Edit{
		"tamper": livetest.Tamper, "replay": livetest.Replay, "drop": livetest.Drop,
		"inject": livetest.Inject, "swap": livetest.Swap,
	}
	for name, attack := range attacks {
		for _, k := range []int{0, 2, 11} { // 11: in round 2
			t.Run(name+"/"+string(rune('a'+k)), func(t *testing.T) {
				s := newSession(t)
				s.send.Lanes = 2
				s.send.Rounds = 1
				img := s.write("disk.img", 20*testBS, [3]int64{0, 20 * testBS, 0})
				s.send.OnRound = func(RoundStats) {
					// Round 2 resends 4 blocks on each lane.
					f, _ := os.OpenFile(img, os.O_RDWR, 0)
					b := make([]byte, 8*testBS)
					rand.Read(b)
					f.WriteAt(b, 0)
					f.Close()
				}
				s.attack = func(n int, c net.Conn) net.Conn {
					if n != 0 {
						return c
					}
					return livetest.Wrap(c, attack(k))
				}
				o := s.run("disk.img")
				if !errors.Is(o.recvErr, archive.ErrIntegrity) {
					t.Fatalf("receive: %v, want an integrity error", o.recvErr)
				}
				var re *RemoteError
				if !errors.As(o.sendErr, &re) || re.Code != 5 || !errors.Is(o.sendErr, archive.ErrIntegrity) {
					t.Errorf("send: %v, want the receiver's integrity failure", o.sendErr)
				}
				s.nothingLeft()
			})
		}
	}
}

// TestLiveControlLaneTampered: blocks on the control lane are bound the same
// way.
func TestLiveControlLaneTampered(t *testing.T) {
	for name, attack := range map[string]livetest.Edit{"tamper": livetest.Tamper(3), "replay": livetest.Replay(3), "drop": livetest.Drop(3)} {
		t.Run(name, func(t *testing.T) {
			s := newSession(t)
			s.write("disk.img", 20*testBS, [3]int64{0, 20 * testBS, 0})
			s.control = func(w io.Writer) io.Writer { return livetest.Wrap(writerConn{w}, attack) }
			o := s.run("disk.img")
			if !errors.Is(o.recvErr, archive.ErrIntegrity) || !errors.Is(o.sendErr, archive.ErrIntegrity) {
				t.Fatalf("send: %v; receive: %v", o.sendErr, o.recvErr)
			}
			s.nothingLeft()
		})
	}
}

type writerConn struct{ io.Writer }

func (writerConn) Read([]byte) (int, error)         { return 0, io.EOF }
func (writerConn) Close() error                     { return nil }
func (writerConn) LocalAddr() net.Addr              { return nil }
func (writerConn) RemoteAddr() net.Addr             { return nil }
func (writerConn) SetDeadline(time.Time) error      { return nil }
func (writerConn) SetReadDeadline(time.Time) error  { return nil }
func (writerConn) SetWriteDeadline(time.Time) error { return nil }
func (w writerConn) Write(p []byte) (int, error)    { return w.Writer.Write(p) }

var _ net.Conn = writerConn{}

// TestLiveStrangerOnDataPort: a connection that cannot prove it belongs to the
// session is refused; the session goes on.
func TestLiveStrangerOnDataPort(t *testing.T) {
	s := newSession(t)
	s.send.Lanes = 2
	s.write("disk.img", 8*testBS, [3]int64{0, 8 * testBS, 0})
	listen := s.recv.Listen
	var refused []string
	s.recv.Log = func(format string, a ...any) {
		if strings.HasPrefix(format, "refused") {
			refused = append(refused, format)
		}
	}
	s.recv.Listen = func() (net.Listener, error) {
		ln, err := listen()
		if err == nil {
			// A stranger gets there first, with junk and with an old hello.
			for _, junk := range [][]byte{[]byte("GET / HTTP/1.0\r\n\r\n"), appendFrame(nil, frameHello, make([]byte, 76))} {
				c, err := net.Dial("tcp", ln.Addr().String())
				if err == nil {
					c.Write(junk)
					defer c.Close()
				}
			}
		}
		return ln, err
	}
	// The session's own lanes say hello once the strangers are dealt with.
	s.attack = func(_ int, c net.Conn) net.Conn {
		time.Sleep(200 * time.Millisecond)
		return c
	}
	o := s.run("disk.img")
	if o.sendErr != nil {
		t.Fatal(o.sendErr)
	}
	s.same("disk.img")
	if len(refused) != 2 {
		t.Errorf("refused %d strangers, want 2", len(refused))
	}
}

func TestLiveExistingOutput(t *testing.T) {
	s := newSession(t)
	s.write("disk.img", testBS, [3]int64{0, testBS, 0})
	os.MkdirAll(s.out, 0o755)
	os.WriteFile(filepath.Join(s.out, "disk.img"), []byte("keep me"), 0o644)
	o := s.run("disk.img")
	if o.recvErr == nil || o.sendErr == nil || !strings.Contains(o.sendErr.Error(), "already exists") {
		t.Fatalf("send: %v; receive: %v", o.sendErr, o.recvErr)
	}
	if b, _ := os.ReadFile(filepath.Join(s.out, "disk.img")); string(b) != "keep me" {
		t.Error("existing file was changed")
	}
	s.recv.Force = true
	if o := s.run("disk.img"); o.sendErr != nil {
		t.Fatal(o.sendErr)
	}
	s.same("disk.img")
}

// resetConn passes the first limit bytes written, then fails every write
// as a connection reset by its peer would, leaving the receiver's end
// open: the receiver hears nothing of it on that lane.
type resetConn struct {
	net.Conn
	limit int
}

func (c *resetConn) Write(p []byte) (int, error) {
	if len(p) > c.limit {
		return 0, syscall.ECONNRESET
	}
	c.limit -= len(p)
	return c.Conn.Write(p)
}

func (c *resetConn) Close() error { return nil }

// TestLiveDataLaneFails: a TCP lane fails at the sender's end while the
// receiver and the control lane are well. The sender reports its own
// failure, naming the data connection (not the receiver's echo of it, nor
// a truncation), and tells the receiver on the control lane, which ends
// (without waiting for the lane) and removes what it wrote.
func TestLiveDataLaneFails(t *testing.T) {
	s := newSession(t)
	s.send.Lanes = 2
	s.write("disk.img", 40*testBS, [3]int64{0, 40 * testBS, 0})
	s.attack = func(n int, c net.Conn) net.Conn {
		if n != 1 {
			return c
		}
		return &resetConn{Conn: c, limit: 1024}
	}
	o := s.run("disk.img")
	var re *RemoteError
	// The lanes are dialled at once: the second dialled may be either.
	if o.sendErr == nil || errors.As(o.sendErr, &re) || !strings.Contains(o.sendErr.Error(), "data connection ") ||
		!errors.Is(o.sendErr, syscall.ECONNRESET) {
		t.Errorf("send: %v, want its own failure naming the data connection", o.sendErr)
	}
	if !errors.Is(o.recvErr, ErrAborted) {
		t.Errorf("receive: %v, want the sender's abort", o.recvErr)
	}
	s.nothingLeft()
}

// TestLiveSourceFolderChanged: a source folder that gains, loses or has
// an entry replaced between the pre-copy round and the final one fails
// the send with ErrSourceChanged (the shipment would not hold what the
// folder holds, or a stale file), and the receiver keeps nothing; an
// entry that came and went meanwhile (a running VM's lock file) is no
// change.
func TestLiveSourceFolderChanged(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(dir string) error
		want   string // "": the send succeeds
	}{
		{"added", func(dir string) error { return os.WriteFile(filepath.Join(dir, "new.qcow2"), []byte("x"), 0o644) }, "new.qcow2 was added"},
		{"folder added", func(dir string) error { return os.Mkdir(filepath.Join(dir, "snap"), 0o755) }, "snap was added"},
		{"gone", func(dir string) error { return os.Remove(filepath.Join(dir, "vm.xml")) }, "vm.xml is gone"},
		{"replaced", func(dir string) error {
			tmp := filepath.Join(dir, "sub", "vm.xml.tmp")
			if err := os.WriteFile(tmp, []byte("<domain>new</domain>"), 0o644); err != nil {
				return err
			}
			return os.Rename(tmp, filepath.Join(dir, "sub", "nvram"))
		}, "nvram was replaced"},
		{"came and went", func(dir string) error {
			lock := filepath.Join(dir, "disk.img.lck")
			if err := os.WriteFile(lock, nil, 0o644); err != nil {
				return err
			}
			return os.Remove(lock)
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSession(t)
			s.send.Rounds = 1
			s.write("vm/disk.img", 8*testBS, [3]int64{0, 8 * testBS, 0})
			s.write("vm/vm.xml", 100, [3]int64{0, 100, 1})
			s.write("vm/sub/nvram", 100, [3]int64{0, 100, 0})
			dir := filepath.Join(s.src, "vm")
			s.send.OnRound = func(st RoundStats) {
				if !st.Final {
					if err := tc.change(dir); err != nil {
						t.Error(err)
					}
				}
			}
			o := s.run("vm")
			if tc.want == "" {
				if o.sendErr != nil || o.recvErr != nil {
					t.Fatalf("send: %v; receive: %v", o.sendErr, o.recvErr)
				}
				s.same("vm/disk.img")
				return
			}
			if !errors.Is(o.sendErr, shipper.ErrSourceChanged) || !strings.Contains(o.sendErr.Error(), tc.want) {
				t.Errorf("send: %v, want the source changed: %q", o.sendErr, tc.want)
			}
			if !errors.Is(o.recvErr, ErrAborted) {
				t.Errorf("receive: %v, want ErrAborted", o.recvErr)
			}
			s.nothingLeft()
		})
	}
}
