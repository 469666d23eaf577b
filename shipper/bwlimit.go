package shipper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/time/rate"
)

// waiter is what the bandwidth wrapper asks of its token bucket.
type waiter interface {
	WaitN(ctx context.Context, n int) error
}

// LimitBandwidth returns a Transport that moves at most bytesPerSecond
// through tr, over all of its streams together: every byte that Put (and
// PutNew) reads from its caller and every byte read from an object that
// Open returns is paid for from one token bucket first. Because the
// pipeline is driven by these reads, what the progress counters see is
// what crossed the limit, so rates and ETAs stay truthful.
//
// The bucket starts empty and holds at most a twentieth of a second of
// tokens, so that no transfer, however short, nor any second of a long one
// moves more than the limit plus 5%.
//
// As with restic, the limit is a wrapper around a transport, not code in
// one: it works the same over every destination. The wrapper keeps tr's
// optional capabilities: it is an ExclusiveCreator exactly when tr is one,
// and passes TemporaryRemover and UploadAborter through (as no-ops where tr
// lacks them: nothing to remove, no uploads). It is no LinkReporter: its
// Unwrap returns tr, which reports its link if it measures one.
func LimitBandwidth(tr Transport, bytesPerSecond int64) Transport {
	return limitBandwidth(tr, bytesPerSecond, realClock{})
}

// burstFor is the bucket's size for a rate: a twentieth of a second, at
// least a byte, at most 4 MiB (reads larger than that gain nothing).
func burstFor(bytesPerSecond int64) int {
	return int(min(max(bytesPerSecond/20, 1), 4<<20))
}

func limitBandwidth(tr Transport, bytesPerSecond int64, c clock) Transport {
	burst := burstFor(bytesPerSecond)
	lim := rate.NewLimiter(rate.Limit(bytesPerSecond), burst)
	// A new limiter is full: empty it, or the first burst would be free.
	lim.ReserveN(c.Now(), burst)
	t := &limitedTransport{Transport: tr, lim: &bucket{lim: lim, clock: c}, burst: burst}
	if ec, ok := tr.(ExclusiveCreator); ok {
		return &limitedExclusive{limitedTransport: t, ec: ec}
	}
	return t
}

// clock is the time the token bucket runs on: the real one, or a simulated
// one in tests.
type clock interface {
	Now() time.Time
	Sleep(ctx context.Context, d time.Duration) error
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) Sleep(ctx context.Context, d time.Duration) error {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// bucket is a rate.Limiter waited on through a clock.
type bucket struct {
	lim   *rate.Limiter
	clock clock
}

func (b *bucket) WaitN(ctx context.Context, n int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := b.clock.Now()
	r := b.lim.ReserveN(now, n)
	if !r.OK() {
		return fmt.Errorf("bandwidth limit: %d bytes exceed the burst %d", n, b.lim.Burst())
	}
	d := r.DelayFrom(now)
	if d <= 0 {
		return nil
	}
	if err := b.clock.Sleep(ctx, d); err != nil {
		r.CancelAt(b.clock.Now())
		return err
	}
	return nil
}

type limitedTransport struct {
	Transport
	lim   waiter
	burst int
}

// ListFolders lists through the wrapped transport (a listing is not
// limited), or fails with errors.ErrUnsupported if it cannot.
func (t *limitedTransport) ListFolders(ctx context.Context, fn func(name string) error) error {
	if fl, ok := t.Transport.(FolderLister); ok {
		return fl.ListFolders(ctx, fn)
	}
	return errors.ErrUnsupported
}

// ListSkipping lists through the wrapped transport, or fails with
// errors.ErrUnsupported if it cannot.
func (t *limitedTransport) ListSkipping(ctx context.Context, prefix string, skip func(string) bool, fn func(ObjectInfo) error) error {
	if sl, ok := t.Transport.(SkippingLister); ok {
		return sl.ListSkipping(ctx, prefix, skip, fn)
	}
	return errors.ErrUnsupported
}

func (t *limitedTransport) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	return t.Transport.Put(ctx, name, &limitedReader{ctx: ctx, r: r, t: t}, size)
}

// PutGated puts through the wrapped transport's PutGated, limited.
func (t *limitedTransport) PutGated(ctx context.Context, name string, r io.Reader, size int64, ready func() error) error {
	return putGated(ctx, t.Transport, name, &limitedReader{ctx: ctx, r: r, t: t}, size, ready)
}

func (t *limitedTransport) Open(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	rc, err := t.Transport.Open(ctx, name, offset, length)
	if err != nil {
		return nil, err
	}
	return &limitedReadCloser{limitedReader{ctx: ctx, r: rc, t: t}, rc}, nil
}

// RemoveTemporaries passes the optional capability through.
func (t *limitedTransport) RemoveTemporaries(ctx context.Context, dir string) error {
	if tc, ok := t.Transport.(TemporaryRemover); ok {
		return tc.RemoveTemporaries(ctx, dir)
	}
	return nil
}

// Uploads passes the optional capability through.
func (t *limitedTransport) Uploads(ctx context.Context, prefix string, fn func(Upload) error) error {
	if ua, ok := t.Transport.(UploadAborter); ok {
		return ua.Uploads(ctx, prefix, fn)
	}
	return nil
}

// AbortUpload passes the optional capability through.
func (t *limitedTransport) AbortUpload(ctx context.Context, u Upload) error {
	if ua, ok := t.Transport.(UploadAborter); ok {
		return ua.AbortUpload(ctx, u)
	}
	return nil
}

// RemoveLeftoverProbes passes the optional capability through.
func (t *limitedTransport) RemoveLeftoverProbes(ctx context.Context, startedBefore time.Time) (int, error) {
	if pr, ok := t.Transport.(probeRemover); ok {
		return pr.RemoveLeftoverProbes(ctx, startedBefore)
	}
	return 0, nil
}

// Unwrap returns the transport the limit wraps. A LinkStats passed
// through would have to return zeros for a transport that measures no link
// (a local directory), and zeros read as measurements: a caller unwraps to
// find the LinkReporter, or learns there is none.
func (t *limitedTransport) Unwrap() Transport { return t.Transport }

// limitedExclusive is the wrapper of a transport that can create objects
// exclusively.
type limitedExclusive struct {
	*limitedTransport
	ec ExclusiveCreator
}

func (t *limitedExclusive) PutNew(ctx context.Context, name string, r io.Reader, size int64) error {
	return t.ec.PutNew(ctx, name, &limitedReader{ctx: ctx, r: r, t: t.limitedTransport}, size)
}

// limitedReader reads at most a burst at a time and waits for the tokens
// of what it read before handing it on.
type limitedReader struct {
	ctx context.Context
	r   io.Reader
	t   *limitedTransport
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if len(p) > l.t.burst {
		p = p[:l.t.burst]
	}
	n, err := l.r.Read(p)
	if n > 0 {
		if werr := l.t.lim.WaitN(l.ctx, n); werr != nil {
			if cerr := l.ctx.Err(); cerr != nil {
				return 0, cerr
			}
			return 0, werr
		}
	}
	return n, err
}

type limitedReadCloser struct {
	limitedReader
	c io.Closer
}

func (l *limitedReadCloser) Close() error { return l.c.Close() }
