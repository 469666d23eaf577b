package shipper

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/coldship/coldship/archive"
)

// PrunePolicy says which shipments to keep, as restic's forget does: the
// KeepLast newest complete shipments, the newest of each of the last
// KeepDaily days and of the last KeepWeekly ISO weeks that have one.
type PrunePolicy struct {
	KeepLast, KeepDaily, KeepWeekly int
	Label                           string         // only shipments with this label are considered; "" all
	Location                        *time.Location // days and weeks are counted in it; nil: local time
}

// PruneDecision is what prune does with one shipment, and why.
type PruneDecision struct {
	ID       string    `json:"id"`
	Created  time.Time `json:"created"`
	Complete bool      `json:"complete"`
	Bytes    int64     `json:"bytes"`
	Delete   bool      `json:"delete"`
	Reasons  []string  `json:"reasons"`
}

// PlanPrune decides, without any key, which shipments at tr the policy
// deletes. A shipment is kept when the policy keeps it, when it is the
// base of (holds records used by) a kept shipment, or when it is
// incomplete and newer than the newest complete one (a send may be
// running; its base chain is kept too). Incomplete shipments older than
// the newest complete one are deleted: they are sends that failed and
// were not resumed. Shipments of another label, or whose header cannot be
// read, are left alone. Decisions are returned oldest first.
func PlanPrune(ctx context.Context, tr Transport, p PrunePolicy) ([]PruneDecision, error) {
	if p.KeepLast <= 0 && p.KeepDaily <= 0 && p.KeepWeekly <= 0 {
		return nil, errors.New("prune: the policy keeps nothing")
	}
	loc := p.Location
	if loc == nil {
		loc = time.Local
	}
	ships, err := List(ctx, tr)
	if err != nil {
		return nil, err
	}
	dec := make([]PruneDecision, len(ships))
	index := map[string]int{}
	newestComplete := -1
	for i, si := range ships {
		index[si.ID] = i
		dec[i] = PruneDecision{ID: si.ID, Created: si.Created, Complete: si.Complete, Bytes: si.Bytes}
		if si.Complete && si.Error == "" && (p.Label == "" || si.Label == p.Label) {
			newestComplete = i
		}
	}
	keep := func(i int, why string) { dec[i].Reasons = append(dec[i].Reasons, why) }
	days, weeks, last := map[string]bool{}, map[string]bool{}, 0
	for i := len(ships) - 1; i >= 0; i-- {
		si := ships[i]
		switch {
		case si.Error != "":
			keep(i, "header unreadable: left alone")
			continue
		case p.Label != "" && si.Label != p.Label:
			keep(i, "another label")
			continue
		case !si.Complete && i > newestComplete:
			keep(i, "incomplete and newer than the newest complete shipment: a send may be running")
			continue
		case !si.Complete:
			continue
		}
		if last < p.KeepLast {
			last++
			keep(i, fmt.Sprintf("last %d", last))
		}
		t := si.Created.In(loc)
		if day := t.Format("2006-01-02"); !days[day] && len(days) < p.KeepDaily {
			days[day] = true
			keep(i, "daily "+day)
		}
		y, w := t.ISOWeek()
		if week := fmt.Sprintf("%d-W%02d", y, w); !weeks[week] && len(weeks) < p.KeepWeekly {
			weeks[week] = true
			keep(i, "weekly "+week)
		}
	}

	// Keep the bases of everything kept, transitively. An incremental
	// shipment's inventory lists every shipment whose records it uses; a
	// send in progress may use any shipment its base uses.
	queue := []int{}
	for i := range dec {
		if len(dec[i].Reasons) > 0 {
			queue = append(queue, i)
		}
	}
	for len(queue) > 0 {
		i := queue[0]
		queue = queue[1:]
		si := ships[i]
		if si.Base == "" {
			continue
		}
		var bases []string
		if si.Complete {
			ib, err := getObject(ctx, tr, si.ID+"/"+archive.InventoryObject, 1<<30)
			if err != nil {
				return nil, fmt.Errorf("prune: cannot tell which shipments %s needs: %w", si.ID, err)
			}
			inv, err := archive.ParseInventory(ib)
			if err != nil {
				return nil, fmt.Errorf("prune: cannot tell which shipments %s needs: %w", si.ID, err)
			}
			bases = inv.BaseIDs()
		} else {
			bases = []string{si.Base}
		}
		for _, b := range bases {
			j, ok := index[b]
			if !ok {
				continue // already gone: nothing to protect
			}
			if len(dec[j].Reasons) == 0 {
				queue = append(queue, j)
			}
			why := "base of " + si.ID
			if !hasReason(dec[j].Reasons, why) {
				keep(j, why)
			}
		}
	}
	for i := range dec {
		if len(dec[i].Reasons) > 0 {
			continue
		}
		dec[i].Delete = true
		if dec[i].Complete {
			dec[i].Reasons = []string{"not kept by the policy, and no kept shipment's base"}
		} else {
			dec[i].Reasons = []string{"incomplete, older than the newest complete shipment"}
		}
	}
	return dec, nil
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
	for _, name := range names {
		if err := tr.Delete(ctx, name); err != nil {
			return fmt.Errorf("delete %s: %w", name, err)
		}
	}
	return nil
}
