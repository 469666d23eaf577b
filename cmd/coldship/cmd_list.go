package main

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/internal/atonce"
	"github.com/coldship/coldship/shipper"
)

type listOptions struct {
	dest      string
	json      bool
	trust     trustOptions
	transport transportOptions
}

func newListCmd(s *streams) *cobra.Command {
	opts := &listOptions{}
	c := &cobra.Command{
		Use:   "list DEST [--trusted-senders FILE] [--name LABEL] [--json]",
		Short: "List the shipments at DEST",
		Long: `One line per shipment: id, creation time, label, bytes stored, state
(complete, incomplete, or unreadable when its header is missing or damaged) and
base. No key is needed; file names stay sealed.

With --trusted-senders FILE (an OpenSSH allowed_signers file) a SIGNER
column follows: the principal of the trusted key that signed the shipment,
or unsigned, untrusted (signed by a key FILE does not trust), bad signature
or tampered (its objects are not those it signed); "-" for an incomplete
shipment. --name LABEL lists only the shipments of that label (send --name):
one series among several at DEST.

On a terminal: a header, aligned columns and sizes in KiB, MiB, GiB.
Otherwise: tab-separated columns without a header, sizes in bytes, for
scripts. Either way "-" stands for an empty value, and a label or signer
holding a space, tab, newline, quote or backslash is printed double-quoted
with escapes, so that columns never break. Tab-separated output quotes any
such value (so "bad signature"); a terminal shows what coldship writes
itself (sizes, times, states) as it is. --json prints one JSON object per
shipment instead, with the chain and previous shipment of a signed one
(checked with --trusted-senders; as its statement says, unchecked,
without).

A DEST that does not exist (a missing directory or bucket) is an error
(exit 1), not an empty list. A DEST that holds no shipment prints nothing
on stdout (with --json too) and says so on stderr; it exits 0.`,
		Example: `  coldship list s3://dr-bucket/web01
  coldship list /mnt/backup/web01 | cut -f1,5
  coldship list sftp://backup@dr.example.com/srv/coldship --json | jq -r 'select(.complete) | .id'`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			opts.dest = args[0]
			return runList(c.Context(), s, opts)
		},
	}
	c.Flags().BoolVar(&opts.json, "json", false, "one JSON object per shipment on stdout")
	addTrustFlags(c.Flags(), &opts.trust)
	c.Flags().StringVar(&opts.trust.label, "name", "", "list only the shipments of this `LABEL` (send --name)")
	addTransportFlags(c.Flags(), &opts.transport)
	return c
}

// listedShipment is a line of list: the shipment and, when it is signed,
// who signed it and where it stands in its chain.
type listedShipment struct {
	shipper.ShipmentInfo
	Signer   string `json:"signer,omitempty"`
	Trust    string `json:"trust,omitempty"`
	Chain    string `json:"chain,omitempty"`
	Previous string `json:"previous,omitempty"`
}

func runList(ctx context.Context, s *streams, opts *listOptions) error {
	if err := opts.trust.load(); err != nil {
		return err
	}
	opts.transport.log = s.logf(outputOptions{json: opts.json})
	tr, err := openExistingDest(ctx, s, opts.dest, &opts.transport)
	if err != nil {
		return err
	}
	defer tr.Close()
	ships, err := shipper.List(ctx, tr)
	if err != nil {
		return err
	}
	if l := opts.trust.label; l != "" {
		ships = slices.DeleteFunc(ships, func(si shipper.ShipmentInfo) bool { return si.Label != l })
	}
	if len(ships) == 0 {
		// stdout stays empty for scripts, with --json too (a script
		// reading ids meets nothing else there); a person is told why.
		if opts.trust.label != "" {
			s.logf(outputOptions{})("no shipment labelled %q at %s", opts.trust.label, tr)
		} else {
			s.logf(outputOptions{})("no shipment at %s", tr)
		}
		return nil
	}
	// Each shipment's statement is read (with trusted senders, its
	// signature checked) describeAtOnce at a time: round trips each.
	listed := make([]listedShipment, len(ships))
	now := time.Now()
	err = atonce.Each(len(ships), describeAtOnce, func(i int) error {
		var err error
		listed[i], err = opts.trust.describe(ctx, tr, ships[i], now)
		return err
	})
	if err != nil {
		return err
	}
	if opts.json {
		for _, ls := range listed {
			if err := s.emit(ls); err != nil {
				return err
			}
		}
		return nil
	}
	cols := []string{"ID", "CREATED", "LABEL", "SIZE", "STATE", "BASE"}
	if opts.trust.senders != nil {
		cols = append(cols, "SIGNER")
	}
	t := newTable(s, cols...)
	for _, ls := range listed {
		si := ls.ShipmentInfo
		state := "complete"
		if !si.Complete {
			state = "incomplete"
		}
		if si.Error != "" {
			state = "unreadable" // its header: see --json's error
		}
		created := ""
		if !si.Created.IsZero() {
			created = si.Created.UTC().Format(time.RFC3339)
		}
		row := []field{text(si.ID), own(created), text(si.Label), t.size(si.Bytes), own(state), text(si.Base)}
		switch {
		case opts.trust.senders == nil:
		case ls.Signer != "":
			row = append(row, text(ls.Signer))
		default:
			row = append(row, own(ls.Trust))
		}
		t.row(row...)
	}
	return t.flush()
}

// describeAtOnce is how many shipments list describes at once.
const describeAtOnce = 8

// describe adds to a listed shipment what its statement says: with
// trusted senders, only once its signature checked out (else why not);
// without, as it is at DEST, unchecked.
func (o *trustOptions) describe(ctx context.Context, tr shipper.Transport, si shipper.ShipmentInfo, now time.Time) (listedShipment, error) {
	ls := listedShipment{ShipmentInfo: si}
	if !si.Complete {
		return ls, nil
	}
	var st *archive.Statement
	if o.senders == nil {
		st, _ = shipper.ReadStatement(ctx, tr, si.ID) // a statement that does not parse shows nothing
	} else {
		ti, err := shipper.CheckSignature(ctx, tr, si.ID, o.senders, now)
		if err != nil && !errors.Is(err, shipper.ErrUntrusted) {
			return ls, err
		}
		ls.Trust = trustWord(err)
		if ti != nil {
			st, ls.Signer = ti.Statement, ti.Signer.Principal()
		}
	}
	if st != nil {
		ls.Chain, ls.Previous = st.Chain, st.Previous
	}
	return ls, nil
}

// trustWord names the outcome of a signature check: trusted, unsigned,
// untrusted, bad signature or tampered.
func trustWord(err error) string {
	switch {
	case err == nil:
		return "trusted"
	case errors.Is(err, cipher.ErrUnsigned):
		return "unsigned"
	case errors.Is(err, cipher.ErrUntrustedSigner):
		return "untrusted"
	case errors.Is(err, cipher.ErrBadSignature):
		return "bad signature"
	}
	return "tampered" // shipper.ErrStatementMismatch
}
