package shipper

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/internal/atonce"
)

// PrunePolicy says which shipments to keep, with restic forget's rules:
// the KeepLast newest complete shipments; the newest of each of the last
// KeepDaily days, KeepWeekly ISO weeks, KeepMonthly months and KeepYearly
// years that have one (counted in Location); and every shipment within
// KeepWithin of the newest one. When fewer days (weeks, months, years)
// have a shipment than a rule asks for, the oldest shipment is kept too.
// A negative count (restic's -1) has no limit: every complete shipment,
// or the newest of every day (week, month, year).
type PrunePolicy struct {
	KeepLast, KeepDaily, KeepWeekly, KeepMonthly, KeepYearly int
	KeepWithin                                               Within
	Label                                                    string         // only shipments with this label are considered; "": every label, each a series apart
	Location                                                 *time.Location // days, weeks, months and years are counted in it; nil: local time
	// Trusted, when set, makes prune count only shipments whose signature
	// CheckSignature vouches for, and take the bases to keep only from
	// their checked inventories: a shipment that does not verify counts
	// for no rule and is left alone.
	Trusted *cipher.AllowedSigners
	// Now is the receiver's clock, for the trust checks and MaxClockSkew;
	// zero: time.Now().
	Now time.Time
}

// Within is a span of calendar time as restic writes it: 2y5m7d3h.
type Within struct {
	Years, Months, Days, Hours int
}

// IsZero reports whether w is no span at all.
func (w Within) IsZero() bool { return w == Within{} }

func (w Within) String() string {
	var b strings.Builder
	for _, p := range []struct {
		n    int
		unit string
	}{{w.Years, "y"}, {w.Months, "m"}, {w.Days, "d"}, {w.Hours, "h"}} {
		if p.n != 0 {
			fmt.Fprintf(&b, "%d%s", p.n, p.unit)
		}
	}
	if b.Len() == 0 {
		return "0h"
	}
	return b.String()
}

// Before returns the time w before t, in calendar terms.
func (w Within) Before(t time.Time) time.Time {
	return t.AddDate(-w.Years, -w.Months, -w.Days).Add(-time.Duration(w.Hours) * time.Hour)
}

var withinPart = regexp.MustCompile(`^(\d+)([ymdh])`)

// ParseWithin parses restic's form of a span: numbers of years, months,
// days and hours, each at most once, such as 2y5m7d3h, 30d or 36h.
func ParseWithin(s string) (Within, error) {
	var w Within
	seen := map[string]bool{}
	rest := s
	for rest != "" {
		m := withinPart.FindStringSubmatch(rest)
		if m == nil || seen[m[2]] {
			return Within{}, fmt.Errorf("invalid duration %q: want numbers of years, months, days and hours such as 2y5m7d3h, 30d or 36h", s)
		}
		seen[m[2]] = true
		n, err := strconv.Atoi(m[1])
		if err != nil || n > 1_000_000 {
			return Within{}, fmt.Errorf("invalid duration %q: %s is too large", s, m[1])
		}
		switch m[2] {
		case "y":
			w.Years = n
		case "m":
			w.Months = n
		case "d":
			w.Days = n
		case "h":
			w.Hours = n
		}
		rest = rest[len(m[0]):]
	}
	if s == "" {
		return Within{}, errors.New("invalid duration \"\": want such as 2y5m7d3h, 30d or 36h")
	}
	return w, nil
}

// keepsAny reports whether the policy keeps anything by itself.
func (p PrunePolicy) keepsAny() bool {
	return p.KeepLast != 0 || p.KeepDaily != 0 || p.KeepWeekly != 0 || p.KeepMonthly != 0 || p.KeepYearly != 0 || !p.KeepWithin.IsZero()
}

// bucketRule keeps the newest shipment of each of the last n buckets
// (days, weeks...) that have one; of every bucket when n is negative
// (restic's -1, unlimited).
type bucketRule struct {
	name   string
	n      int
	bucket func(time.Time) string
	seen   map[string]bool
}

