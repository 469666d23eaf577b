package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/minio/minio-go/v7"
)

// readBudget bounds the chunk buffers of all parallel reads of one
// Transport together. Reads never wait for a buffer: without one they
// stream the next chunk directly.
const readBudget = 128 << 20

// Open reads the range with one GET when it fits in one chunk (partSize),
// or when the GETs of other reads already take every stream but this one's
// (a shipment's segments, read several at once, then go one GET each:
// fewer, longer requests cost the server less). Otherwise it uses ranged
// GETs, up to linkStreams at once (Streams, more on a long round trip)
// while streams are free: the first chunk streams straight from its
// response while the following ones are fetched into buffers.
func (t *Transport) Open(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	key, err := t.key(name)
	if err != nil {
		return nil, err
	}
	if offset < 0 || length < -1 {
		return nil, fmt.Errorf("open %s: invalid range offset %d length %d", t.where(key), offset, length)
	}
	if length == 0 {
		// HTTP cannot ask for zero bytes; still report a missing object.
		return t.emptyAt(ctx, name, key, offset)
	}
	// A parallel read takes two streams at once, for its first GET and its
	// first chunk: reads opened together then do not all start in
	// parallel only to find no stream left for a chunk, which would cost
	// each of them a second GET, a round trip, after its first chunk.
	parallel := t.streams > 1 && (length < 0 || length > partSize) && t.takeStreams(2)
	spare := 0
	if parallel {
		spare = 1
	} else {
		t.gets.Add(1)
	}
	var opts minio.GetObjectOptions
	switch {
	case parallel:
		opts.SetRange(offset, offset+partSize-1)
	case length > 0:
		opts.SetRange(offset, offset+length-1)
	case offset > 0:
		opts.SetRange(offset, 0)
	}
	body, info, h, err := t.getStream(ctx, key, opts)
	if err != nil {
		t.gets.Add(int32(-spare))
		if isCode(err, "InvalidRange") {
			// The range starts at or past the end: S3 refuses even
			// "bytes=size-", which is an empty read.
			return t.emptyAt(ctx, name, key, offset)
		}
		return nil, t.classify("open", key, err)
	}
	if !parallel {
		return body, nil
	}
	total, ok := totalSize(h.Get("Content-Range"))
	end := total
	if length > 0 {
		end = min(total, offset+length)
	}
	next := min(offset+partSize, end)
	if !ok || next >= end {
		t.gets.Add(-1) // the spare stream is not needed
	}
	if !ok {
		// The server sent the whole object instead of the range.
		if offset > 0 {
			body.Close()
			return nil, fmt.Errorf("open %s: the server ignored the range request", t.where(key))
		}
		if length > 0 {
			return struct {
				io.Reader
				io.Closer
			}{io.LimitReader(body, length), body}, nil
		}
		return body, nil
	}
	if next >= end {
		return body, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &chunkReader{t: t, ctx: ctx, cancel: cancel, key: key, etag: info.ETag, cur: body, next: next, fetchAt: next, end: end, spare: 1}
	r.schedule()
	return r, nil
}

// totalSize parses the object size from "bytes 0-8388607/268435456".
func totalSize(contentRange string) (int64, bool) {
	_, total, ok := strings.Cut(contentRange, "/")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(total, 10, 64)
	return n, err == nil
}

// getStream is a GET for which the caller counted a stream in t.gets: its
// response gives the stream back when it is closed (or at once if the GET
// fails).
func (t *Transport) getStream(ctx context.Context, key string, opts minio.GetObjectOptions) (io.ReadCloser, minio.ObjectInfo, http.Header, error) {
	body, info, h, err := t.core.GetObject(ctx, t.bucket, key, opts)
	if err != nil {
		t.gets.Add(-1)
		return nil, info, h, err
	}
	return &countedBody{ReadCloser: body, gets: &t.gets}, info, h, nil
}

type countedBody struct {
	io.ReadCloser
	gets *atomic.Int32
	once sync.Once
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	return n, bodyErr(err)
}

// bodyErr is what reading a response body met. net/http ends a body whose
// connection dropped before its Content-Length with io.ErrUnexpectedEOF;
// that is a lost connection, which callers must tell apart from an object
// that ends early (a receive retries the one and takes the other for a
// truncated segment), so it no longer reads as io.ErrUnexpectedEOF.
func bodyErr(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("the connection was lost before the response ended (%v)", err)
	}
	return err
}

func (b *countedBody) Close() error {
	b.once.Do(func() { b.gets.Add(-1) })
	return b.ReadCloser.Close()
}

