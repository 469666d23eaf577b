package s3

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"golang.org/x/sync/errgroup"
)

const (
	// partSize is the size of every part of a multipart upload but the
	// last: a ~64 MiB segment goes up as 8 parts, Streams at once. S3
	// allows 10,000 parts, so one object holds at most 80,000 MiB.
	partSize = 8 << 20

	// poolBudget bounds the part buffers of all Puts of one Transport
	// together: 16 parts in flight, e.g. 4 segments with 4 parts each.
	poolBudget = 128 << 20

	// smallObject is the largest known size that is buffered outside the
	// pool, so that headers and manifests never wait for a part buffer.
	smallObject = 1 << 20
)

// maxParts is the S3 limit, a variable for tests.
var maxParts = 10000

// checksumHeader carries the CRC32C of every PUT body; the server refuses
// a body that does not match it, and a multipart upload created with
// checksumAlgorithm keeps the parts' checksums in the object. The header
// is signed but the body is not (UNSIGNED-PAYLOAD, as the client does over
// https anyway): hashing it with SHA-256 for a signature halved the upload
// rate on loopback (BenchmarkPutGet), and what coldship uploads is sealed
// by its own authenticated encryption.
const (
	checksumHeader    = "X-Amz-Checksum-Crc32c"
	checksumAlgorithm = "CRC32C"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc32c(b []byte) string {
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc32.Checksum(b, castagnoli))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// partPool hands out part buffers, at most n of them at a time, allocating
// them on first use and keeping them for reuse.
type partPool struct {
	size      int
	sem       chan struct{}
	mu        sync.Mutex
	free      [][]byte
	allocated int
}

func newPartPool(size, n int) *partPool {
	return &partPool{size: size, sem: make(chan struct{}, n)}
}

func (p *partPool) get(ctx context.Context) ([]byte, error) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		return b, nil
	}
	p.allocated++
	return make([]byte, p.size), nil
}

// tryGet is get without waiting: nil when all buffers are out.
func (p *partPool) tryGet() []byte {
	select {
	case p.sem <- struct{}{}:
	default:
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		return b
	}
	p.allocated++
	return make([]byte, p.size)
}

func (p *partPool) put(b []byte) {
	p.mu.Lock()
	p.free = append(p.free, b[:p.size])
	p.mu.Unlock()
	<-p.sem
}

// sizedReader stops a Put when its context is done and fails it, before
// anything is committed, when the source yields more or fewer bytes than
// announced.
type sizedReader struct {
	ctx  context.Context
	r    io.Reader
	want int64 // -1: unknown
	n    int64
}

func (s *sizedReader) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := s.r.Read(p)
	s.n += int64(n)
	switch {
	case s.want >= 0 && s.n > s.want:
		return n, fmt.Errorf("source yields more than the %d bytes announced", s.want)
	case err == io.EOF && s.want >= 0 && s.n != s.want:
		return n, fmt.Errorf("source ended after %d of %d bytes: %w", s.n, s.want, io.ErrUnexpectedEOF)
	}
	return n, err
}

// fill reads until buf is full (nil error) or the source ends (io.EOF).
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Put stores an object that fits in one part with a single PUT and a
// larger one as a multipart upload, so that nothing appears under the key
// before the upload is complete. A failed multipart upload is aborted.
func (t *Transport) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	key, err := t.key(name)
	if err != nil {
		return err
	}
	_, err = t.put(ctx, key, r, size, false)
	return err
}

// put stores r under key and returns the ETag the server gave it. With
// ifNone, the PUT (or the completion of the multipart upload) carries
// If-None-Match: *, which a server that supports it refuses with 412 when
// the key exists.
func (t *Transport) put(ctx context.Context, key string, r io.Reader, size int64, ifNone bool) (etag string, err error) {
	src := &sizedReader{ctx: ctx, r: r, want: size}
	var buf []byte
	pooled := size < 0 || size > smallObject
	if !pooled {
		buf = make([]byte, size+1) // one spare byte: the source must end within
	} else if buf, err = t.parts.get(ctx); err != nil {
		return "", fmt.Errorf("put %s: %w", t.where(key), err)
	}
	n, err := fill(src, buf)
	switch {
	case err == io.EOF:
		etag, err = t.putSingle(ctx, key, buf[:n], ifNone)
	case err != nil:
		err = fmt.Errorf("put %s: read source: %w", t.where(key), err)
	default:
		return t.putMultipart(ctx, key, src, buf, ifNone)
	}
	if pooled {
		t.parts.put(buf)
	}
	return etag, err
}

