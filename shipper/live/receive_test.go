package live

import (
	"bufio"
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
	"github.com/coldship/coldship/cipher"
)

// scripted is a hand-made sender: it speaks the protocol frame by frame,
// so that tests can send what no honest sender would.
type scripted struct {
	t    *testing.T
	id   string
	key  *cipher.Key
	w    io.Writer
	r    *bufio.Reader
	seq  uint64
	done chan struct{}
	err  error
	dir  string
}

// startScripted starts Receive into a new directory and does the key
// handoff and session (block size testBS, no compression, no TCP lanes).
func startScripted(t *testing.T) *scripted { return startScriptedTimeout(t, time.Minute) }

// startScriptedTimeout is startScripted with a session timeout.
func startScriptedTimeout(t *testing.T, timeout time.Duration) *scripted {
	toRecvR, toRecvW := io.Pipe()
	toSendR, toSendW := io.Pipe()
	s := &scripted{t: t, w: toRecvW, r: bufio.NewReader(toSendR), done: make(chan struct{}), dir: filepath.Join(t.TempDir(), "out")}
	go func() {
		defer close(s.done)
		_, s.err = Receive(context.Background(), toRecvR, toSendW, ReceiveOptions{Dir: s.dir, Jobs: 2})
		toSendW.Close()
		toRecvR.Close()
	}()
	t.Cleanup(func() { toRecvW.Close(); toSendR.Close() })
	var hello helloMsg
	s.reply(replyHello, &hello)
	rcpt, err := age.ParseX25519Recipient(hello.Recipient)
	if err != nil {
		t.Fatal(err)
	}
	s.key, _ = cipher.NewKey()
	s.id, _ = archive.NewID(time.Now())
	wrapped, err := s.key.Wrap(rcpt)
	if err != nil {
		t.Fatal(err)
	}
	s.write(appendFrame(nil, frameKey, appendKey(nil, s.id, wrapped)))
	s.sealed(frameSession, 0, marshal(sessionMsg{Format: Protocol, ID: s.id, BlockSize: testBS, Compression: "none", TimeoutMS: timeout.Milliseconds()}))
	s.reply(replyReady, &readyMsg{})
	return s
}

func (s *scripted) write(b []byte) {
	s.w.Write(b) // fails once the receiver gave up: the test looks at its error
}

func (s *scripted) reply(kind byte, v any) {
	s.t.Helper()
	fr, err := readFrame(s.r, replyKinds, nil)
	for err == nil && fr.kind == replyBeat {
		fr, err = readFrame(s.r, replyKinds, nil)
	}
	if err != nil {
		s.t.Fatalf("reply: %v", err)
	}
	if fr.kind != kind {
		s.t.Fatalf("reply %q (%s), want %q", fr.kind, fr.body, kind)
	}
	if err := unmarshal(fr.body, v); err != nil {
		s.t.Fatal(err)
	}
}

func (s *scripted) sealed(kind byte, round uint32, plain []byte) {
	b, _ := s.key.Seal(nil, archive.LiveContext(s.id, kind, 0, s.seq, round), plain)
	s.seq++
	s.write(appendFrame(nil, kind, b))
}

// block sends a block of plaintext plain as its form (protocol 2).
func (s *scripted) block(round, file uint32, block uint64, plain []byte) {
	s.rawBlock(round, file, block, formOf(plain))
}

// rawBlock sends payload as a block record, whatever it is.
func (s *scripted) rawBlock(round, file uint32, block uint64, payload []byte) {
	b := appendBlockHeader(nil, blockHeader{file: file, block: block})
	b, _ = s.key.Seal(b, archive.LiveBlockContext(s.id, 0, s.seq, round, file, block, false), payload)
	s.seq++
	s.write(appendFrame(nil, frameBlock, b))
}

// formOf returns the format 3 form of a block (nil for a zero block).
func formOf(plain []byte) []byte {
	n := int64(len(plain))
	var fb archive.FormBuilder
	fb.Reset(make([]byte, archive.MaxFormLen(n)), n)
	copy(fb.Next(0, archive.Pages(n)), plain)
	fb.Commit(0, archive.Pages(n))
	return fb.Form()
}

// wait waits for Receive, the sender's stream still open as a sender's is
// until the receiver answers, and returns its error.
func (s *scripted) wait() error {
	s.t.Helper()
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.t.Fatal("Receive did not return")
	}
	return s.err
}

