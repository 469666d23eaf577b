package shipper

import (
	"context"
	"errors"

	"github.com/coldship/coldship/shipper/restore"
)

// ErrNoRestore means receive --into was given a folder that holds no
// restore by coldship of the shipment's files.
var ErrNoRestore = restore.ErrNoRestore

// ReceiveInto updates dir, which holds an earlier restore made by Receive
// or ReceiveInto, to this shipment in place: only the blocks whose digest
// differs from what the files hold are fetched and written, blocks that
// became zero are punched, and the files being rewritten stay aside until
// every one checks out. Running it again completes an interrupted update.
func (sh *Shipment) ReceiveInto(ctx context.Context, dir string, opts ReceiveOptions) (*ReceiveResult, error) {
	if len(opts.Include) > 0 || len(opts.Devices) > 0 {
		return nil, errors.New("receive --into updates a whole restore: --include and --out-device do not apply")
	}
	return sh.receive(ctx, dir, opts, true)
}
