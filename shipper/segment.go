package shipper

import (
	"bufio"
	"context"
	"errors"
	"fmt"

	"github.com/coldship/coldship/archive"
)

// segmentWriter streams one segment object to the transport through a
// pipe (a handoff: a local destination writes the records from where they
// were sealed), combining the CRC32C of its records into the segment's
// (format 3). Records are
// gathered into large writes: a sparse image's records are a few KiB each,
// and a pipe handoff and a write at the destination per record cost more
// than sealing it.
type segmentWriter struct {
	n    int
	name string
	pw   *handoffWriter
	bw   *bufio.Writer
	crc  uint32
	size int64
	res  chan error
	put  error // the transport's answer once taken from res
	done bool
}

// segmentBuffer is what a segment writer gathers before a write.
const segmentBuffer = 256 << 10

func openSegment(ctx context.Context, tr Transport, id string, n int) *segmentWriter {
	pr, pw := newHandoff()
	w := &segmentWriter{n: n, name: archive.SegmentObject(n), pw: pw, bw: bufio.NewWriterSize(pw, segmentBuffer),
		res: make(chan error, 1)}
	go func() {
		err := tr.Put(ctx, id+"/"+w.name, pr, -1) // its error names the object
		if err != nil {
			pr.CloseWithError(err)
		} else {
			pr.CloseWithError(fmt.Errorf("put %s/%s: transport returned before reading all data", id, w.name))
		}
		w.res <- err
	}()
	return w
}

// write appends a record whose CRC32C is crc.
func (w *segmentWriter) write(p []byte, crc uint32) error {
	w.crc = archive.CRC32CCombine(w.crc, crc, int64(len(p)))
	if _, err := w.bw.Write(p); err != nil {
		// The pipe ended because the transport gave up: its error is the
		// one that says why (a full disk, classified permanent) and names
		// the object; the pipe's is only the raw cause.
		if perr := w.wait(); perr != nil {
			return perr
		}
		return err
	}
	w.size += int64(len(p))
	return nil
}

// end writes what is gathered and ends the segment's bytes; close then
// waits for the transport to store it.
func (w *segmentWriter) end() {
	if err := w.bw.Flush(); err != nil {
		w.pw.CloseWithError(err)
		return
	}
	w.pw.Close()
}

// close ends the segment and waits for the transport to store it.
func (w *segmentWriter) close() (archive.Segment, error) {
	w.end()
	if err := w.wait(); err != nil {
		return archive.Segment{}, err
	}
	return archive.Segment{Name: w.name, Size: w.size, CRC32C: archive.CRC32CString(w.crc)}, nil
}

func (w *segmentWriter) abort() {
	w.pw.CloseWithError(errors.New("send aborted"))
	w.wait()
}

// wait waits for the transport's Put to return and returns its error.
func (w *segmentWriter) wait() error {
	if !w.done {
		w.put, w.done = <-w.res, true
	}
	return w.put
}
