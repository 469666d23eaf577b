package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper"
)

type verifyOptions struct {
	dest           string
	shipment       string
	identities     []string
	passphraseFile string
	jobs           int
	transport      transportOptions
	output         outputOptions
}

func newVerifyCmd(s *streams) *cobra.Command {
	opts := &verifyOptions{}
	c := &cobra.Command{
		Use:   "verify DEST [SHIPMENT] [-i IDENTITY]...",
		Short: "Check a shipment at DEST, with or without a key",
		Long: `Without an identity: check that every object of the shipment is present with
the size and checksum recorded in its plaintext inventory (which reveals object
names and sizes, nothing else): BLAKE3 of the header, key objects, block table
and manifest, CRC32C of the segments (BLAKE3 in shipments of formats 1 and 2).
That proves the shipment consistent with its inventory, not authentic: anyone
who can write to DEST can write an inventory. With an identity (-i,
--passphrase-file or $COLDSHIP_PASSPHRASE): authenticate every block, check
every file's whole-file digest and every segment's checksum. Nothing is
written.` + "\n" + exitStatusHelp,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(c *cobra.Command, args []string) error {
			opts.dest = args[0]
			if len(args) > 1 {
				opts.shipment = args[1]
			}
			return runVerify(c.Context(), s, opts)
		},
	}
	f := c.Flags()
	f.StringArrayVarP(&opts.identities, "identity", "i", nil, "authenticate with the identity in `FILE` (repeatable)")
	f.StringVar(&opts.passphraseFile, "passphrase-file", "", "read the passphrase from the first line of `FILE`")
	f.IntVarP(&opts.jobs, "jobs", "j", 0, "parallel decrypters (default: all CPUs)")
	addTransportFlags(f, &opts.transport)
	f.BoolVar(&opts.output.json, "json", false, "NDJSON progress and a final summary on stderr")
	f.BoolVarP(&opts.output.quiet, "quiet", "q", false, "print only errors")
	return c
}

func runVerify(ctx context.Context, s *streams, opts *verifyOptions) error {
	ids, err := s.identities(opts.identities, opts.passphraseFile, false)
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
	cnt := new(shipper.Counters)
	if len(ids) == 0 {
		rep := startProgress(s, "verify", opts.output, cnt)
		if err := shipper.VerifyInventory(ctx, tr, id, cnt); err != nil {
			rep.finish(false, nil, "")
			return fmt.Errorf("verify %s at %s: %w", id, tr, err)
		}
		sums := "BLAKE3 of the small objects, CRC32C of the segments"
		if h, err := shipper.ReadHeader(ctx, tr, id); err == nil && h.Format < archive.FormatV3 {
			sums = "BLAKE3 of every object"
		}
		rep.finish(true, map[string]any{"shipment": id, "mode": "inventory", "bytes_checked": cnt.Shipped.Load()},
			fmt.Sprintf("%s: consistent with its inventory (%s), not authenticated (verify with -i to authenticate every block)", id, sums))
		return nil
	}
	sh, err := shipper.OpenShipment(ctx, tr, id, ids)
	if err != nil {
		return err
	}
	rep := startProgress(s, "verify", opts.output, cnt)
	if err := sh.Verify(ctx, opts.transport.streams, opts.jobs, cnt); err != nil {
		rep.finish(false, nil, "")
		return fmt.Errorf("verify %s at %s: %w", id, tr, err)
	}
	rep.finish(true, map[string]any{"shipment": id, "mode": "full", "files": len(sh.Manifest.Files), "bytes_total": cnt.Total.Load()},
		fmt.Sprintf("%s: every block authentic, every file digest and segment checksum correct (%d files)", id, len(sh.Manifest.Files)))
	return nil
}