// putOptions are the options of a PUT or of a multipart upload's
// completion.
func putOptions(ifNone bool) minio.PutObjectOptions {
	opts := minio.PutObjectOptions{DisableContentSha256: true}
	if ifNone {
		opts.SetMatchETagExcept("*")
	}
	return opts
}

func (t *Transport) putSingle(ctx context.Context, key string, b []byte, ifNone bool) (string, error) {
	opts := putOptions(ifNone)
	opts.UserMetadata = map[string]string{checksumHeader: crc32c(b)}
	info, err := t.core.PutObject(ctx, t.bucket, key, bytes.NewReader(b), int64(len(b)), "", "", opts)
	return info.ETag, t.classify("put", key, err)
}

// putMultipart uploads first and the rest of src as parts, t.streams at a
// time, each in a buffer of the pool; it gives first back to the pool.
func (t *Transport) putMultipart(ctx context.Context, key string, src *sizedReader, first []byte, ifNone bool) (etag string, err error) {
	id, err := t.core.NewMultipartUpload(ctx, t.bucket, key, minio.PutObjectOptions{
		UserMetadata: map[string]string{"X-Amz-Checksum-Algorithm": checksumAlgorithm},
	})
	if err != nil {
		t.parts.put(first)
		if ctx.Err() != nil {
			// Cancelled (SIGTERM) while the server may have made the
			// upload already: abort whatever it holds of key.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
			t.abortStale(actx, key)
			cancel()
		}
		return "", t.classify("start upload of", key, err)
	}
	t.track(id, 1)
	defer t.track(id, -1)
	// The uploads of this key that a killed process left are aborted while
	// the parts go up, a round trip off this upload's way; its own upload
	// is tracked, so spared.
	stale := make(chan error, 1)
	go func() { stale <- t.abortStale(ctx, key) }()
	defer func() {
		if serr := <-stale; err == nil && serr != nil {
			fmt.Fprintf(t.stderr, "warning: %v (the next send or prune aborts them)\n", serr)
		}
	}()
	defer func() {
		if err != nil {
			t.abort(ctx, key, id)
		}
	}()
	parts, err := t.putParts(ctx, key, id, src, first)
	if err != nil {
		return "", err
	}
	info, err := t.core.CompleteMultipartUpload(ctx, t.bucket, key, id, parts, putOptions(ifNone))
	return info.ETag, t.classify("complete upload of", key, err)
}