// takeStreams counts n more GETs if that keeps them within what the link
// asks for (linkStreams).
func (t *Transport) takeStreams(n int32) bool {
	limit := t.linkStreams()
	for {
		cur := t.gets.Load()
		if int(cur+n) > limit {
			return false
		}
		if t.gets.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

// emptyAt returns an empty reader if offset is within or at the end of the
// object.
func (t *Transport) emptyAt(ctx context.Context, name, key string, offset int64) (io.ReadCloser, error) {
	oi, err := t.Stat(ctx, name)
	if err != nil {
		return nil, err
	}
	if offset > oi.Size {
		return nil, fmt.Errorf("open %s: offset %d beyond size %d", t.where(key), offset, oi.Size)
	}
	return io.NopCloser(bytes.NewReader(nil)), nil
}

// chunkReader delivers [start, end) of an object in order from ranged GETs
// of partSize, keeping up to Streams of them in flight. Every GET after the
// first requires the first one's ETag (if the server sent one), so that an
// object replaced during the read fails the read instead of mixing two
// versions. Its first error is sticky.
type chunkReader struct {
	t      *Transport
	ctx    context.Context
	cancel context.CancelFunc
	key    string
	etag   string

	cur     io.ReadCloser // the chunk being read
	curBuf  []byte        // cur's buffer, returned to the pool when it is done
	next    int64         // offset of the chunk after cur
	fetchAt int64         // offset of the first chunk not yet fetched
	end     int64
	queue   []*chunk // fetches in order, the first at next
	spare   int      // streams taken by Open for chunks, not yet used
	err     error
}

type chunk struct {
	off  int64
	buf  []byte
	done chan struct{}
	err  error
}

// schedule starts fetches while buffers and streams are free (fewer than
// linkStreams GETs of all reads in flight) and this read has fewer than
// linkStreams of its own, counting cur when it streams from a response.
func (r *chunkReader) schedule() {
	window := r.t.linkStreams()
	if r.cur != nil && r.curBuf == nil {
		window--
	}
	for r.fetchAt < r.end && len(r.queue) < window {
		if r.spare > 0 {
			r.spare--
		} else if !r.t.takeStreams(1) {
			return
		}
		buf := r.t.reads.tryGet()
		if buf == nil {
			r.t.gets.Add(-1)
			return
		}
		n := min(int64(len(buf)), r.end-r.fetchAt)
		c := &chunk{off: r.fetchAt, buf: buf[:n], done: make(chan struct{})}
		r.fetchAt += n
		r.queue = append(r.queue, c)
		go func() {
			defer close(c.done)
			defer r.t.gets.Add(-1)
			body, err := r.get(c.off, n)
			if err != nil {
				c.err = err
				return
			}
			defer body.Close()
			if _, err := io.ReadFull(body, c.buf); err != nil {
				// Short of the range asked (the ETag still matching):
				// the response was cut, the object is whole.
				c.err = fmt.Errorf("read %s at %d: %w", r.t.where(r.key), c.off, bodyErr(err))
			}
		}()
	}
}

func (r *chunkReader) get(off, n int64) (io.ReadCloser, error) {
	var opts minio.GetObjectOptions
	opts.SetRange(off, off+n-1)
	if r.etag != "" {
		opts.SetMatchETag(r.etag)
	}
	body, _, _, err := r.t.core.GetObject(r.ctx, r.t.bucket, r.key, opts)
	if err != nil {
		if isCode(err, "PreconditionFailed") {
			return nil, fmt.Errorf("read %s: the object was replaced during the read", r.t.where(r.key))
		}
		return nil, r.t.classify("read", r.key, err)
	}
	return body, nil
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for r.err == nil {
		if r.cur != nil {
			n, err := r.cur.Read(p)
			if err == io.EOF {
				r.closeCur()
				if n > 0 {
					return n, nil
				}
				continue
			}
			if err != nil {
				r.err = fmt.Errorf("read %s: %w", r.t.where(r.key), bodyErr(err))
			}
			return n, r.err
		}
		if r.next >= r.end {
			return 0, io.EOF
		}
		if len(r.queue) == 0 {
			// No stream or buffer was free: stream the rest with one GET.
			n := r.end - r.next
			r.t.gets.Add(1)
			body, err := r.get(r.next, n)
			if err != nil {
				r.t.gets.Add(-1)
				r.err = err
				break
			}
			body = &countedBody{ReadCloser: body, gets: &r.t.gets}
			r.cur = struct {
				io.Reader
				io.Closer
			}{io.LimitReader(body, n), body}
			r.next += n
			r.fetchAt = r.end
			continue
		}
		c := r.queue[0]
		select {
		case <-c.done:
		case <-r.ctx.Done():
			r.err = r.ctx.Err()
			return 0, r.err
		}
		r.queue = r.queue[1:]
		if c.err != nil {
			r.t.reads.put(c.buf)
			r.err = c.err
			break
		}
		r.cur, r.curBuf = io.NopCloser(bytes.NewReader(c.buf)), c.buf
		r.next += int64(len(c.buf))
		r.schedule()
	}
	return 0, r.err
}

func (r *chunkReader) closeCur() {
	if r.cur != nil {
		r.cur.Close()
		r.cur = nil
	}
	if r.curBuf != nil {
		r.t.reads.put(r.curBuf)
		r.curBuf = nil
	}
}

// Close stops the fetches in flight and returns their buffers.
func (r *chunkReader) Close() error {
	r.cancel()
	r.closeCur()
	r.t.gets.Add(int32(-r.spare))
	r.spare = 0
	for _, c := range r.queue {
		<-c.done
		r.t.reads.put(c.buf)
	}
	r.queue = nil
	if r.err == nil {
		r.err = errors.New("read after close")
	}
	return nil
}
