package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/coldship/coldship/shipper"
)

type pruneOptions struct {
	dest       string
	keepLast   int
	keepDaily  int
	keepWeekly int
	label      string
	dryRun     bool
	json       bool
	quiet      bool
	stateDir   string
	transport  transportOptions
	run        runOptions
}

func newPruneCmd(s *streams) *cobra.Command {
	opts := &pruneOptions{}
	c := &cobra.Command{
		Use:   "prune DEST --keep-last N [--keep-daily N] [--keep-weekly N] [--dry-run]",
		Short: "Delete the shipments at DEST that are no longer wanted",
		Long: `Keep the N newest complete shipments (--keep-last), the newest of each of the
last N days (--keep-daily) and of the last N ISO weeks (--keep-weekly) that
have one, every shipment that a kept one uses as a base (an incremental
shipment needs its bases to be restored), and incomplete shipments newer than
the newest complete one (a send may be running); delete the rest, incomplete
shipments older than the newest complete one included. No key is needed.

--name LABEL considers only the shipments of that label (one series among
several at DEST). --dry-run deletes nothing.

stdout: the ids deleted (or that would be), one per line. stderr: every
shipment with what is done with it and why; --json: one JSON object per
shipment on stdout instead.` + "\n" + exitStatusHelp,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			opts.dest = args[0]
			return runPrune(c.Context(), s, opts)
		},
	}
	f := c.Flags()
	f.IntVar(&opts.keepLast, "keep-last", 0, "keep the `N` newest complete shipments")
	f.IntVar(&opts.keepDaily, "keep-daily", 0, "keep the newest shipment of each of the last `N` days that have one")
	f.IntVar(&opts.keepWeekly, "keep-weekly", 0, "keep the newest shipment of each of the last `N` ISO weeks that have one")
	f.StringVar(&opts.label, "name", "", "consider only the shipments with this `LABEL`")
	f.BoolVarP(&opts.dryRun, "dry-run", "n", false, "show what would be deleted; delete nothing")
	f.StringVar(&opts.stateDir, "state-dir", defaultStateDir(), "where the lock of DEST is kept")
	addTransportFlags(f, &opts.transport)
	f.DurationVar(&opts.run.lockWait, "lock-wait", 0, "wait up to `DURATION` for another run on the same destination to finish (default: exit at once)")
	f.BoolVar(&opts.json, "json", false, "one JSON object per shipment on stdout")
	f.BoolVarP(&opts.quiet, "quiet", "q", false, "print only errors (and the deleted ids on stdout)")
	return c
}

func runPrune(ctx context.Context, s *streams, opts *pruneOptions) error {
	if opts.keepLast < 0 || opts.keepDaily < 0 || opts.keepWeekly < 0 {
		return usagef("prune: --keep-* must not be negative")
	}
	if opts.keepLast+opts.keepDaily+opts.keepWeekly == 0 {
		return usagef("prune: give --keep-last, --keep-daily or --keep-weekly (prune never deletes everything)")
	}
	if err := opts.run.check(); err != nil {
		return err
	}
	lock, err := opts.run.lockDest(ctx, opts.stateDir, opts.dest)
	if err != nil {
		return err
	}
	defer lock.Release()
	tr, err := openDest(ctx, s, opts.dest, &opts.transport)
	if err != nil {
		return err
	}
	defer tr.Close()
	plan, err := shipper.PlanPrune(ctx, tr, shipper.PrunePolicy{
		KeepLast: opts.keepLast, KeepDaily: opts.keepDaily, KeepWeekly: opts.keepWeekly, Label: opts.label,
	})
	if err != nil {
		return err
	}

	verb := "delete"
	if opts.dryRun {
		verb = "would delete"
	}
	var w *tabwriter.Writer
	if !opts.json && !opts.quiet {
		w = tabwriter.NewWriter(s.err, 0, 4, 2, ' ', 0)
	}
	var n int
	var freed int64
	for _, d := range plan {
		what := "keep"
		if d.Delete {
			what = verb
		}
		if w != nil {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", what, d.ID, humanBytes(d.Bytes), strings.Join(d.Reasons, "; "))
		}
		if !d.Delete {
			continue
		}
		if !opts.dryRun {
			if err := shipper.DeleteShipment(ctx, tr, d.ID); err != nil {
				if w != nil {
					w.Flush()
				}
				return fmt.Errorf("prune %s: %w", tr, err)
			}
		}
		n++
		freed += d.Bytes
		if !opts.json {
			fmt.Fprintln(s.out, d.ID)
		}
	}
	if w != nil {
		w.Flush()
	}
	if opts.json {
		enc := json.NewEncoder(s.out)
		for _, d := range plan {
			if err := enc.Encode(d); err != nil {
				return err
			}
		}
		return nil
	}
	if !opts.quiet {
		if opts.dryRun {
			fmt.Fprintf(s.err, "coldship: would delete %d shipments (%s) of %d at %s\n", n, humanBytes(freed), len(plan), tr)
		} else {
			fmt.Fprintf(s.err, "coldship: deleted %d shipments (%s) of %d at %s\n", n, humanBytes(freed), len(plan), tr)
		}
	}
	return nil
}
