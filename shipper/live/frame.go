package live

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
)

// Protocol is the version of the live protocol spoken by this code.
const Protocol = archive.LiveFormat

// Frame kinds. Upper case travels from the sender to the receiver, lower
// case back. Every frame is kind(1) || u32be(length) || body.
const (
	frameKey      byte = 'K' // unsealed: u8(len(id)) || id || the wrapped key
	frameSession  byte = 'S' // sealed sessionMsg
	frameBegin    byte = 'B' // sealed beginMsg
	frameBlock    byte = archive.LiveBlock
	frameLaneEnd  byte = 'L' // sealed u32be(round) || u64be(blocks)
	frameRoundEnd byte = 'E' // sealed endMsg
	frameManifest byte = 'M' // sealed archive.LiveManifest
	frameHello    byte = 'H' // u32be(lane) || sealed empty message
	frameAbort    byte = 'A' // unsealed: why the sender gave up
	frameBeat     byte = 'P' // unsealed, empty: the sender is alive

	replyHello byte = 'h' // helloMsg
	replyReady byte = 'r' // readyMsg
	replyAck   byte = 'a' // ackMsg
	replyDone  byte = 'd' // doneMsg
	replyError byte = 'x' // errorMsg
	replyBeat  byte = 'p' // empty: the receiver is alive
)

const (
	frameHeaderSize = 5
	// blockHeaderSize is the plaintext head of a block frame's body:
	// u32be(file) || u64be(block) || u8(flags).
	blockHeaderSize = 13
	flagCompressed  = 1
	laneEndSize     = 12
	maxLanes        = 64
)

// Kinds allowed on each path.
const (
	sessionKinds = "KA"
	controlKinds = "SBDEMAP"
	laneKinds    = "DL"
	helloKinds   = "H"
	replyKinds   = "hradxp"
)

// maxBody bounds a frame's body by kind, so that a peer cannot make the
// other side allocate more than the protocol needs.
func maxBody(kind byte) int {
	switch kind {
	case frameBlock:
		// A record carries a block's form: its page map and pages.
		return blockHeaderSize + int(cipher.SealedSize(int64(archive.MaxFormLen(archive.MaxBlockSize))))
	case frameKey, frameAbort:
		return 16 << 10
	case frameHello, frameLaneEnd:
		return 4 + int(cipher.SealedSize(laneEndSize))
	case frameSession, frameRoundEnd:
		return 1 << 20
	case frameBegin:
		return 64 << 20
	case frameManifest:
		return 256 << 20
	case replyHello, replyReady, replyAck, replyError:
		return 64 << 10
	case replyDone:
		return 64 << 20
	case frameBeat, replyBeat:
		return 0
	}
	return -1
}

// errFrame reports a malformed frame: to the receiver, data that was
// tampered with or injected on the way.
func errFrame(format string, a ...any) error {
	return fmt.Errorf("live: %s: %w", fmt.Sprintf(format, a...), archive.ErrIntegrity)
}

// frame is one frame read from a lane. buf, when not nil, is a pool buffer
// holding body, to be returned once the body is used.
type frame struct {
	kind byte
	body []byte
	buf  []byte
}

// readFrame reads a frame whose kind is one of allowed. alloc, if not nil,
// may return a buffer of capacity at least n for the body (nil: allocate).
// A stream that ends cleanly before a frame returns io.EOF; one that ends
// inside a frame returns io.ErrUnexpectedEOF.
func readFrame(r io.Reader, allowed string, alloc func(kind byte, n int) ([]byte, error)) (frame, error) {
	var h [frameHeaderSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return frame{}, err
	}
	kind := h[0]
	n := binary.BigEndian.Uint32(h[1:])
	if strings.IndexByte(allowed, kind) < 0 {
		return frame{}, errFrame("unexpected frame kind %q", kind)
	}
	if limit := maxBody(kind); limit < 0 || int64(n) > int64(limit) {
		return frame{}, errFrame("%q frame of %d bytes is too long", kind, n)
	}
	fr := frame{kind: kind}
	if alloc != nil {
		b, err := alloc(kind, int(n))
		if err != nil {
			return frame{}, err
		}
		if b != nil {
			fr.buf = b
			fr.body = b[:n]
		}
	}
	if fr.body == nil {
		if n > 1<<20 {
			// Grow as the bytes arrive rather than trusting the length.
			body, err := io.ReadAll(io.LimitReader(r, int64(n)))
			if err != nil {
				return frame{}, err
			}
			if len(body) != int(n) {
				return frame{}, io.ErrUnexpectedEOF
			}
			fr.body = body
			return fr, nil
		}
		fr.body = make([]byte, n)
	}
	if _, err := io.ReadFull(r, fr.body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fr, err
	}
	return fr, nil
}

// appendFrame appends a frame of kind with body.
func appendFrame(dst []byte, kind byte, body []byte) []byte {
	dst = append(dst, kind)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(body)))
	return append(dst, body...)
}

// putFrameHeader writes the header of a frame whose body follows it in b.
func putFrameHeader(b []byte, kind byte) {
	b[0] = kind
	binary.BigEndian.PutUint32(b[1:], uint32(len(b)-frameHeaderSize))
}

