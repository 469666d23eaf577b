package shipper

import (
	"context"
	"errors"
	"io"

	"github.com/coldship/coldship/archive"
)

// transientError marks a failure to read from the destination (a dropped
// connection, a server restarting) that another attempt may not meet.
// Receive retries only these: a local error (a full disk) or a check that
// failed would fail again.
type transientError struct{ err error }

func (e transientError) Error() string { return e.err.Error() }
func (e transientError) Unwrap() error { return e.err }

// transportErr marks err, from a transport, as transient unless it says
// it is not.
func transportErr(err error) error {
	if err == nil || errors.Is(err, archive.ErrIntegrity) || errors.Is(err, ErrPermanent) || errors.Is(err, ErrAuth) ||
		errors.Is(err, ErrNotFound) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return transientError{err}
}

// transportReader marks the read errors of an object as transient.
type transportReader struct {
	r    io.Reader
	name string
}

func (t transportReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && err != io.EOF {
		err = transportErr(err)
	}
	return n, err
}

// retryableReceive reports whether a receive that failed with err may
// succeed if tried again (resuming).
func retryableReceive(ctx context.Context, err error) bool {
	var t transientError
	return ctx.Err() == nil && errors.As(err, &t) && !errors.Is(err, archive.ErrIntegrity) &&
		!errors.Is(err, ErrPermanent) && !errors.Is(err, ErrAuth)
}
