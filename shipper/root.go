package shipper

import (
	"context"
	"errors"
)

// ErrNoDestination means the destination itself does not exist: a missing
// directory, SFTP path or bucket. Reading from it is a mistake to report
// (a typo), not an empty destination.
var ErrNoDestination = errors.New("the destination does not exist")

// RootChecker is implemented by transports that can tell whether their
// root (a directory, an SFTP path, a bucket) exists.
type RootChecker interface {
	// CheckRoot returns nil when the root exists, an error wrapping
	// ErrNoDestination when it does not, and another error when it
	// cannot tell.
	CheckRoot(ctx context.Context) error
}

// CheckRoot asks tr whether its root exists, when tr can tell; a
// transport that cannot is taken to have one.
func CheckRoot(ctx context.Context, tr Transport) error {
	if rc, ok := tr.(RootChecker); ok {
		return rc.CheckRoot(ctx)
	}
	return nil
}
