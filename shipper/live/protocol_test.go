package live

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"strings"
	"testing"
)

// TestProtocolMismatchNamesVersions: a receiver that speaks another live
// protocol is refused before anything is sent, and the message names the
// coldship version at each end.
func TestProtocolMismatchNamesVersions(t *testing.T) {
	for _, tc := range []struct {
		name, theirs string
		protocol     int
		want         string
	}{
		{"receiver of protocol 2, without heartbeats", "v0.9.5", 2, "the receiver runs coldship v0.9.5, which speaks live protocol 2; this coldship (v1.0.0) speaks protocol 3"},
		{"older receiver with a version", "v0.9.0", 1, "the receiver runs coldship v0.9.0, which speaks live protocol 1; this coldship (v1.0.0) speaks protocol 3"},
		{"receiver of protocol 1", "", 1, "the receiver runs coldship an older version, which speaks live protocol 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hello := appendFrame(nil, replyHello, marshal(helloMsg{Protocol: tc.protocol, Recipient: "age1x", Version: tc.theirs}))
			var sent bytes.Buffer
			_, err := Send(context.Background(), Peer{In: io.MultiReader(bytes.NewReader(hello), blockForever{}), Out: &sent},
				nil, SendOptions{Version: "v1.0.0"})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "--remote-coldship") {
				t.Fatalf("Send to a protocol %d receiver: %v; want it to say %q", tc.protocol, err, tc.want)
			}
			// Nothing but an abort: no key was handed over.
			for b := sent.Bytes(); len(b) >= frameHeaderSize; {
				n := frameHeaderSize + int(binary.BigEndian.Uint32(b[1:]))
				if b[0] != frameAbort || n > len(b) {
					t.Fatalf("the sender wrote a %q frame to a receiver of another protocol", b[0])
				}
				b = b[n:]
			}
		})
	}
}

// blockForever is a reader that never returns: a receiver that said hello
// and then waits.
type blockForever struct{}

func (blockForever) Read([]byte) (int, error) { select {} }
