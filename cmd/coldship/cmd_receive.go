package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/coldship/coldship/shipper"
)

type receiveOptions struct {
	dest           string
	shipment       string
	out            string
	identities     []string
	passphraseFile string
	jobs           int
	force          bool
	transport      transportOptions
	output         outputOptions
}

func newReceiveCmd(s *streams) *cobra.Command {
	opts := &receiveOptions{}
	c := &cobra.Command{
		Use:   "receive DEST [SHIPMENT] --out DIR [-i IDENTITY]... [--passphrase-file FILE]",
		Short: "Verify, decrypt and restore a shipment into DIR",
		Long: `Fetch, authenticate and decrypt a shipment (default: the latest complete one)
and restore its files under DIR by their relative names. Files are written to
temporary names, checked against their whole-file digests and renamed into
place only when every file of the shipment checks out. Holes and zero blocks
stay holes. Existing files are never overwritten without --force.

Identities: -i FILE (age identity file or SSH private key), or a passphrase
from --passphrase-file, $COLDSHIP_PASSPHRASE or a prompt on a terminal.

stdout: the restored paths, one per line.` + "\n" + exitStatusHelp,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(c *cobra.Command, args []string) error {
			opts.dest = args[0]
			if len(args) > 1 {
				opts.shipment = args[1]
			}
			return runReceive(c.Context(), s, opts)
		},
	}
	f := c.Flags()
	f.StringVarP(&opts.out, "out", "o", "", "restore into `DIR` (required)")
	f.StringArrayVarP(&opts.identities, "identity", "i", nil, "decrypt with the identity in `FILE` (repeatable)")
	f.StringVar(&opts.passphraseFile, "passphrase-file", "", "read the passphrase from the first line of `FILE`")
	f.IntVarP(&opts.jobs, "jobs", "j", 0, "parallel decrypters (default: all CPUs)")
	f.BoolVarP(&opts.force, "force", "f", false, "overwrite existing files")
	addTransportFlags(f, &opts.transport)
	f.BoolVar(&opts.output.json, "json", false, "NDJSON progress and a final summary on stderr")
	f.BoolVarP(&opts.output.quiet, "quiet", "q", false, "print only errors")
	return c
}

func runReceive(ctx context.Context, s *streams, opts *receiveOptions) error {
	if opts.out == "" {
		return usagef("receive: --out DIR is required")
	}
	if opts.jobs < 0 {
		return usagef("--jobs must not be negative")
	}
	ids, err := s.identities(opts.identities, opts.passphraseFile, true)
	if err != nil {
		return err
	}
	tr, err := openDest(ctx, s, opts.dest, &opts.transport)
	if err != nil {
		return err
	}
	defer tr.Close()
	id, err := pickShipment(ctx, tr, opts.shipment)
	if err != nil {
		return err
	}
	sh, err := shipper.OpenShipment(ctx, tr, id, ids)
	if err != nil {
		return err
	}
	cnt := new(shipper.Counters)
	rep := startProgress(s, "receive", opts.output, cnt)
	res, err := sh.Receive(ctx, opts.out, shipper.ReceiveOptions{
		Jobs: opts.jobs, Streams: opts.transport.streams, Force: opts.force, Counters: cnt,
	})
	if err != nil {
		rep.finish(false, nil, "")
		return fmt.Errorf("receive %s from %s: %w", id, tr, err)
	}
	rep.finish(true, map[string]any{
		"shipment": id, "files": len(res.Files), "bytes_total": cnt.Total.Load(),
		"bytes_data": cnt.Data.Load(), "bytes_fetched": cnt.Shipped.Load(),
	}, fmt.Sprintf("restored %s (%d files, %s) into %s", id, len(res.Files), humanBytes(cnt.Total.Load()), opts.out))
	for _, p := range res.Files {
		fmt.Fprintln(s.out, p)
	}
	return nil
}

// pickShipment returns the shipment named on the command line, or the
// latest complete one.
func pickShipment(ctx context.Context, tr shipper.Transport, id string) (string, error) {
	if id != "" {
		return id, nil
	}
	return shipper.Latest(ctx, tr)
}