func fill(n int, c byte) []byte { return []byte(strings.Repeat(string(c), n)) }

// oneFile is the table of a single 3-block file.
var oneFile = []archive.File{{Path: "disk.img", Type: archive.TypeFile, Size: 3 * testBS, Mode: 0o644}}

// manifestFor describes oneFile whose blocks are blocks (nil: zero), with
// the format 3 whole-file digest.
func manifestFor(s *scripted, rounds int, extents []archive.Extent, blocks [][]byte) []byte {
	fd := archive.NewFileDigester(archive.FormatV3, 3*testBS, testBS)
	for i, b := range blocks {
		if b == nil {
			continue
		}
		if form := formOf(b); form != nil {
			fd.Add(int64(i), archive.FormDigest(form, int64(len(b))))
		}
	}
	return marshal(archive.LiveManifest{
		Format: Protocol, ID: s.id, BlockSize: testBS, Compression: "none", Rounds: rounds,
		Files: []archive.File{{Path: "disk.img", Type: archive.TypeFile, Size: 3 * testBS, Mode: 0o644,
			BLAKE3: fd.Sum(), Extents: extents}},
	})
}

// TestLiveReceiverRejects feeds the receiver streams that an honest sender
// never sends, sealed with the right key: each must fail with
// ErrIntegrity and leave nothing.
func TestLiveReceiverRejects(t *testing.T) {
	a, b := fill(testBS, 'a'), fill(testBS, 'b')
	zeroPage := append(formOf(a)[:archive.MapLen(testBS)], make([]byte, archive.PageSize)...)
	zeroPage[0] = 1
	tests := []struct {
		name   string
		script func(s *scripted)
		want   string
	}{
		{"unsafe path", func(s *scripted) {
			s.sealed(frameBegin, 1, marshal(beginMsg{Round: 1, Final: true, Files: []archive.File{{Path: "../escape", Type: archive.TypeFile, Size: 1}}}))
		}, "unsafe path"},
		{"block out of range", func(s *scripted) {
			s.sealed(frameBegin, 1, marshal(beginMsg{Round: 1, Final: true, Files: oneFile}))
			s.block(1, 0, 3, a)
		}, "out of range"},
		{"block of a file that is not there", func(s *scripted) {
			s.sealed(frameBegin, 1, marshal(beginMsg{Round: 1, Final: true, Files: oneFile}))
			s.block(1, 1, 0, a)
		}, "out of range"},
		{"short form", func(s *scripted) {
			s.sealed(frameBegin, 1, marshal(beginMsg{Round: 1, Final: true, Files: oneFile}))
			s.rawBlock(1, 0, 0, formOf(a)[:100])
			s.sealed(frameRoundEnd, 1, marshal(endMsg{Round: 1, Blocks: []uint64{1}}))
		}, "block form"},
		{"form with a zero page", func(s *scripted) {
			s.sealed(frameBegin, 1, marshal(beginMsg{Round: 1, Final: true, Files: oneFile}))
			s.rawBlock(1, 0, 0, zeroPage)
			s.sealed(frameRoundEnd, 1, marshal(endMsg{Round: 1, Blocks: []uint64{1}}))
		}, "zero page"},
		{"dense block", func(s *scripted) {
			s.sealed(frameBegin, 1, marshal(beginMsg{Round: 1, Final: true, Files: oneFile}))
			s.rawBlock(1, 0, 0, a)
			s.sealed(frameRoundEnd, 1, marshal(endMsg{Round: 1, Blocks: []uint64{1}}))
		}, "block form"},
		{"block twice in a round", func(s *scripted) {
			s.sealed(frameBegin, 1, marshal(beginMsg{Round: 1, Final: true, Files: oneFile}))
			s.block(1, 0, 1, a)
			s.block(1, 0, 1, b)
			s.sealed(frameRoundEnd, 1, marshal(endMsg{Round: 1, Blocks: []uint64{2}}))
		}, "twice"},
		{"round counts", func(s *scripted) {
			s.sealed(frameBegin, 1, marshal(beginMsg{Round: 1, Final: true, Files: oneFile}))
			s.block(1, 0, 1, a)
			s.sealed(frameRoundEnd, 1, marshal(endMsg{Round: 1, Blocks: []uint64{2}}))
		}, "carried 1 blocks"},
		{"round skipped", func(s *scripted) {
			s.sealed(frameBegin, 2, marshal(beginMsg{Round: 2, Final: true, Files: oneFile}))
		}, "control message"},
		{"data block never sent", func(s *scripted) {
			s.sealed(frameBegin, 1, marshal(beginMsg{Round: 1, Final: true, Files: oneFile}))
			s.block(1, 0, 0, a)
			s.sealed(frameRoundEnd, 1, marshal(endMsg{Round: 1, Blocks: []uint64{1}}))
			var ack ackMsg
			s.reply(replyAck, &ack)
			s.sealed(frameManifest, 1, manifestFor(s, 1, []archive.Extent{{Kind: "data", Offset: 0, Length: 2 * testBS}, {Kind: "hole", Offset: 2 * testBS, Length: testBS}},
				[][]byte{a, b, nil}))
		}, "never received"},
		{"manifest digest differs", func(s *scripted) {
			s.sealed(frameBegin, 1, marshal(beginMsg{Round: 1, Final: true, Files: oneFile}))
			s.block(1, 0, 0, a)
			s.sealed(frameRoundEnd, 1, marshal(endMsg{Round: 1, Blocks: []uint64{1}}))
			var ack ackMsg
			s.reply(replyAck, &ack)
			s.sealed(frameManifest, 1, manifestFor(s, 1, []archive.Extent{{Kind: "data", Offset: 0, Length: testBS}, {Kind: "hole", Offset: testBS, Length: 2 * testBS}},
				[][]byte{b, nil, nil}))
		}, "whole-file digest"},
		{"stream ends early", func(s *scripted) {
			s.sealed(frameBegin, 1, marshal(beginMsg{Round: 1, Final: true, Files: oneFile}))
			s.block(1, 0, 0, a)
			s.w.(*io.PipeWriter).Close()
		}, "ended before"},
		{"unsealed begin", func(s *scripted) {
			s.write(appendFrame(nil, frameBegin, marshal(beginMsg{Round: 1, Final: true, Files: oneFile})))
		}, "control message 1"},
		{"frame too long", func(s *scripted) {
			s.write([]byte{frameRoundEnd, 0x7f, 0, 0, 0})
		}, "too long"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := startScripted(t)
			tc.script(s)
			err := s.wait()
			if !errors.Is(err, archive.ErrIntegrity) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Receive: %v; want an integrity error containing %q", err, tc.want)
			}
			filepath.Walk(filepath.Dir(s.dir), func(p string, fi os.FileInfo, err error) error {
				if err == nil && !fi.IsDir() {
					t.Errorf("left behind: %s", p)
				}
				return nil
			})
		})
	}
}

