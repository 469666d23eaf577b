package sftp

import (
	"context"
	"errors"
	"fmt"

	"github.com/coldship/coldship/shipper"
)

// CheckRoot implements shipper.RootChecker: the destination path must be
// a directory on the server (the login directory always is).
func (t *Transport) CheckRoot(ctx context.Context) error {
	root := t.dest.root
	if root == "" {
		return nil
	}
	return t.do(ctx, false, func(c *conn) error {
		fi, err := c.sftp.Stat(root)
		if err != nil {
			err = t.classify(c, "stat", root, err)
			if errors.Is(err, shipper.ErrNotFound) {
				return fmt.Errorf("%w: directory %s is missing on %s", shipper.ErrNoDestination, root, t.dest)
			}
			return err
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", root) // the caller names the destination
		}
		return nil
	})
}