func (p PrunePolicy) bucketRules() []*bucketRule {
	return []*bucketRule{
		{name: "daily", n: p.KeepDaily, bucket: func(t time.Time) string { return t.Format("2006-01-02") }},
		{name: "weekly", n: p.KeepWeekly, bucket: func(t time.Time) string {
			y, w := t.ISOWeek()
			return fmt.Sprintf("%d-W%02d", y, w)
		}},
		{name: "monthly", n: p.KeepMonthly, bucket: func(t time.Time) string { return t.Format("2006-01") }},
		{name: "yearly", n: p.KeepYearly, bucket: func(t time.Time) string { return t.Format("2006") }},
	}
}

// PruneDecision is what prune does with one shipment, and why.
type PruneDecision struct {
	ID       string    `json:"id"`
	Created  time.Time `json:"created"`
	Complete bool      `json:"complete"`
	Bytes    int64     `json:"bytes"`
	Label    string    `json:"label"` // its series (send --name), "" if none or unknown
	Delete   bool      `json:"delete"`
	Reasons  []string  `json:"reasons"`
	// Ignored says why prune counts the shipment for no rule and leaves
	// it alone (unless a kept shipment needs it as a base): its header
	// is missing or damaged, it is dated more than MaxClockSkew ahead, or it is
	// not from a trusted sender.
	Ignored string `json:"ignored,omitempty"`
	// OtherLabel is set when PrunePolicy.Label leaves the shipment out.
	OtherLabel bool `json:"-"`
}

// PlanPrune decides, without any key, which shipments at tr the policy
// deletes. A shipment is kept when the policy keeps it, when it is the
// base of (holds records used by) a kept shipment, or when it is
// incomplete and newer than the newest complete one (a send may be
// running; its base chain is kept too). Incomplete shipments older than
// the newest complete one are deleted: they are sends that failed and
// were not resumed. Shipments of another label are left alone, and so are
// the shipments prune does not count (see PruneDecision.Ignored): none of
// them takes the place of a counted one, and none is deleted or keeps
// another on its own word.
func PlanPrune(ctx context.Context, tr Transport, p PrunePolicy) (*PrunePlan, error) {
	if !p.keepsAny() {
		return nil, errors.New("prune: the policy keeps nothing")
	}
	ships, err := List(ctx, tr)
	if err != nil {
		return nil, err
	}
	pl, err := newPruner(ctx, tr, p, ships)
	if err != nil {
		return nil, err
	}
	pl.applyRules(p)
	if err := pl.keepBases(ctx, tr); err != nil {
		return nil, err
	}
	for i := range pl.dec {
		d := &pl.dec[i]
		if len(d.Reasons) > 0 {
			continue
		}
		d.Delete = true
		if d.Complete {
			d.Reasons = []string{"not kept by the policy, and no kept shipment's base"}
		} else {
			d.Reasons = []string{"incomplete, older than the newest complete shipment"}
		}
	}
	return &PrunePlan{Decisions: pl.dec, running: pl.mayBeRunning()}, nil
}

// mayBeRunning says whether an upload is into a shipment that a send may
// be writing (see mayBeRunning) or that prune leaves alone: one of
// another label (whose newest complete shipment prune does not know: that
// series' send may be running) or one it does not count.
func (pl *pruner) mayBeRunning() func(name string) bool {
	newer := mayBeRunning(pl.ships, pl.runningAfter)
	alone := map[string]bool{}
	for _, d := range pl.dec {
		if d.OtherLabel || d.Ignored != "" || !d.Complete && !d.Delete {
			alone[d.ID] = true
		}
	}
	return func(name string) bool {
		id, _, _ := strings.Cut(name, "/")
		return newer(name) || alone[id]
	}
}

// PrunePlan is what prune does at a destination.
type PrunePlan struct {
	Decisions []PruneDecision // one per shipment, oldest first
	running   func(name string) bool
}

