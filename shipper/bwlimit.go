package shipper

import (
	"context"
	"io"

	"golang.org/x/time/rate"
)

// waiter is the part of *rate.Limiter the bandwidth wrapper uses.
type waiter interface {
	WaitN(ctx context.Context, n int) error
}

// LimitBandwidth returns a Transport that moves at most bytesPerSecond
// through tr, over all of its streams together: every byte that Put reads
// from its caller and every byte read from an object that Open returns is
// paid for from one token bucket first. Because the pipeline is driven by
// these reads, what the progress counters see is what crossed the limit,
// so rates and ETAs stay truthful.
//
// As with restic, the limit is a wrapper around a transport, not code in
// one: it works the same over every destination.
func LimitBandwidth(tr Transport, bytesPerSecond int64) Transport {
	// A burst of a tenth of a second (at least 32 KiB, at most 4 MiB) keeps
	// the flow smooth without starving large reads.
	burst := int(min(max(bytesPerSecond/10, 32<<10), 4<<20))
	return &limitedTransport{Transport: tr, lim: rate.NewLimiter(rate.Limit(bytesPerSecond), burst), burst: burst}
}

type limitedTransport struct {
	Transport
	lim   waiter
	burst int
}

func (t *limitedTransport) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	return t.Transport.Put(ctx, name, &limitedReader{ctx: ctx, r: r, t: t}, size)
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