// TestLiveReceiverScripted: the same scripted sender, honest, restores the
// file with the later round's block (its pages that became zero punched)
// and the dropped one punched.
func TestLiveReceiverScripted(t *testing.T) {
	a := fill(testBS, 'a')
	b := append(fill(archive.PageSize, 'b'), make([]byte, testBS-archive.PageSize)...) // one page of data
	s := startScripted(t)
	var ack ackMsg
	s.sealed(frameBegin, 1, marshal(beginMsg{Round: 1, Files: oneFile}))
	s.block(1, 0, 0, a)
	s.block(1, 0, 2, a)
	s.sealed(frameRoundEnd, 1, marshal(endMsg{Round: 1, Blocks: []uint64{2}}))
	s.reply(replyAck, &ack)
	s.sealed(frameBegin, 2, marshal(beginMsg{Round: 2, Final: true, Files: oneFile}))
	s.block(2, 0, 0, b)
	s.sealed(frameRoundEnd, 2, marshal(endMsg{Round: 2, Blocks: []uint64{1}}))
	s.reply(replyAck, &ack)
	s.sealed(frameManifest, 2, manifestFor(s, 2, []archive.Extent{{Kind: "data", Offset: 0, Length: testBS}, {Kind: "zero", Offset: testBS, Length: 2 * testBS}},
		[][]byte{b, nil, nil}))
	if err := s.wait(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(s.dir, "disk.img")
	got, _ := os.ReadFile(p)
	if want := append(append(b, make([]byte, testBS)...), make([]byte, testBS)...); string(got) != string(want) {
		t.Error("restored file differs")
	}
	if n := allocated(t, p); n > 4*archive.PageSize {
		t.Errorf("%d bytes allocated for one page of data: the pages that became zero were not punched", n)
	}
}