// AbortLeftoverUploads aborts, as the function of that name does, the
// unfinished uploads at tr that earlier runs left (begun before
// startedBefore), but those into a shipment newer than the newest
// complete one it counts, listed or not yet: the plan keeps such a shipment because
// a send may be running, maybe on another host, whose lock this one does
// not see, and the uploads are that send's. Nor those into a shipment the
// plan leaves alone (of another label, or not counted).
func (p *PrunePlan) AbortLeftoverUploads(ctx context.Context, tr Transport, startedBefore time.Time, log func(string, ...any)) (int, error) {
	return abortUploads(ctx, tr, "", startedBefore, p.running, log)
}

// pruner is PlanPrune's work: the shipments, oldest first, and what
// is decided of each.
type pruner struct {
	ships []ShipmentInfo
	dec   []PruneDecision
	index map[string]int
	// counted marks the complete shipments the rules count; trust holds
	// their checked signatures (with trusted senders).
	counted []bool
	trust   []*TrustInfo
	// runningAfter is the oldest of the series' newest counted shipments
	// (-1: a series has none): an upload into a shipment not listed yet
	// and newer than it may be a running send's.
	runningAfter int
	trusted      *cipher.AllowedSigners
	now          time.Time
}

// newPruner decides which shipments count: complete, of the label,
// header readable, not dated ahead, and verified when there are trusted
// senders. The others (but those of another label) are marked ignored.
func newPruner(ctx context.Context, tr Transport, p PrunePolicy, ships []ShipmentInfo) (*pruner, error) {
	now := p.Now
	if now.IsZero() {
		now = time.Now()
	}
	pl := &pruner{ships: ships, dec: make([]PruneDecision, len(ships)), index: map[string]int{},
		counted: make([]bool, len(ships)), trust: make([]*TrustInfo, len(ships)),
		trusted: p.Trusted, now: now}
	// The signatures are checked checksAtOnce at a time (each is several
	// round trips on a long link); their outcomes are taken in order.
	type checked struct {
		ti  *TrustInfo
		err error
	}
	checks := make([]checked, len(ships))
	if p.Trusted != nil {
		atonce.Each(len(ships), checksAtOnce, func(i int) error {
			si := ships[i]
			if si.Complete && si.Error == "" && (p.Label == "" || si.Label == p.Label) && CheckNotFuture(si.ID, now) == nil {
				checks[i].ti, checks[i].err = CheckSignature(ctx, tr, si.ID, p.Trusted, now)
			}
			return nil
		})
	}
	for i, si := range ships {
		pl.index[si.ID] = i
		d := &pl.dec[i]
		*d = PruneDecision{ID: si.ID, Created: si.Created, Complete: si.Complete, Bytes: si.Bytes, Label: si.Label}
		switch {
		case si.Error != "":
			d.Ignored = "header unreadable"
		case p.Label != "" && si.Label != p.Label:
			d.Reasons, d.OtherLabel = []string{"another label"}, true
		case CheckNotFuture(si.ID, now) != nil:
			d.Ignored = CheckNotFuture(si.ID, now).Error()
		case si.Complete && p.Trusted != nil:
			ti, err := checks[i].ti, checks[i].err
			if errors.Is(err, ErrUntrusted) {
				d.Ignored = "not from a trusted sender: " + err.Error()
				break
			} else if err != nil {
				return nil, fmt.Errorf("prune: %w", err)
			}
			pl.trust[i], pl.counted[i] = ti, true
			d.Created = ti.Header.Created
		case si.Complete:
			pl.counted[i] = true
		}
		if d.Ignored != "" {
			d.Reasons = []string{d.Ignored + ": left alone, counted for no rule"}
		}
	}
	return pl, nil
}

// applyRules keeps what the policy's rules keep of the counted shipments,
// and the incomplete shipments newer than the newest counted one, in each
// series apart: without a label to prune, every label is a series of its
// own (the unlabelled shipments one more), as restic's forget groups
// snapshots by host and paths. Counted together, the newest shipments of
// one VM would take every --keep-last place from another VM sharing the
// destination and its only shipment would be deleted.
func (pl *pruner) applyRules(p PrunePolicy) {
	newest, runningAfter := seriesNewest(pl.ships,
		func(i int) bool { return len(pl.dec[i].Reasons) == 0 }, // not of another label, not ignored
		func(i int) bool { return pl.counted[i] })
	pl.runningAfter = runningAfter
	for label, n := range newest { // each series touches only its own shipments
		pl.applySeriesRules(p, label, n)
	}
}