// putParts uploads first and the rest of src as the parts of upload id,
// t.linkStreams() at a time (within the part pool), and returns them in
// order.
func (t *Transport) putParts(ctx context.Context, key, id string, src *sizedReader, first []byte) ([]minio.CompletePart, error) {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(t.linkStreams())
	src.ctx = gctx // a failed part stops reading the source
	var (
		mu      sync.Mutex
		parts   []minio.CompletePart
		readErr error
		err     error
	)
	buf, n, eof := first, len(first), false
	for num := 1; ; num++ {
		if num > maxParts {
			t.parts.put(buf)
			readErr = fmt.Errorf("object larger than %d parts of %d MiB", maxParts, partSize>>20)
			break
		}
		part := buf[:n]
		g.Go(func() error {
			defer t.parts.put(part)
			p, err := t.putPart(gctx, key, id, num, part)
			if err != nil {
				return err
			}
			mu.Lock()
			parts = append(parts, p)
			mu.Unlock()
			return nil
		})
		if eof {
			break
		}
		if buf, err = t.parts.get(gctx); err != nil {
			readErr = err
			break
		}
		n, err = fill(src, buf)
		if err == io.EOF {
			eof = true
			if n == 0 {
				t.parts.put(buf)
				break
			}
		} else if err != nil {
			t.parts.put(buf)
			readErr = fmt.Errorf("read source: %w", err)
			break
		}
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if readErr != nil {
		return nil, fmt.Errorf("put %s: %w", t.where(key), readErr)
	}
	slices.SortFunc(parts, func(a, b minio.CompletePart) int { return a.PartNumber - b.PartNumber })
	return parts, nil
}

// putPart uploads one part with its CRC32C.
func (t *Transport) putPart(ctx context.Context, key, id string, num int, b []byte) (minio.CompletePart, error) {
	sum := crc32c(b)
	opts := minio.PutObjectPartOptions{CustomHeader: http.Header{checksumHeader: {sum}}, DisableContentSha256: true}
	p, err := t.core.PutObjectPart(ctx, t.bucket, key, id, num, bytes.NewReader(b), int64(len(b)), opts)
	if err != nil {
		return minio.CompletePart{}, t.classify(fmt.Sprintf("put part %d of", num), key, err)
	}
	if p.ChecksumCRC32C != "" && p.ChecksumCRC32C != sum {
		return minio.CompletePart{}, fmt.Errorf("put part %d of %s: server stored CRC32C %s, sent %s", num, t.where(key), p.ChecksumCRC32C, sum)
	}
	return minio.CompletePart{PartNumber: num, ETag: p.ETag, ChecksumCRC32C: sum}, nil
}

// track counts the multipart uploads in flight in this process, which
// abortStale must leave alone.
func (t *Transport) track(id string, delta int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.uploads[id] += delta; t.uploads[id] <= 0 {
		delete(t.uploads, id)
	}
}

func (t *Transport) inFlight(id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.uploads[id] > 0
}

// abortTimeout bounds the abort of a failed upload: a Ctrl-C must not wait
// long for an unreachable server.
const abortTimeout = 10 * time.Second

// abort removes the parts of a failed upload, even when ctx is cancelled.
// A part the server was still receiving when the upload was aborted may
// bring the upload back (S3's documentation says to abort again until it
// is gone): abort checks, a few times, that it is no longer listed. If
// that fails too (the server is unreachable), the next Put or Delete of
// the same name, or shipper.AbortLeftoverUploads, removes them.
func (t *Transport) abort(ctx context.Context, key, id string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	for attempt := range 4 {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 100 * time.Millisecond)
			if !t.listed(ctx, key, id) {
				return
			}
		}
		if err := t.core.AbortMultipartUpload(ctx, t.bucket, key, id); err != nil && !isCode(err, "NoSuchUpload") {
			fmt.Fprintf(t.stderr, "warning: could not abort the unfinished upload of %s (the next upload or delete of it will): %v\n", t.where(key), err)
			return
		}
	}
}

// listed reports whether upload id of key is still listed (false when the
// listing fails: the next run's clean-up is left to deal with it).
func (t *Transport) listed(ctx context.Context, key, id string) bool {
	found := false
	t.listUploads(ctx, key, func(u minio.ObjectMultipartInfo) error {
		found = found || (u.Key == key && u.UploadID == id)
		return nil
	})
	return found
}

// abortStale aborts the multipart uploads of key that a killed process
// left behind, so that they stop accruing storage.
func (t *Transport) abortStale(ctx context.Context, key string) error {
	err := t.listUploads(ctx, key, func(u minio.ObjectMultipartInfo) error {
		if u.Key != key || t.inFlight(u.UploadID) {
			return nil
		}
		if err := t.core.AbortMultipartUpload(ctx, t.bucket, key, u.UploadID); err != nil && !isCode(err, "NoSuchUpload") {
			return t.classify("abort unfinished upload of", key, err)
		}
		return nil
	})
	if isCode(err, "AccessDenied") || notImplemented(err) {
		// A policy without s3:ListBucketMultipartUploads (or a store
		// without the call) is no reason to fail: only the clean-up is
		// lost.
		t.warnOnce.Do(func() { fmt.Fprintf(t.stderr, "warning: %v; unfinished uploads of killed runs are not removed\n", err) })
		return nil
	}
	return err
}

// listUploads calls fn for every multipart upload whose key starts with
// keyPrefix, page by page.
func (t *Transport) listUploads(ctx context.Context, keyPrefix string, fn func(minio.ObjectMultipartInfo) error) error {
	var keyMarker, idMarker string
	for {
		res, err := t.core.ListMultipartUploads(ctx, t.bucket, keyPrefix, keyMarker, idMarker, "", 1000)
		if err != nil {
			return t.classify("list unfinished uploads under", keyPrefix, err)
		}
		for _, u := range res.Uploads {
			if err := fn(u); err != nil {
				return err
			}
		}
		if !res.IsTruncated || (res.NextKeyMarker == keyMarker && res.NextUploadIDMarker == idMarker) {
			return nil
		}
		keyMarker, idMarker = res.NextKeyMarker, res.NextUploadIDMarker
	}
}

func isCode(err error, code string) bool {
	var resp minio.ErrorResponse
	return errors.As(err, &resp) && resp.Code == code
}
