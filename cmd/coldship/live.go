package main

import (
	"context"
	"errors"

	"github.com/spf13/pflag"
)

// liveOptions are the flags of live mode (send --live, receive --live).
type liveOptions struct {
	enabled bool
}

func addLiveSendFlags(f *pflag.FlagSet, o *liveOptions) {
	f.BoolVar(&o.enabled, "live", false, "stream sealed records straight into `coldship receive --live` over SSH (no ciphertext at rest)")
}

func addLiveReceiveFlags(f *pflag.FlagSet, o *liveOptions) {
	f.BoolVar(&o.enabled, "live", false, "receive a live stream on stdin (started by `coldship send --live` over SSH)")
}

func runLiveSend(ctx context.Context, s *streams, opts *sendOptions) error {
	return errors.New("live mode is not implemented yet")
}

func runLiveReceive(ctx context.Context, s *streams, opts *receiveOptions) error {
	return errors.New("live mode is not implemented yet")
}