// applySeriesRules applies the policy to the shipments of one label,
// whose newest counted shipment is newest (-1: none).
func (pl *pruner) applySeriesRules(p PrunePolicy, label string, newest int) {
	oldest := -1
	for i := range pl.ships {
		if pl.counted[i] && pl.ships[i].Label == label {
			oldest = i
			break
		}
	}
	loc := p.Location
	if loc == nil {
		loc = time.Local
	}
	keep := func(i int, why string) { pl.dec[i].Reasons = append(pl.dec[i].Reasons, why) }
	rules := p.bucketRules()
	for _, r := range rules {
		r.seen = map[string]bool{}
	}
	var withinSince time.Time
	if newest >= 0 && !p.KeepWithin.IsZero() {
		withinSince = p.KeepWithin.Before(pl.dec[newest].Created)
	}
	last := 0
	for i := len(pl.ships) - 1; i >= 0; i-- {
		d := &pl.dec[i]
		switch {
		case pl.ships[i].Label != label || len(d.Reasons) > 0: // another series, another label, or ignored
			continue
		case !d.Complete && i > newest:
			keep(i, "incomplete and newer than the newest complete shipment: a send may be running")
			continue
		case !pl.counted[i]:
			continue
		}
		if p.KeepLast < 0 || last < p.KeepLast {
			last++
			keep(i, fmt.Sprintf("last %d", last))
		}
		t := d.Created.In(loc)
		for _, r := range rules {
			if b := r.bucket(t); !r.seen[b] && (r.n < 0 || len(r.seen) < r.n) {
				r.seen[b] = true
				keep(i, r.name+" "+b)
			}
		}
		if !withinSince.IsZero() && d.Created.After(withinSince) {
			keep(i, "within "+p.KeepWithin.String()+" of the newest")
		}
	}
	// As restic does: when fewer buckets have a shipment than a rule asks
	// for, the oldest shipment is kept as well.
	for _, r := range rules {
		if oldest >= 0 && r.n > 0 && len(r.seen) < r.n {
			keep(oldest, fmt.Sprintf("oldest (%s %d: only %d have a shipment)", r.name, r.n, len(r.seen)))
		}
	}
}

// keepBases keeps the bases of everything kept, transitively. A counted
// shipment's inventory lists every shipment whose records it uses (with
// trusted senders: the inventory its signature vouches for); a send in
// progress may use any shipment its base uses. A shipment prune does not
// count keeps nothing.
func (pl *pruner) keepBases(ctx context.Context, tr Transport) error {
	var queue []int
	for i := range pl.dec {
		if len(pl.dec[i].Reasons) > 0 {
			queue = append(queue, i)
		}
	}
	// A round reads what every shipment of the queue needs at once
	// (checksAtOnce at a time): an inventory lists all the shipments whose
	// records it uses, so one round or two is the rule.
	for len(queue) > 0 {
		bases := make([][]string, len(queue))
		err := atonce.Each(len(queue), checksAtOnce, func(k int) error {
			var err error
			bases[k], err = pl.basesOf(ctx, tr, queue[k])
			return err
		})
		if err != nil {
			return err
		}
		var next []int
		for k, i := range queue {
			for _, b := range bases[k] {
				j, ok := pl.index[b]
				if !ok {
					continue // already gone: nothing to protect
				}
				if len(pl.dec[j].Reasons) == 0 {
					next = append(next, j)
				}
				why := "base of " + pl.ships[i].ID
				if !hasReason(pl.dec[j].Reasons, why) {
					pl.dec[j].Reasons = append(pl.dec[j].Reasons, why)
				}
			}
		}
		queue = next
	}
	return nil
}

// checksAtOnce is how many shipments prune reads at once.
const checksAtOnce = 8