// blockHeader is the plaintext head of a block frame. The record's
// context repeats it, so a changed header fails to open.
type blockHeader struct {
	file       uint32
	block      uint64
	compressed bool
}

func appendBlockHeader(dst []byte, h blockHeader) []byte {
	dst = binary.BigEndian.AppendUint32(dst, h.file)
	dst = binary.BigEndian.AppendUint64(dst, h.block)
	if h.compressed {
		return append(dst, flagCompressed)
	}
	return append(dst, 0)
}

func parseBlock(body []byte) (blockHeader, []byte, error) {
	if len(body) < blockHeaderSize {
		return blockHeader{}, nil, errFrame("short block frame")
	}
	h := blockHeader{
		file:  binary.BigEndian.Uint32(body),
		block: binary.BigEndian.Uint64(body[4:]),
	}
	switch body[12] {
	case 0:
	case flagCompressed:
		h.compressed = true
	default:
		return blockHeader{}, nil, errFrame("unknown block flags %#x", body[12])
	}
	return h, body[blockHeaderSize:], nil
}

func appendKey(dst []byte, id string, wrapped []byte) []byte {
	dst = append(dst, byte(len(id)))
	dst = append(dst, id...)
	return append(dst, wrapped...)
}

func parseKey(body []byte) (id string, wrapped []byte, err error) {
	if len(body) < 1 || len(body) < 1+int(body[0]) {
		return "", nil, errFrame("short key frame")
	}
	id = string(body[1 : 1+int(body[0])])
	if !archive.ValidID(id) {
		return "", nil, errFrame("key frame: invalid shipment id %q", id)
	}
	return id, body[1+int(body[0]):], nil
}

func parseHello(body []byte) (lane uint32, sealed []byte, err error) {
	if len(body) < 4 {
		return 0, nil, errFrame("short hello frame")
	}
	return binary.BigEndian.Uint32(body), body[4:], nil
}

func appendLaneEnd(dst []byte, round uint32, blocks uint64) []byte {
	dst = binary.BigEndian.AppendUint32(dst, round)
	return binary.BigEndian.AppendUint64(dst, blocks)
}

func parseLaneEnd(p []byte) (round uint32, blocks uint64, err error) {
	if len(p) != laneEndSize {
		return 0, 0, errFrame("lane end of %d bytes", len(p))
	}
	return binary.BigEndian.Uint32(p), binary.BigEndian.Uint64(p[4:]), nil
}

// Messages, JSON in the body of their frames.

// helloMsg is the receiver's first frame: the protocol it speaks and the
// ephemeral age recipient to wrap the shipment key for.
type helloMsg struct {
	Protocol  int    `json:"protocol"`
	Recipient string `json:"recipient"`
	// Version is the receiver's coldship version, for the message of a
	// sender that speaks another protocol (receivers of protocol 1 did not
	// send it).
	Version string `json:"version,omitempty"`
}

// sessionMsg describes the session; the first sealed message of lane 0.
type sessionMsg struct {
	Format      int       `json:"format"`
	ID          string    `json:"id"`
	Created     time.Time `json:"created"`
	Label       string    `json:"label,omitempty"`
	BlockSize   int64     `json:"block_size"`
	Compression string    `json:"compression"`
	Lanes       int       `json:"lanes"` // TCP lanes; 0: blocks travel on lane 0
	// TimeoutMS is how long, in milliseconds, either end may hear nothing
	// from the other before it gives the session up; each sends a
	// heartbeat every third of it.
	TimeoutMS int64 `json:"timeout_ms"`
}

// readyMsg tells the sender where to open its TCP lanes: Port on Host, or
// on the address the sender reached the receiver's SSH server at.
type readyMsg struct {
	Host string `json:"host,omitempty"`
	Port int    `json:"port,omitempty"`
}

// beginMsg starts a round: the file table with the sizes of this round.
type beginMsg struct {
	Round uint32         `json:"round"`
	Final bool           `json:"final"`
	Files []archive.File `json:"files"`
}

// endMsg ends a round: the number of block records each lane carried in it.
type endMsg struct {
	Round  uint32   `json:"round"`
	Blocks []uint64 `json:"blocks"`
}

// ackMsg acknowledges a round once every block of it is written and read
// back.
type ackMsg struct {
	Round  uint32 `json:"round"`
	Blocks uint64 `json:"blocks"`
	Bytes  int64  `json:"bytes"`
}

// doneMsg reports a restored shipment: the paths, as receive prints them.
type doneMsg struct {
	Files []string `json:"files"`
}

// errorMsg reports the receiver's failure with the exit status it ends with.
type errorMsg struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	// Aborted: the session failed because the sender aborted it (its A),
	// so the sender's own reason says more.
	Aborted bool `json:"aborted,omitempty"`
}

func marshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("live: internal error: " + err.Error())
	}
	return b
}

// unmarshal decodes one JSON value strictly: unknown fields and trailing
// data are errors.
func unmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errFrame("%T: %v", v, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errFrame("%T: trailing data", v)
	}
	return nil
}
