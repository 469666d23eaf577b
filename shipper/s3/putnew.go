package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/coldship/coldship/shipper"
)

var _ shipper.ExclusiveCreator = (*Transport)(nil)

// Whether the server honours If-None-Match: * on PUT, learnt by the first
// PutNew of a Transport.
const (
	condUnknown = iota
	condSupported
	condIgnored
)

// PutNew stores r under name only if no object of that name exists.
//
// Where the server supports conditional writes (AWS S3 since 2024, MinIO,
// Ceph RGW, versitygw), the PUT, or the completion of a multipart upload,
// carries If-None-Match: * and the server refuses it atomically when the
// key exists: of racing PutNews at most one succeeds. Elsewhere (the server
// answers 501 or ignores the header) PutNew checks with a HEAD before and
// reads the ETag back after: a PutNew never replaces an object that exists
// when it starts, and one that loses a race to another writer fails, but
// two PutNews racing for one name can then both succeed.
func (t *Transport) PutNew(ctx context.Context, name string, r io.Reader, size int64) error {
	key, err := t.key(name)
	if err != nil {
		return err
	}
	mode, err := t.conditionalWrites(ctx)
	if err != nil {
		return err
	}
	if mode == condSupported {
		return t.putNewConditional(ctx, key, r, size)
	}
	return t.putNewChecked(ctx, key, r, size)
}

// putNewConditional is PutNew on a server that honours If-None-Match.
func (t *Transport) putNewConditional(ctx context.Context, key string, r io.Reader, size int64) error {
	// Keep a small object's bytes: if a lost response made the client
	// retry a PUT that had succeeded, the retry is refused as if another
	// writer had been first, and only the content tells them apart.
	var small []byte
	if size >= 0 && size <= smallObject {
		small = make([]byte, 0, size)
		r = io.TeeReader(r, &limitedBuffer{b: &small, max: int(size)})
	}
	_, err := t.put(ctx, key, r, size, true)
	if errors.Is(err, shipper.ErrObjectExists) && small != nil && t.holds(ctx, key, small) {
		return nil
	}
	return err
}

// putNewChecked is PutNew on a server without conditional writes.
func (t *Transport) putNewChecked(ctx context.Context, key string, r io.Reader, size int64) error {
	_, err := t.core.StatObject(ctx, t.bucket, key, minio.StatObjectOptions{})
	if err == nil {
		return t.exists(key)
	}
	if err := t.classify("stat", key, t.explainHead(ctx, key, err)); !errors.Is(err, shipper.ErrNotFound) {
		return err
	}
	etag, err := t.put(ctx, key, r, size, false)
	if err != nil {
		return err
	}
	oi, err := t.core.StatObject(ctx, t.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return t.classify("read back", key, err)
	}
	if trimETag(oi.ETag) != trimETag(etag) {
		return &opError{op: "put", where: t.where(key), kind: shipper.ErrObjectExists, err: shipper.ErrObjectExists,
			msg: "another writer stored an object of that name at the same time"}
	}
	return nil
}

func trimETag(s string) string { return strings.Trim(s, `"`) }

func (t *Transport) exists(key string) error {
	return &opError{op: "put", where: t.where(key), kind: shipper.ErrObjectExists, err: shipper.ErrObjectExists,
		msg: "an object of that name exists"}
}

// holds reports whether key holds exactly b.
func (t *Transport) holds(ctx context.Context, key string, b []byte) bool {
	body, _, _, err := t.core.GetObject(ctx, t.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return false
	}
	defer body.Close()
	got, err := io.ReadAll(io.LimitReader(body, int64(len(b))+1))
	return err == nil && bytes.Equal(got, b)
}

// limitedBuffer appends to *b what is written, up to max bytes.
type limitedBuffer struct {
	b   *[]byte
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	*l.b = append(*l.b, p[:min(len(p), l.max-len(*l.b))]...)
	return len(p), nil
}

// conditionalWrites finds out, once per Transport, whether the server
// honours If-None-Match: * on PUT: it creates a probe object (a dot name,
// which List never shows) conditionally, then again; a server that honours
// the header refuses the second with 412, one that ignores it accepts it,
// and some answer 501 Not Implemented. A failure to probe (the server is
// unreachable) is returned and the probe is tried again next time.
func (t *Transport) conditionalWrites(ctx context.Context) (int, error) {
	t.condMu.Lock()
	defer t.condMu.Unlock()
	if t.cond != condUnknown {
		return t.cond, nil
	}
	key := t.prefix + probePrefix + randomHex(8)
	// The probe, once it may exist (a put succeeded, or was cut short
	// by a cancelled ctx: SIGTERM), is removed however the probe ends; a
	// killed process leaves it to RemoveLeftoverProbes.
	made := false
	defer func() {
		if !made {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
		defer cancel()
		if err := t.core.RemoveObject(rctx, t.bucket, key, minio.RemoveObjectOptions{}); err != nil {
			fmt.Fprintf(t.stderr, "warning: could not remove the probe object %s: %v\n", t.where(key), err)
		}
	}()
	mode := condSupported
	for i := range 2 {
		_, err := t.putSingle(ctx, key, []byte("probe"), true)
		made = made || err == nil || ctx.Err() != nil
		if err == nil {
			if i == 1 {
				mode = condIgnored
			}
			continue
		}
		if errors.Is(err, shipper.ErrObjectExists) {
			break
		}
		if notImplemented(err) {
			mode = condIgnored
			break
		}
		return condUnknown, err
	}
	t.cond = mode
	return mode, nil
}

// probePrefix begins the names of the probe objects (a dot name, which
// List never shows).
const probePrefix = ".coldship-probe-"

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func notImplemented(err error) bool {
	var resp minio.ErrorResponse
	return errors.As(err, &resp) && (resp.Code == "NotImplemented" || resp.StatusCode == http.StatusNotImplemented)
}

// RemoveLeftoverProbes deletes the probe objects of conditionalWrites that
// a process killed while probing left, those written before startedBefore
// (by the server's clock). Like AbortLeftoverUploads, call it with the
// destination's lock held; a probe of another running process deleted
// early only makes that process take the server for one that ignores
// If-None-Match (HEAD before, read back after), which is safe.
func (t *Transport) RemoveLeftoverProbes(ctx context.Context, startedBefore time.Time) (int, error) {
	n := 0
	opts := minio.ListObjectsOptions{Prefix: t.prefix + probePrefix}
	for oi := range t.core.ListObjectsIter(ctx, t.bucket, opts) {
		if oi.Err != nil {
			return n, t.classify("list", t.prefix+probePrefix, oi.Err)
		}
		if !oi.LastModified.Before(startedBefore) {
			continue
		}
		if err := t.core.RemoveObject(ctx, t.bucket, oi.Key, minio.RemoveObjectOptions{}); err != nil {
			return n, t.classify("delete", oi.Key, err)
		}
		n++
	}
	return n, nil
}
