package shipper

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"testing"
)

// TestSpool checks that an object of up to spoolLimit bytes is put from
// memory with its size once closed, a larger one streamed as it is
// written, and that an error never starts a small put and fails a
// streamed one.
func TestSpool(t *testing.T) {
	for _, n := range []int{0, 1000, spoolLimit, spoolLimit + 1, 3*spoolLimit + 12345} {
		data := make([]byte, n)
		rand.Read(data)
		for _, fail := range []bool{false, true} {
			type put struct {
				b    []byte
				size int64
				err  error
			}
			got := make(chan put, 1)
			s := &spool{start: func(r io.Reader, size int64, pr *io.PipeReader) {
				b, err := io.ReadAll(r)
				got <- put{b, size, err}
			}}
			for off := 0; off < n; off += 100000 {
				if _, err := s.Write(data[off:min(off+100000, n)]); err != nil {
					t.Fatalf("%d bytes: Write: %v", n, err)
				}
			}
			errBad := errors.New("the table could not be made")
			var cerr error
			if fail {
				cerr = errBad
			}
			started := s.CloseWithError(cerr)
			switch {
			case fail && n <= spoolLimit:
				if started {
					t.Errorf("%d bytes, failed: the put was started", n)
				}
				continue
			case !started:
				t.Fatalf("%d bytes (failed %v): the put was never started", n, fail)
			}
			p := <-got
			switch {
			case fail && !errors.Is(p.err, errBad):
				t.Errorf("%d bytes, failed: the put read %d bytes, %v; want the error", n, len(p.b), p.err)
			case fail:
			case p.err != nil || !bytes.Equal(p.b, data):
				t.Errorf("%d bytes: the put read %d bytes (%v)", n, len(p.b), p.err)
			case n <= spoolLimit && p.size != int64(n), n > spoolLimit && p.size != -1:
				t.Errorf("%d bytes: put with size %d", n, p.size)
			}
		}
	}
}
