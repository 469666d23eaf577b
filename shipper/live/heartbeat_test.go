package live

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/coldship/coldship/archive"
)

// guard bounds a wait that must end, to fail rather than hang the suite:
// not a timing.
const guard = 20 * time.Second

// TestSilenceCountsOnlyWaits: the watch fires on a read that waits for
// the peer, and never for the time the reader spends on what it already
// has, however long.
func TestSilenceCountsOnlyWaits(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	fired := make(chan time.Duration, 1)
	s := newSilence(pr, func(d time.Duration) { fired <- d })
	s.arm(20 * time.Millisecond)

	// Busy elsewhere for many times the timeout: no read waits.
	time.Sleep(200 * time.Millisecond)
	go pw.Write([]byte("x"))
	if _, err := s.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-fired:
		t.Fatal("fired while the reader was busy, not waiting")
	default:
	}

	// A read that waits for a peer that sends nothing.
	done := make(chan struct{})
	go func() {
		s.Read(make([]byte, 1))
		close(done)
	}()
	select {
	case d := <-fired:
		if d != 20*time.Millisecond {
			t.Errorf("fired with %s, want the timeout", d)
		}
	case <-time.After(guard):
		t.Fatal("a read waited for a silent peer and nothing fired")
	}
	pw.Write([]byte("y"))
	<-done
}

// TestSilenceStopped: once stopped (the session is over), nothing fires.
func TestSilenceStopped(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	s := newSilence(pr, func(time.Duration) { t.Error("fired after stop") })
	s.arm(10 * time.Millisecond)
	s.stop()
	go func() {
		time.Sleep(100 * time.Millisecond)
		pw.Write([]byte("x"))
	}()
	s.Read(make([]byte, 1))
}

// TestSendStoppedReceiver: a receiver that stops after its ready (no
// acknowledgement, no heartbeat, and it reads nothing more) fails the
// send as a lost link naming it, instead of hanging it.
func TestSendStoppedReceiver(t *testing.T) {
	s := newSession(t)
	s.write("disk.img", 3*testBS, [3]int64{0, 3 * testBS, 0})
	sources, err := archive.CollectSources([]string{filepath.Join(s.src, "disk.img")})
	if err != nil {
		t.Fatal(err)
	}
	toSendR, toSendW := io.Pipe()
	defer toSendW.Close()
	go func() {
		toSendW.Write(appendFrame(nil, replyHello, marshal(helloMsg{Protocol: Protocol, Recipient: testRecipient(t), Version: "test"})))
		toSendW.Write(appendFrame(nil, replyReady, marshal(readyMsg{})))
	}()
	done := make(chan error, 1)
	go func() {
		_, err := Send(context.Background(), Peer{In: toSendR, Out: io.Discard, Host: "site-b"}, sources,
			SendOptions{Jobs: 2, BlockSize: testBS, StallTimeout: 200 * time.Millisecond})
		done <- err
	}()
	select {
	case err = <-done:
	case <-time.After(guard):
		t.Fatal("Send still waits for a stopped receiver")
	}
	if !errors.Is(err, errLink) || !strings.Contains(err.Error(), "the receiver on site-b stopped answering: heard nothing from it for 200ms") {
		t.Fatalf("Send: %v; want a lost link naming the receiver that stopped answering", err)
	}
}

// TestReceiveStoppedSender: a sender that stops mid-round (nothing more,
// not even heartbeats, and its stream stays open) fails the receiver,
// which removes what it wrote.
func TestReceiveStoppedSender(t *testing.T) {
	s := startScriptedTimeout(t, 200*time.Millisecond)
	s.sealed(frameBegin, 1, marshal(beginMsg{Round: 1, Final: true, Files: oneFile}))
	s.block(1, 0, 0, fill(testBS, 'a'))
	beats := make(chan struct{}, 1)
	go func() {
		for {
			fr, err := readFrame(s.r, replyKinds, nil)
			if err != nil {
				return
			}
			if fr.kind == replyBeat {
				select {
				case beats <- struct{}{}:
				default:
				}
			}
		}
	}()
	err := s.wait()
	if err == nil || errors.Is(err, archive.ErrIntegrity) || !strings.Contains(err.Error(), "the sender stopped answering: heard nothing from it for 200ms") {
		t.Fatalf("Receive: %v; want the sender's silence (not an integrity failure)", err)
	}
	noFiles(t, filepath.Dir(s.dir))
	select {
	case <-beats:
	case <-time.After(guard):
		t.Error("the receiver sent no heartbeat")
	}
}

