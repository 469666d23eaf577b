package main

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/coldship/coldship/shipper"
)

type listOptions struct {
	dest      string
	json      bool
	transport transportOptions
}

func newListCmd(s *streams) *cobra.Command {
	opts := &listOptions{}
	c := &cobra.Command{
		Use:   "list DEST [--json]",
		Short: "List the shipments at DEST",
		Long: `One line per shipment: id, creation time, label, bytes stored, state
(complete, incomplete, or unreadable when its header cannot be read) and
base. No key is needed; file names stay sealed.

On a terminal: a header, aligned columns and sizes in KiB, MiB, GiB.
Otherwise: tab-separated columns without a header, sizes in bytes, for
scripts. Either way "-" stands for an empty value, and a value holding a
space, tab, newline, quote or backslash is printed double-quoted with
escapes, so that columns never break. --json prints one JSON object per
shipment instead.

A DEST that does not exist (a missing directory or bucket) is an error
(exit 1), not an empty list.`,
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
	addTransportFlags(c.Flags(), &opts.transport)
	return c
}

func runList(ctx context.Context, s *streams, opts *listOptions) error {
	tr, err := openExistingDest(ctx, s, opts.dest, &opts.transport)
	if err != nil {
		return err
	}
	defer tr.Close()
	ships, err := shipper.List(ctx, tr)
	if err != nil {
		return err
	}
	if opts.json {
		for _, si := range ships {
			if err := s.emit(si); err != nil {
				return err
			}
		}
		return nil
	}
	t := newTable(s, "ID", "CREATED", "LABEL", "SIZE", "STATE", "BASE")
	for _, si := range ships {
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
		t.row(si.ID, created, si.Label, t.size(si.Bytes), state, si.Base)
	}
	return t.flush()
}
