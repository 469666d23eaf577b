package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/shipper"
)

type verifyOptions struct {
	dest           string
	shipment       string
	all            bool
	readData       bool
	identities     []string
	passphraseFile string
	jobs           int
	transport      transportOptions
	output         outputOptions
}

func newVerifyCmd(s *streams) *cobra.Command {
	opts := &verifyOptions{}
	c := &cobra.Command{
		Use:   "verify DEST [SHIPMENT] [-i IDENTITY]... | verify --all DEST [--read-data -i IDENTITY]",
		Short: "Check a shipment, or everything, at DEST, with or without a key",
		Long: `Without an identity: check that every object of the shipment (default: the
latest complete one) is present with the size and checksum recorded in its
plaintext inventory (which reveals object names and sizes, nothing else):
BLAKE3 of the header, key objects, block table and manifest, CRC32C of the
segments (BLAKE3 in shipments of formats 1 and 2). That proves the shipment
consistent with its inventory, not authentic: anyone who can write to DEST
can write an inventory. With an identity (-i, --passphrase-file or
$COLDSHIP_PASSPHRASE): authenticate every block, check every file's
whole-file digest and every segment's checksum. Nothing is written.

--all checks everything at DEST, like restic's check: every complete
shipment against its inventory, every base that one of them needs, and
objects that belong to no shipment (stray objects, leftovers in a
shipment's folder that its inventory does not list, incomplete shipments
older than the newest complete one, unfinished uploads). Every problem is
listed, on stderr (--json: a problem object each), and the exit status is 5
if there is any. With --read-data and an identity it also opens every block
of every shipment.`,
		Example: `  coldship verify s3://dr-bucket/web01
  coldship verify s3://dr-bucket/web01 20261121T233000Z-3f9a1c2e -i ~/.config/coldship/site-b.key
  coldship verify --all /mnt/backup/web01 --read-data -i /etc/coldship/site-b.key`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(c *cobra.Command, args []string) error {
			opts.dest = args[0]
			if len(args) > 1 {
				opts.shipment = args[1]
			}
			if opts.all {
				return runVerifyAll(c.Context(), s, opts)
			}
			return runVerify(c.Context(), s, opts)
		},
	}
	f := c.Flags()
	f.BoolVar(&opts.all, "all", false, "check every shipment at DEST, the bases they need, and objects that belong to none")
	f.BoolVar(&opts.readData, "read-data", false, "with --all and an identity: also open every block of every shipment")
	f.StringArrayVarP(&opts.identities, "identity", "i", nil, "authenticate with the identity in `FILE` (repeatable)")
	f.StringVar(&opts.passphraseFile, "passphrase-file", "", "read the passphrase from the first line of `FILE`")
	f.IntVarP(&opts.jobs, "jobs", "j", 0, "parallel decrypters (default: all CPUs)")
	addTransportFlags(f, &opts.transport)
	addOutputFlags(f, &opts.output)
	commaList(f, "identity")
	return c
}

func runVerify(ctx context.Context, s *streams, opts *verifyOptions) error {
	if opts.readData {
		return usagef("--read-data goes with --all; to open every block of one shipment, give an identity (-i)")
	}
	ids, err := s.identities(opts.identities, opts.passphraseFile, false)
	if err != nil {
		return err
	}
	tr, err := openExistingDest(ctx, s, opts.dest, &opts.transport)
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
		rep := startProgress(s, "verify", opts.output, cnt, movedShipped)
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
	rep := startProgress(s, "verify", opts.output, cnt, movedShipped)
	if err := sh.Verify(ctx, opts.transport.streams, opts.jobs, cnt); err != nil {
		rep.finish(false, nil, "")
		return fmt.Errorf("verify %s at %s: %w", id, tr, err)
	}
	rep.finish(true, map[string]any{"shipment": id, "mode": "full", "files": len(sh.Manifest.Files), "bytes_total": cnt.Total.Load()},
		fmt.Sprintf("%s: every block authentic, every file digest and segment checksum correct (%s)", id, describeFiles(sh.Manifest.Files)))
	return nil
}

func runVerifyAll(ctx context.Context, s *streams, opts *verifyOptions) error {
	if opts.shipment != "" {
		return usagef("verify --all checks every shipment at DEST: give DEST alone")
	}
	ids, err := s.identities(opts.identities, opts.passphraseFile, opts.readData)
	if err != nil {
		return err
	}
	if len(ids) > 0 && !opts.readData {
		return usagef("verify --all: an identity is used with --read-data only; add --read-data to open every block")
	}
	tr, err := openExistingDest(ctx, s, opts.dest, &opts.transport)
	if err != nil {
		return err
	}
	defer tr.Close()
	cnt := new(shipper.Counters)
	rep := startProgress(s, "verify", opts.output, cnt, movedShipped)
	res, err := shipper.VerifyAll(ctx, tr, shipper.VerifyAllOptions{
		ReadData: opts.readData, Identities: ids, Streams: opts.transport.streams, Jobs: opts.jobs, Counters: cnt,
		Problem: func(p shipper.Problem) {
			if opts.output.json {
				s.emit(map[string]any{"type": "problem", "shipment": p.Shipment, "object": p.Object, "problem": p.Problem})
				return
			}
			fmt.Fprintf(s.err, "coldship: problem: %s\n", p)
		},
	})
	if err != nil {
		rep.finish(false, nil, "")
		return fmt.Errorf("verify --all at %s: %w", tr, err)
	}
	mode := "inventory checks"
	if opts.readData {
		mode = "inventory checks and every block opened"
	}
	summary := map[string]any{"mode": "all", "shipments": res.Shipments, "problems": len(res.Problems), "bytes_checked": cnt.Shipped.Load()}
	if len(res.Problems) == 0 {
		rep.finish(true, summary, fmt.Sprintf("%s: %d shipments, no problem (%s)", tr, res.Shipments, mode))
		return nil
	}
	rep.finish(true, summary, "")
	return verifyAllError(tr.String(), res)
}

// verifyAllError sums up the problems, with the exit status of the worst
// kind: integrity (5) before an identity that opens nothing (4).
func verifyAllError(dest string, res *shipper.VerifyAllResult) error {
	kind := archive.ErrIntegrity
	integrity := false
	for _, p := range res.Problems {
		if p.Err == nil || errors.Is(p.Err, archive.ErrIntegrity) || errors.Is(p.Err, cipher.ErrIntegrity) {
			integrity = true
		}
	}
	if !integrity {
		kind = res.Problems[0].Err
	}
	return fmt.Errorf("verify --all at %s: %d problems in %d shipments (listed above): %w", dest, len(res.Problems), res.Shipments, kind)
}
