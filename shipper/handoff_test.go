package shipper

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

// TestHandoff: what goes into a handoff comes out, in order, whether the
// reader reads (SFTP, S3) or writes itself out (a local file), and an
// end closed with an error gives that error to the other end.
func TestHandoff(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var want bytes.Buffer
	var writes [][]byte
	for _, n := range []int{0, 1, 4095, 4096, 300 << 10, 7} {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		writes = append(writes, b)
		want.Write(b)
	}
	writeAll := func(w *handoffWriter) {
		for _, b := range writes {
			if n, err := w.Write(b); n != len(b) || err != nil {
				t.Errorf("Write of %d bytes: %d, %v", len(b), n, err)
			}
		}
		w.Close()
	}
	for _, way := range []string{"Read", "WriteTo"} {
		t.Run(way, func(t *testing.T) {
			r, w := newHandoff()
			go writeAll(w)
			var got []byte
			var err error
			if way == "Read" {
				got, err = io.ReadAll(smallReads(r))
			} else {
				var buf bytes.Buffer
				_, err = r.WriteTo(&buf)
				got = buf.Bytes()
			}
			if err != nil || !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("got %d bytes (%v), want the %d written", len(got), err, want.Len())
			}
		})
	}

	boom := errors.New("boom")
	t.Run("writer's error", func(t *testing.T) {
		r, w := newHandoff()
		go func() {
			w.Write([]byte("abc"))
			w.CloseWithError(boom)
		}()
		if _, err := io.ReadAll(r); err != boom {
			t.Fatalf("reader got %v, want the writer's error", err)
		}
	})
	t.Run("reader's error", func(t *testing.T) {
		r, w := newHandoff()
		go func() {
			buf := make([]byte, 2)
			r.Read(buf)
			r.CloseWithError(boom)
		}()
		if n, err := w.Write([]byte("abcdef")); err != boom || n != 2 {
			t.Fatalf("Write: %d, %v; want 2 bytes taken and the reader's error", n, err)
		}
		if _, err := w.Write([]byte("x")); err != boom {
			t.Fatalf("later Write: %v, want the reader's error", err)
		}
	})
	t.Run("destination's error", func(t *testing.T) {
		r, w := newHandoff()
		done := make(chan error, 1)
		go func() {
			_, err := r.WriteTo(failingWriter{after: 3, err: boom})
			done <- err
		}()
		if n, err := w.Write([]byte("abcdef")); err != boom || n != 3 {
			t.Fatalf("Write: %d, %v; want 3 bytes taken and the destination's error", n, err)
		}
		if err := <-done; err != boom {
			t.Fatalf("WriteTo: %v, want the destination's error", err)
		}
	})
}

// smallReads reads r in small pieces, so that a Write is taken in
// several reads.
func smallReads(r io.Reader) io.Reader {
	return readerFunc(func(p []byte) (int, error) { return r.Read(p[:min(len(p), 1000)]) })
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

type failingWriter struct {
	after int
	err   error
}

func (w failingWriter) Write(p []byte) (int, error) { return min(len(p), w.after), w.err }
