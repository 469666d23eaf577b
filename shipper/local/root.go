package local

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/coldship/coldship/shipper"
)

// CheckRoot implements shipper.RootChecker: the root must be a directory.
func (t *Transport) CheckRoot(ctx context.Context) error {
	fi, err := os.Stat(t.root)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: directory %s is missing", shipper.ErrNoDestination, t.root)
	case err != nil:
		return classify("stat", t.root, err)
	case !fi.IsDir():
		return errors.New("not a directory") // the caller names the destination
	}
	return nil
}
