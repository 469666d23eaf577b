package shipper

import (
	"io"
	"sync"
)

// handoff is a synchronous in-memory pipe, as io.Pipe, whose reading end
// is also an io.WriterTo: a transport that copies the segment into a file
// (io.Copy) then writes the writer's bytes from the writer's own buffer,
// instead of copying them into a buffer of its own first. A transport that
// reads (SFTP, S3) gets what io.Pipe gives.
//
// Each Write blocks until the reader has taken all of it; Close and
// CloseWithError on either end end the pipe for both.
type handoff struct {
	wmu   sync.Mutex  // one Write at a time
	data  chan []byte // bytes of a Write, handed to the reader
	taken chan int    // how many of them the reader took
	done  chan struct{}
	once  sync.Once
	// Set once, before done is closed: what Read and Write return after.
	rerr, werr error
}

func newHandoff() (*handoffReader, *handoffWriter) {
	h := &handoff{data: make(chan []byte), taken: make(chan int), done: make(chan struct{})}
	return &handoffReader{h}, &handoffWriter{h}
}

// end ends the pipe: the reader then gets rerr, the writer werr.
func (h *handoff) end(rerr, werr error) {
	h.once.Do(func() {
		h.rerr, h.werr = rerr, werr
		close(h.done)
	})
}

func (h *handoff) write(p []byte) (int, error) {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	n := 0
	for first := true; first || len(p) > 0; first = false {
		select {
		case h.data <- p:
			k := <-h.taken
			p, n = p[k:], n+k
		case <-h.done:
			return n, h.werr
		}
	}
	return n, nil
}

func (h *handoff) read(b []byte) (int, error) {
	select {
	case p := <-h.data:
		k := copy(b, p)
		h.taken <- k
		return k, nil
	case <-h.done:
		return 0, h.rerr
	}
}

// writeTo writes every Write's bytes to w as they come, until the writer
// closes the pipe; a failed write to w ends the pipe with its error.
func (h *handoff) writeTo(w io.Writer) (int64, error) {
	var total int64
	for {
		select {
		case p := <-h.data:
			k, err := w.Write(p)
			if err == nil && k < len(p) {
				err = io.ErrShortWrite
			}
			total += int64(k)
			if err != nil {
				h.end(io.ErrClosedPipe, err) // before the writer goes on
			}
			h.taken <- k
			if err != nil {
				return total, err
			}
		case <-h.done:
			if h.rerr == io.EOF {
				return total, nil
			}
			return total, h.rerr
		}
	}
}

// handoffReader is the reading end of a handoff.
type handoffReader struct{ h *handoff }

func (r *handoffReader) Read(b []byte) (int, error)         { return r.h.read(b) }
func (r *handoffReader) WriteTo(w io.Writer) (int64, error) { return r.h.writeTo(w) }

// CloseWithError ends the pipe: the writer's Write returns err
// (io.ErrClosedPipe if nil).
func (r *handoffReader) CloseWithError(err error) error {
	if err == nil {
		err = io.ErrClosedPipe
	}
	r.h.end(io.ErrClosedPipe, err)
	return nil
}

// handoffWriter is the writing end of a handoff.
type handoffWriter struct{ h *handoff }

func (w *handoffWriter) Write(p []byte) (int, error) { return w.h.write(p) }

// Close ends the pipe: the reader gets io.EOF once it has read everything.
func (w *handoffWriter) Close() error { return w.CloseWithError(nil) }

// CloseWithError ends the pipe: the reader gets err (io.EOF if nil).
func (w *handoffWriter) CloseWithError(err error) error {
	if err == nil {
		err = io.EOF
	}
	w.h.end(err, io.ErrClosedPipe)
	return nil
}
