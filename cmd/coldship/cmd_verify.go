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
	trust          trustOptions
	transport      transportOptions
	output         outputOptions
}

func newVerifyCmd(s *streams) *cobra.Command {
	opts := &verifyOptions{}
	c := &cobra.Command{
		Use:   "verify DEST [SHIPMENT] [-i IDENTITY]... [--trusted-senders FILE] | verify --all DEST [--read-data -i IDENTITY] [--trusted-senders FILE]",
		Short: "Check a shipment, or everything, at DEST, with or without a key",
		Long: `Without an identity: check that every object of the shipment (default, or
SHIPMENT "latest": the latest complete one) is present with the size and
checksum recorded in its plaintext inventory (which reveals object names and
sizes, nothing else): BLAKE3 of the header, key objects, block table and
manifest, CRC32C of the segments (BLAKE3 in shipments of formats 1 and 2),
and, if the shipment is signed, that its objects match the SHA-256 sums of
its statement. That proves the shipment consistent with its inventory, not
authentic: anyone who can write to DEST can write an inventory and a
statement. With --trusted-senders FILE (an OpenSSH allowed_signers file):
the shipment (default: the newest that verifies) must be signed by a key of
FILE and match what it signed, or verify exits 4; the header, inventory, key
objects and manifest are then authenticated. With an identity (-i,
--passphrase-file or $COLDSHIP_PASSPHRASE): authenticate every block,
check every file's whole-file digest and every segment's checksum.
Nothing is written.

--all checks everything at DEST, like restic's check: every complete
shipment against its inventory, every base that one of them needs, and
objects that belong to no shipment (stray objects, leftovers in a
shipment's folder that its inventory does not list, incomplete shipments
older than the newest complete one, unfinished uploads but those into a
newer one, which a send may be writing). Every problem is
listed, on stderr (--json: a problem object each), and the exit status is 5
if there is any. With --read-data and an identity it also opens every block
of every shipment. With --trusted-senders, every complete shipment that is
not signed by a key of FILE, or not what it signed, is a problem too (exit
4 when there is no other kind).`,
		Example: `  coldship verify s3://dr-bucket/web01
  coldship verify s3://dr-bucket/web01 20261121T233000Z-3f9a1c2e -i ~/.config/coldship/site-b.key
  coldship verify --all /mnt/backup/web01 --read-data -i /etc/coldship/site-b.key`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(c *cobra.Command, args []string) error {
			opts.dest = args[0]
			var err error
			if opts.shipment, err = shipmentArg(args); err != nil {
				return err
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
	addTrustFlags(f, &opts.trust)
	addLabelFlag(f, &opts.trust)
	addTransportFlags(f, &opts.transport)
	addOutputFlags(f, &opts.output)
	commaList(f, "identity")
	return c
}

func runVerify(ctx context.Context, s *streams, opts *verifyOptions) error {
	if opts.readData {
		return usagef("--read-data goes with --all; to open every block of one shipment, give an identity (-i)")
	}
	if err := opts.trust.load(); err != nil {
		return err
	}
	ids, err := s.identities(opts.identities, opts.passphraseFile, false)
	if err != nil {
		return err
	}
	opts.transport.log = s.logf(opts.output)
	tr, err := openExistingDest(ctx, s, opts.dest, &opts.transport)
	if err != nil {
		return err
	}
	defer tr.Close()
	if len(ids) == 0 {
		return verifyKeyless(ctx, s, opts, tr)
	}
	id, sh, err := opts.trust.open(ctx, tr, opts.shipment, ids, s.warnf(opts.output.json))
	if err != nil {
		return err
	}
	cnt := new(shipper.Counters)
	rep := startProgress(s, "verify", opts.output, cnt, movedShipped)
	if err := sh.Verify(ctx, opts.transport.streams, opts.jobs, cnt); err != nil {
		rep.finish(false, nil, "")
		return fmt.Errorf("verify %s at %s: %w", id, tr, err)
	}
	auth := ""
	if ti := sh.Trust(); ti != nil {
		auth = "authenticated (signed by " + signedBy(ti) + "); "
	}
	rep.finish(true, addLinkStats(map[string]any{"shipment": id, "mode": "full", "files": len(sh.Manifest.Files), "bytes_total": cnt.Total.Load()},
		tr, cnt.Shipped.Load(), rep.start),
		fmt.Sprintf("%s: %severy block authentic, every file digest and segment checksum correct (%s)", id, auth, describeFiles(sh.Manifest.Files)))
	return nil
}

// verifyKeyless checks a shipment without its key: against its inventory
// and statement as they are at DEST, or, with trusted senders, against
// what its signature vouches for.
func verifyKeyless(ctx context.Context, s *streams, opts *verifyOptions, tr shipper.Transport) error {
	id, ti, err := opts.trust.pick(ctx, tr, opts.shipment, s.warnf(opts.output.json))
	if err != nil {
		return err
	}
	cnt := new(shipper.Counters)
	rep := startProgress(s, "verify", opts.output, cnt, movedShipped)
	var st *archive.Statement
	if ti != nil {
		err = ti.VerifyInventory(ctx, tr, opts.transport.streams, cnt)
	} else if err = shipper.VerifyInventory(ctx, tr, id, opts.transport.streams, cnt); err == nil {
		st, err = shipper.CheckStatement(ctx, tr, id)
	}
	if err != nil {
		rep.finish(false, nil, "")
		return fmt.Errorf("verify %s at %s: %w", id, tr, err)
	}
	sums := "BLAKE3 of the small objects, CRC32C of the segments"
	if h, err := shipper.ReadHeader(ctx, tr, id); err == nil && h.Format < archive.FormatV3 {
		sums = "BLAKE3 of every object"
	}
	var msg string
	switch {
	case ti != nil:
		msg = fmt.Sprintf("%s: authenticated (signed by %s): its header, inventory, key objects and manifest are what it signed, "+
			"its segments consistent with its inventory (%s); verify with -i to authenticate every block", id, signedBy(ti), sums)
	case st != nil:
		msg = fmt.Sprintf("%s: consistent with its inventory (%s) and its signed statement, not authenticated "+
			"(verify with --trusted-senders to check the signature, with -i to authenticate every block)", id, sums)
	default:
		msg = fmt.Sprintf("%s: consistent with its inventory (%s), not authenticated (verify with -i to authenticate every block)", id, sums)
	}
	rep.finish(true, addLinkStats(map[string]any{"shipment": id, "mode": "inventory", "bytes_checked": cnt.Shipped.Load()},
		tr, cnt.Shipped.Load(), rep.start), msg)
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
	if err := opts.trust.load(); err != nil {
		return err
	}
	opts.transport.log = s.logf(opts.output)
	tr, err := openExistingDest(ctx, s, opts.dest, &opts.transport)
	if err != nil {
		return err
	}
	defer tr.Close()
	cnt := new(shipper.Counters)
	rep := startProgress(s, "verify", opts.output, cnt, movedShipped)
	report := func(p shipper.Problem) {
		if opts.output.json {
			o := map[string]any{"type": "problem", "object": p.Object, "problem": p.Problem}
			if p.Shipment != "" {
				o["shipment"] = p.Shipment
			}
			s.emit(o)
			return
		}
		fmt.Fprintf(s.err, "coldship: problem: %s\n", p)
	}
	res, err := shipper.VerifyAll(ctx, tr, shipper.VerifyAllOptions{
		ReadData: opts.readData, Identities: ids, Streams: opts.transport.streams, Jobs: opts.jobs, Counters: cnt,
		Problem: report,
	})
	if err == nil && opts.trust.senders != nil {
		err = opts.trust.checkAll(ctx, tr, res, report)
	}
	if err != nil {
		rep.finish(false, nil, "")
		return fmt.Errorf("verify --all at %s: %w", tr, err)
	}
	mode := "inventory checks"
	if opts.readData {
		mode = "inventory checks and every block opened"
	}
	if opts.trust.senders != nil {
		mode += ", every signature checked"
	}
	if res.Shipments == 0 && len(res.Problems) == 0 {
		// A monitoring job must not pass on a mistyped DEST: an S3 prefix
		// (or an empty folder) that holds nothing is not a checked copy.
		rep.finish(false, nil, "")
		return fmt.Errorf("verify --all at %s: no shipment there, nothing was checked (an S3 prefix that does not exist looks empty: check DEST)", tr)
	}
	summary := addLinkStats(map[string]any{"mode": "all", "shipments": res.Shipments, "problems": len(res.Problems), "bytes_checked": cnt.Shipped.Load()},
		tr, cnt.Shipped.Load(), rep.start)
	if len(res.Problems) == 0 {
		rep.finish(true, summary, fmt.Sprintf("%s: %s, no problem (%s)", tr, plural(res.Shipments, "shipment", "shipments"), mode))
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
	return fmt.Errorf("verify --all at %s: %s in %s (listed above): %w", dest,
		plural(len(res.Problems), "problem", "problems"), plural(res.Shipments, "shipment", "shipments"), kind)
}
