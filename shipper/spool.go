package shipper

import (
	"bytes"
	"io"
)

// spoolLimit is how much of an object a spool keeps in memory before it
// starts the put and streams the rest.
const spoolLimit = 4 << 20

// spool is the writer of an object whose size is not known in advance
// (the block table). Up to spoolLimit bytes it only collects them, and
// Close starts the put of what it holds, of known size: the caller goes on
// (on a long link, it starts the puts that follow) instead of waiting for
// the put's first round trips. Past spoolLimit it starts the put and
// streams the rest through a pipe. start runs the put, on a goroutine of
// its own, and must read its reader to the end or close it with an error.
type spool struct {
	buf   bytes.Buffer
	pw    *io.PipeWriter // nil while the object fits in buf
	start func(r io.Reader, size int64, pr *io.PipeReader)
}

func (s *spool) Write(p []byte) (int, error) {
	if s.pw == nil && s.buf.Len()+len(p) <= spoolLimit {
		return s.buf.Write(p)
	}
	if s.pw == nil {
		pr, pw := io.Pipe()
		s.pw = pw
		go s.start(io.MultiReader(&s.buf, pr), -1, pr)
	}
	return s.pw.Write(p)
}

// CloseWithError ends the object: with err nil, what was written is put
// (started now if it fit in memory); otherwise the put fails with err, or
// is never started.
func (s *spool) CloseWithError(err error) (started bool) {
	if s.pw != nil {
		s.pw.CloseWithError(err)
		return true
	}
	if err != nil {
		return false
	}
	go s.start(bytes.NewReader(s.buf.Bytes()), int64(s.buf.Len()), nil)
	return true
}