// basesOf returns the shipments kept shipment i needs.
func (pl *pruner) basesOf(ctx context.Context, tr Transport, i int) ([]string, error) {
	si := pl.ships[i]
	ti := pl.trust[i]
	switch {
	case ti != nil:
		return ti.Inventory.BaseIDs(), nil
	case pl.dec[i].Ignored != "" || si.Base == "":
		return nil, nil
	case !si.Complete:
		return []string{si.Base}, nil
	case pl.trusted != nil: // of another label: only on the word of its signature
		ti, err := CheckSignature(ctx, tr, si.ID, pl.trusted, pl.now)
		if errors.Is(err, ErrUntrusted) {
			return nil, nil
		} else if err != nil {
			return nil, fmt.Errorf("prune: %w", err)
		}
		return ti.Inventory.BaseIDs(), nil
	}
	ib, err := getObject(ctx, tr, si.ID+"/"+archive.InventoryObject, 1<<30)
	if err != nil {
		// Missing from a complete shipment is damage, as verify and
		// receive report it (exit 5), not "no such shipment".
		return nil, fmt.Errorf("prune: cannot tell which shipments %s needs: %w", si.ID, missingIsIntegrity(err))
	}
	inv, err := archive.ParseInventory(ib)
	if err != nil {
		return nil, fmt.Errorf("prune: cannot tell which shipments %s needs: %w", si.ID, err)
	}
	return inv.BaseIDs(), nil
}

func hasReason(rs []string, r string) bool {
	for _, x := range rs {
		if x == r {
			return true
		}
	}
	return false
}

// DeleteShipment removes every object of shipment id: the manifest first,
// so that a deletion cut short leaves an incomplete shipment (which
// receive refuses and the next prune removes), never a complete one with
// objects missing; the header last, so that list shows it until the end.
func DeleteShipment(ctx context.Context, tr Transport, id string) error {
	if !archive.ValidID(id) {
		return fmt.Errorf("%q is not a shipment id", id)
	}
	if tc, ok := tr.(TemporaryRemover); ok {
		tc.RemoveTemporaries(ctx, id)
	}
	// The caller holds the destination's lock: no upload under id is a
	// running send's.
	if _, err := AbortLeftoverUploads(ctx, tr, id+"/", time.Now().Add(time.Hour), nil); err != nil {
		return err
	}
	var names []string
	err := tr.List(ctx, id+"/", func(oi ObjectInfo) error {
		names = append(names, oi.Name)
		return nil
	})
	if err != nil {
		return fmt.Errorf("list %s: %w", id, err)
	}
	rank := func(name string) int {
		switch strings.TrimPrefix(name, id+"/") {
		case archive.ManifestObject:
			return 0
		case archive.InventoryObject:
			return 1
		case archive.HeaderObject:
			return 3
		}
		return 2
	}
	sort.Slice(names, func(i, j int) bool {
		if ri, rj := rank(names[i]), rank(names[j]); ri != rj {
			return ri < rj
		}
		return names[i] < names[j]
	})
	// The manifest and the inventory go first, one after the other, so that
	// what is left is never taken for complete; the header goes last. The
	// rest (segments and keys: 32,768 segments in a shipment of 2 TiB, each
	// delete a round trip or two) go deletesAtOnce at a time.
	var last []string
	for len(names) > 0 && rank(names[0]) < 2 {
		if err := deleteObject(ctx, tr, names[0]); err != nil {
			return err
		}
		names = names[1:]
	}
	for len(names) > 0 && rank(names[len(names)-1]) > 2 {
		last, names = append(last, names[len(names)-1]), names[:len(names)-1]
	}
	if err := atonce.Each(len(names), deletesAtOnce, func(i int) error { return deleteObject(ctx, tr, names[i]) }); err != nil {
		return err
	}
	for _, name := range last {
		if err := deleteObject(ctx, tr, name); err != nil {
			return err
		}
	}
	return nil
}

// deletesAtOnce is how many objects of a shipment DeleteShipment deletes
// at once.
const deletesAtOnce = 64

func deleteObject(ctx context.Context, tr Transport, name string) error {
	if err := tr.Delete(ctx, name); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}
