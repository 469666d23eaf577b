package main

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"
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
		Long: `One line per shipment: id, creation time, label, bytes stored, and whether it
is complete. No key is needed; file names stay sealed. --json prints one JSON
object per line instead.` + "\n" + exitStatusHelp,
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
	tr, err := openDest(ctx, s, opts.dest, &opts.transport)
	if err != nil {
		return err
	}
	defer tr.Close()
	ships, err := shipper.List(ctx, tr)
	if err != nil {
		return err
	}
	if opts.json {
		enc := json.NewEncoder(s.out)
		for _, si := range ships {
			if err := enc.Encode(si); err != nil {
				return err
			}
		}
		return nil
	}
	w := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
	for _, si := range ships {
		state := "complete"
		if !si.Complete {
			state = "incomplete"
		}
		created, label := "-", si.Label
		if !si.Created.IsZero() {
			created = si.Created.UTC().Format(time.RFC3339)
		}
		if label == "" {
			label = "-"
		}
		if si.Error != "" {
			state += " (unreadable header)"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\n", si.ID, created, label, si.Bytes, state)
	}
	return w.Flush()
}
