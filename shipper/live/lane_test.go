package live

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
)

// failingWriter fails every write with err, as a cut connection does.
type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

// TestLaneFailureOneLine checks that a lane whose connection fails says so
// in one line, the cause after the failure, and that both stay matchable.
func TestLaneFailureOneLine(t *testing.T) {
	l := newOutLane(0, failingWriter{io.EOF})
	l.deposit(l.take(true), outFrame{data: []byte("frame")})
	err := l.drain(context.Background())
	if err == nil {
		t.Fatal("drain of a lane whose writes fail: no error")
	}
	if msg := err.Error(); strings.Contains(msg, "\n") || msg != "connection to the receiver failed: EOF" {
		t.Errorf("error %q, want one line: the failure, then the cause", msg)
	}
	if !errors.Is(err, errLink) || !errors.Is(err, io.EOF) {
		t.Errorf("error %v does not match errLink and io.EOF", err)
	}
}
