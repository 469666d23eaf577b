package live

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/coldship/coldship/archive"
)

const allKinds = sessionKinds + controlKinds + laneKinds + helloKinds + replyKinds

// FuzzFrames parses arbitrary bytes as a stream of frames, and every body
// with the parser of its kind: nothing may panic, allocate beyond the
// kind's limit, or accept a malformed frame without an integrity error.
func FuzzFrames(f *testing.F) {
	var seed []byte
	seed = appendFrame(seed, frameKey, appendKey(nil, "20261121T233000Z-3f9a1c2e", []byte("age-encryption.org/v1\n")))
	seed = appendFrame(seed, frameBlock, appendBlockHeader(nil, blockHeader{file: 1, block: 7, compressed: true}))
	seed = appendFrame(seed, frameHello, []byte{0, 0, 0, 1, 9, 9})
	seed = appendFrame(seed, replyReady, marshal(readyMsg{Port: 4242}))
	seed = appendFrame(seed, replyAck, marshal(ackMsg{Round: 2, Blocks: 3, Bytes: 4}))
	seed = appendFrame(seed, frameRoundEnd, marshal(endMsg{Round: 1, Blocks: []uint64{1, 2}}))
	seed = appendFrame(seed, frameBegin, marshal(beginMsg{Round: 1, Files: []archive.File{{Path: "vm/disk.img", Type: "file", Size: 9}}}))
	f.Add(seed)
	f.Add(appendFrame(nil, frameLaneEnd, appendLaneEnd(nil, 3, 99)))
	f.Add([]byte{'D', 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte("coldship"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			fr, err := readFrame(r, allKinds, nil)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, archive.ErrIntegrity) {
					t.Fatalf("unexpected error class: %v", err)
				}
				return
			}
			if len(fr.body) > maxBody(fr.kind) {
				t.Fatalf("%q frame of %d bytes passed its limit", fr.kind, len(fr.body))
			}
			var err2 error
			switch fr.kind {
			case frameKey:
				_, _, err2 = parseKey(fr.body)
			case frameBlock:
				var h blockHeader
				var rec []byte
				h, rec, err2 = parseBlock(fr.body)
				if err2 == nil {
					back := appendBlockHeader(nil, h)
					if !bytes.Equal(append(back, rec...), fr.body) {
						t.Fatalf("block header does not round-trip")
					}
				}
			case frameHello:
				_, _, err2 = parseHello(fr.body)
			case frameLaneEnd:
				_, _, err2 = parseLaneEnd(fr.body)
			case frameSession:
				err2 = unmarshal(fr.body, new(sessionMsg))
			case frameBegin:
				var b beginMsg
				if err2 = unmarshal(fr.body, &b); err2 == nil {
					archive.CheckLiveFiles(b.Files)
				}
			case frameRoundEnd:
				err2 = unmarshal(fr.body, new(endMsg))
			case frameManifest:
				_, err2 = archive.ParseLiveManifest(fr.body)
			case replyHello:
				err2 = unmarshal(fr.body, new(helloMsg))
			case replyReady:
				err2 = unmarshal(fr.body, new(readyMsg))
			case replyAck:
				err2 = unmarshal(fr.body, new(ackMsg))
			case replyDone:
				err2 = unmarshal(fr.body, new(doneMsg))
			case replyError:
				err2 = unmarshal(fr.body, new(errorMsg))
			}
			if err2 != nil && !errors.Is(err2, archive.ErrIntegrity) {
				t.Fatalf("%q frame: error without ErrIntegrity: %v", fr.kind, err2)
			}
		}
	})
}