// TestReceiveSlowSender: a sender that sends nothing but heartbeats for
// many times the timeout (a long pre-switchover hook, a slow disk) does
// not fail the receiver, which then restores the file.
func TestReceiveSlowSender(t *testing.T) {
	a := fill(testBS, 'a')
	s := startScriptedTimeout(t, 300*time.Millisecond)
	for range 30 {
		s.write(appendFrame(nil, frameBeat, nil))
		time.Sleep(50 * time.Millisecond)
	}
	var ack ackMsg
	s.sealed(frameBegin, 1, marshal(beginMsg{Round: 1, Final: true, Files: oneFile}))
	s.block(1, 0, 0, a)
	s.sealed(frameRoundEnd, 1, marshal(endMsg{Round: 1, Blocks: []uint64{1}}))
	s.reply(replyAck, &ack)
	s.sealed(frameManifest, 1, manifestFor(s, 1, []archive.Extent{{Kind: "data", Offset: 0, Length: testBS}, {Kind: "hole", Offset: testBS, Length: 2 * testBS}},
		[][]byte{a, nil, nil}))
	if err := s.wait(); err != nil {
		t.Fatal(err)
	}
}

// TestSlowPeersDoNotFail: hooks at both ends that take many times the
// timeout (the receiver's pre-receive, the sender's pre-switchover after
// a pre-copy round) do not fail the session: each end beats meanwhile.
func TestSlowPeersDoNotFail(t *testing.T) {
	s := newSession(t)
	s.write("disk.img", 5*testBS, [3]int64{0, 5 * testBS, 0})
	s.send.StallTimeout = 150 * time.Millisecond
	s.send.Rounds = 1
	s.send.Switchover = func(ctx context.Context, id string) error {
		time.Sleep(time.Second)
		return nil
	}
	s.recv.PreReceive = func(ctx context.Context, id string) error {
		time.Sleep(time.Second)
		return nil
	}
	for _, lanes := range []int{0, 2} {
		os.RemoveAll(s.out)
		s.send.Lanes = lanes
		o := s.run("disk.img")
		if o.sendErr != nil || o.recvErr != nil {
			t.Fatalf("%d lanes: send: %v; receive: %v", lanes, o.sendErr, o.recvErr)
		}
		s.same("disk.img")
	}
}

func noFiles(t *testing.T, dir string) {
	t.Helper()
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			t.Errorf("left behind: %s", p)
		}
		return nil
	})
}

func testRecipient(t *testing.T) string {
	ident, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return ident.Recipient().String()
}

// TestReceiveSenderStoppedBeforeSession: a sender that stops before it
// describes the session (it sends that as soon as it has the hello) is
// given helloTimeout, not forever.
func TestReceiveSenderStoppedBeforeSession(t *testing.T) {
	defer func(d time.Duration) { helloTimeout = d }(helloTimeout)
	helloTimeout = 200 * time.Millisecond
	toRecvR, toRecvW := io.Pipe()
	toSendR, toSendW := io.Pipe()
	defer toRecvW.Close()
	defer toSendR.Close()
	go io.Copy(io.Discard, toSendR)
	done := make(chan error, 1)
	go func() {
		_, err := Receive(context.Background(), toRecvR, toSendW, ReceiveOptions{Dir: filepath.Join(t.TempDir(), "out"), Jobs: 1})
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(guard):
		t.Fatal("Receive still waits for a sender that stopped before the session")
	}
	if err == nil || !strings.Contains(err.Error(), "the sender stopped answering: heard nothing from it for 200ms") {
		t.Fatalf("Receive: %v; want the sender's silence", err)
	}
}
