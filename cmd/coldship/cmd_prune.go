package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/coldship/coldship/shipper"
)

type pruneOptions struct {
	dest        string
	keepLast    int
	keepDaily   int
	keepWeekly  int
	keepMonthly int
	keepYearly  int
	keepWithin  string
	label       string
	dryRun      bool
	json        bool
	quiet       bool
	stateDir    string
	trust       trustOptions
	transport   transportOptions
	run         runOptions
}

func newPruneCmd(s *streams) *cobra.Command {
	opts := &pruneOptions{}
	c := &cobra.Command{
		// Any one rule is enough: the usage line says so rather than
		// showing one of them as required.
		Use: "prune DEST (--keep-last N | --keep-daily N | --keep-weekly N | --keep-monthly N | --keep-yearly N | --keep-within SPAN)... " +
			"[--name LABEL] [--trusted-senders FILE] [--dry-run]",
		Short: "Delete the shipments at DEST that are no longer wanted",
		Long: `Keep what any of the rules given keeps (give at least one; any one is
enough), as restic's forget does: the N newest complete shipments
(--keep-last); the newest of each of the last N days (--keep-daily), ISO
weeks (--keep-weekly), months (--keep-monthly) and years (--keep-yearly)
that have one, in local time (when fewer have one than asked, the oldest
shipment is kept too; -1 for N: every one, with no limit, as in restic); every shipment created within SPAN of the newest one
(--keep-within, such as 2y5m7d3h, 30d or 36h: years, months, days, hours).
Also kept: every shipment that a kept one uses as a base (an incremental
shipment needs its bases to be restored), and incomplete shipments newer than
the newest complete one (a send may be running). Deleted: the rest,
incomplete shipments older than the newest complete one included. No key is
needed.

Left alone and counted for no rule (so that none takes the place of a
shipment you want kept, or is deleted on its own word): shipments whose
header is missing or damaged, shipments dated more than 24 hours ahead of this
machine's clock, and, with --trusted-senders FILE (an OpenSSH
allowed_signers file), every shipment that is not signed by a key of FILE
or does not match what it signed; with it, the bases to keep are taken only
from what a signature vouches for. Each one is named in a warning, even
with --quiet: remove what is not yours by hand.

Each label is a series of its own: without --name, the rules apply to
each label's shipments apart (the unlabelled ones are one more series).
--name LABEL considers only the shipments of that label (one series among
several at DEST). --dry-run deletes nothing.

stdout: the ids deleted (or that would be), one per line. stderr: every
shipment, keep or delete, with every rule that keeps it; --json: one JSON
object per shipment on stdout (with its "reasons") and a summary instead.`,
		Example: `  coldship prune s3://dr-bucket/web01 --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --dry-run
  coldship prune /mnt/backup --name web01 --keep-last 3 --keep-within 30d
  coldship prune sftp://backup@dr.example.com/srv/coldship/web01 --keep-yearly 5 --keep-monthly 12 --json`,
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
	f.IntVar(&opts.keepMonthly, "keep-monthly", 0, "keep the newest shipment of each of the last `N` months that have one")
	f.IntVar(&opts.keepYearly, "keep-yearly", 0, "keep the newest shipment of each of the last `N` years that have one")
	f.StringVar(&opts.keepWithin, "keep-within", "", "keep every shipment created within `SPAN` of the newest one (such as 2y5m7d3h, 30d, 36h)")
	f.StringVar(&opts.label, "name", "", "consider only the shipments with this `LABEL`")
	f.BoolVarP(&opts.dryRun, "dry-run", "n", false, "show what would be deleted; delete nothing")
	f.StringVar(&opts.stateDir, "state-dir", defaultStateDir(), "where the lock of DEST is kept")
	addTrustFlags(f, &opts.trust)
	addTransportFlags(f, &opts.transport)
	f.DurationVar(&opts.run.lockWait, "lock-wait", 0, "wait up to `DURATION` for another run on the same destination to finish (default: exit at once)")
	f.BoolVar(&opts.json, "json", false, "one JSON object per shipment, then a summary, on stdout (and nothing else there)")
	f.BoolVarP(&opts.quiet, "quiet", "q", false, "print only errors (and the deleted ids on stdout)")
	return c
}

func runPrune(ctx context.Context, s *streams, opts *pruneOptions) error {
	policy, err := prunePolicy(opts)
	if err != nil {
		return err
	}
	if err := checkDest(opts.dest); err != nil {
		return err
	}
	if err := opts.trust.load(); err != nil {
		return err
	}
	policy.Trusted = opts.trust.senders
	start := time.Now()
	if err := opts.run.check(); err != nil {
		return err
	}
	lock, err := opts.run.lockDest(ctx, opts.stateDir, opts.dest)
	if err != nil {
		return err
	}
	defer lock.Release()
	opts.transport.log = s.logf(outputOptions{json: opts.json, quiet: opts.quiet})
	tr, err := openExistingDest(ctx, s, opts.dest, &opts.transport)
	if err != nil {
		return err
	}
	defer tr.Close()
	plan, err := shipper.PlanPrune(ctx, tr, policy)
	if err != nil {
		return err
	}
	logf := s.logf(outputOptions{json: opts.json, quiet: opts.quiet})
	if opts.label != "" && !slices.ContainsFunc(plan.Decisions, func(d shipper.PruneDecision) bool { return !d.OtherLabel }) {
		// Nothing to delete is no error, but a mistyped label should
		// not pass for a series with nothing to prune.
		logf("no shipment at %s has the label %q", tr, opts.label)
	}
	if !opts.dryRun {
		// Uploads of killed or failed sends (S3 multipart uploads) cost
		// storage though no shipment lists them; with the lock held, those
		// begun before this run are no running send's of this host, and
		// the plan leaves alone those a send of another host may be making.
		if _, err := plan.AbortLeftoverUploads(ctx, tr, start, logf); err != nil {
			logf("warning: %v", err)
		}
	}
	return carryOutPrune(ctx, s, opts, tr, plan.Decisions, start)
}

// prunePolicy checks the --keep-* flags and returns the policy they give.
func prunePolicy(opts *pruneOptions) (shipper.PrunePolicy, error) {
	policy := shipper.PrunePolicy{KeepLast: opts.keepLast, KeepDaily: opts.keepDaily, KeepWeekly: opts.keepWeekly,
		KeepMonthly: opts.keepMonthly, KeepYearly: opts.keepYearly, Label: opts.label}
	if min(opts.keepLast, opts.keepDaily, opts.keepWeekly, opts.keepMonthly, opts.keepYearly) < -1 {
		return policy, usagef("prune: each --keep-* takes a number of shipments, 0 or more, or -1 for all of them (as restic's forget)")
	}
	if opts.keepWithin != "" {
		w, err := shipper.ParseWithin(opts.keepWithin)
		if err != nil {
			return policy, usagef("--keep-within: %v", err)
		}
		policy.KeepWithin = w
	}
	if !slices.ContainsFunc([]int{opts.keepLast, opts.keepDaily, opts.keepWeekly, opts.keepMonthly, opts.keepYearly},
		func(n int) bool { return n != 0 }) && policy.KeepWithin.IsZero() {
		if opts.keepWithin != "" {
			return policy, usagef("--keep-within %s keeps nothing: give a span such as 7d (prune never deletes everything)", opts.keepWithin)
		}
		return policy, usagef("prune: give at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within (prune never deletes everything)")
	}
	return policy, nil
}

// carryOutPrune deletes (or, with --dry-run, names) the shipments plan
// deletes, showing each decision, and reports the totals.
func carryOutPrune(ctx context.Context, s *streams, opts *pruneOptions, tr shipper.Transport, plan []shipper.PruneDecision, start time.Time) error {
	verb := "delete"
	if opts.dryRun {
		verb = "would delete"
	}
	var w *tabwriter.Writer
	if !opts.json && !opts.quiet {
		w = tabwriter.NewWriter(s.err, 0, 4, 2, ' ', 0)
		defer w.Flush()
	}
	var n, ignored int
	var freed int64
	for _, d := range plan {
		what := "keep"
		switch {
		case d.Delete:
			what = verb
		case d.Ignored != "" && len(d.Reasons) == 1:
			what = "ignore"
		}
		if d.Ignored != "" {
			ignored++
			if w == nil {
				s.warnf(opts.json)("left alone, counted for no rule: %s: %s", d.ID, d.Ignored)
			}
		}
		if w != nil {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s%s\n", what, d.ID, humanBytes(d.Bytes), seriesOf(d, opts.label), strings.Join(d.Reasons, "; "))
		}
		if !d.Delete {
			continue
		}
		if !opts.dryRun {
			if err := shipper.DeleteShipment(ctx, tr, d.ID); err != nil {
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
	return reportPrune(s, opts, tr, plan, n, ignored, freed, start)
}

// reportPrune writes prune's summary: a sentence on stderr, or the
// decisions and a summary object with --json.
func reportPrune(s *streams, opts *pruneOptions, tr shipper.Transport, plan []shipper.PruneDecision, n, ignored int, freed int64, start time.Time) error {
	if ignored > 0 {
		s.warnf(opts.json)("%s at %s left alone and counted for no rule (named above): remove those that are not yours by hand",
			plural(ignored, "shipment", "shipments"), tr)
	}
	if opts.json {
		for _, d := range plan {
			if err := s.emit(d); err != nil {
				return err
			}
		}
		return s.emit(map[string]any{"type": "summary", "op": "prune", "dry_run": opts.dryRun, "shipments": len(plan),
			"deleted": n, "ignored": ignored, "bytes_freed": freed, "duration_s": time.Since(start).Seconds()})
	}
	if !opts.quiet {
		verb := "deleted"
		if opts.dryRun {
			verb = "would delete"
		}
		fmt.Fprintf(s.err, "coldship: %s %s (%s) of %d at %s\n", verb, plural(n, "shipment", "shipments"), humanBytes(freed), len(plan), tr)
	}
	return nil
}

// seriesOf begins a decision's reasons with its series when prune was not
// given one (--name): "web01: last 1"; a label that holds a space, tab,
// newline or quote is quoted as list quotes it, so a decision stays one line.
func seriesOf(d shipper.PruneDecision, label string) string {
	if label != "" || d.Label == "" {
		return ""
	}
	return cell(d.Label) + ": "
}
