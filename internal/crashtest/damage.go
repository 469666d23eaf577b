package crashtest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
)

// A Damage breaks, between a killed send and its rerun, something the
// rerun might trust: the journal in the state directory (by hand, its MAC
// left as it was, or as a logic fault of coldship's would, its MAC
// recomputed with the state key), the state key, or what the destination
// holds. Whatever the damage, the rerun must exit 0 (an unattended run
// never needs a human) with a shipment that verifies and restores bit
// for bit.
type Damage struct {
	Name string
	// Kills is how many runs are killed before the damage (default 1),
	// each once the journal holds Segments more complete segments.
	Kills    int
	Segments int
	Apply    func(ctx context.Context, d *Damaged) error
	// Aside: the journal no longer verifies: the rerun moves it aside
	// and starts a new shipment (the old one is left for prune).
	Aside bool
}

// Damaged is what a Damage works on.
type Damaged struct {
	Store   Store
	State   string // the state directory
	Path    string // the journal
	Journal *Journal
	Ship    string // the shipment the journal is for
}

// rewrite writes the journal back, MAC recomputed or not.
func (d *Damaged) rewrite(remac bool) error { return d.Journal.Write(d.Path, d.State, remac) }

// Record fields (see Journal.Records).
func recBlock(r []byte) []byte  { return r[4:12] }
func recLength(r []byte) []byte { return r[12:16] }

func addU32(b []byte, d int32) {
	binary.BigEndian.PutUint32(b, uint32(int32(binary.BigEndian.Uint32(b))+d))
}

func swapBytes(a, b []byte) {
	t := append([]byte(nil), a...)
	copy(a, b)
	copy(b, t)
}

// adjacent returns two neighbouring records of a complete segment, of
// different lengths when differ is set.
func (d *Damaged) adjacent(differ bool) ([]byte, []byte, error) {
	for _, s := range d.Journal.Segments() {
		recs := d.Journal.Records(s.Number)
		for k := 0; k+1 < len(recs); k++ {
			if !differ || !bytes.Equal(recLength(recs[k]), recLength(recs[k+1])) {
				return recs[k], recs[k+1], nil
			}
		}
	}
	return nil, nil, errors.New("no complete segment holds two records of different lengths")
}

// across returns a record of one complete segment and one of another,
// of the same length when same is set, such that swapping their blocks
// (or them whole) keeps both segments' records ascending: only what the
// records claim is wrong, not their order or tiling.
func (d *Damaged) across(same bool) ([]byte, []byte, error) {
	segs := d.Journal.Segments()
	sort.Slice(segs, func(i, j int) bool { return segs[i].Number < segs[j].Number })
	for a := range segs {
		ra := d.Journal.Records(segs[a].Number)
		for b := a + 1; b < len(segs); b++ {
			rb := d.Journal.Records(segs[b].Number)
			for i := range ra {
				for k := range rb {
					if (!same || bytes.Equal(recLength(ra[i]), recLength(rb[k]))) && fitsAt(ra, i, rb[k]) && fitsAt(rb, k, ra[i]) {
						return ra[i], rb[k], nil
					}
				}
			}
		}
	}
	return nil, nil, errors.New("no two records of complete segments can swap places in order")
}

// fitsAt reports whether record r, put at position i of recs, keeps them
// ascending by (file, block).
func fitsAt(recs [][]byte, i int, r []byte) bool {
	key := func(x []byte) uint64 {
		return uint64(binary.BigEndian.Uint32(x))<<40 | binary.BigEndian.Uint64(recBlock(x))
	}
	return (i == 0 || key(recs[i-1]) < key(r)) && (i == len(recs)-1 || key(r) < key(recs[i+1]))
}

// editRecords is a damage that edits journal records.
func editRecords(name string, segments int, remac bool, edit func(d *Damaged) error) Damage {
	mode := "MAC recomputed"
	if !remac {
		mode = "by hand"
	}
	return Damage{Name: name + " (" + mode + ")", Segments: segments, Aside: !remac, Apply: func(_ context.Context, d *Damaged) error {
		if err := edit(d); err != nil {
			return err
		}
		return d.rewrite(remac)
	}}
}

// recordEdits are the journal edits of issue 14, on records that no
// longer hold offsets (they are the running sum of the lengths).
var recordEdits = []struct {
	name     string
	segments int
	edit     func(d *Damaged) error
}{
	{"offset +1", 9, func(d *Damaged) error {
		a, b, err := d.adjacent(false)
		if err == nil {
			addU32(recLength(a), 1)
			addU32(recLength(b), -1)
		}
		return err
	}},
	{"length -1", 9, func(d *Damaged) error {
		a, _, err := d.adjacent(false)
		if err == nil {
			addU32(recLength(a), -1)
		}
		return err
	}},
	{"swapped offsets", 9, func(d *Damaged) error {
		a, b, err := d.adjacent(true)
		if err == nil {
			swapBytes(recLength(a), recLength(b))
		}
		return err
	}},
	{"swapped indexes", 9, func(d *Damaged) error {
		a, b, err := d.adjacent(false)
		if err == nil {
			swapBytes(recBlock(a), recBlock(b))
		}
		return err
	}},
	{"indexes swapped across segments", 2, func(d *Damaged) error {
		a, b, err := d.across(false)
		if err == nil {
			swapBytes(recBlock(a), recBlock(b))
		}
		return err
	}},
	{"whole records swapped across segments", 2, func(d *Damaged) error {
		a, b, err := d.across(true)
		if err == nil {
			swapBytes(a, b)
		}
		return err
	}},
}

// Damages lists every damage the suite applies.
func Damages() []Damage {
	var out []Damage
	for _, e := range recordEdits {
		out = append(out, editRecords(e.name, e.segments, true, e.edit), editRecords(e.name, e.segments, false, e.edit))
	}
	return append(out,
		Damage{Name: "key slots forgotten after two attempts (MAC recomputed)", Kills: 2, Segments: 1, Apply: func(_ context.Context, d *Damaged) error {
			var keep [][]byte
			for _, b := range d.Journal.Bodies {
				if b[0] != 'K' {
					keep = append(keep, b)
				}
			}
			d.Journal.Bodies = keep
			return d.rewrite(true)
		}},
		Damage{Name: "journal of an earlier stage (a backup: cut at a record)", Segments: 2, Apply: func(_ context.Context, d *Damaged) error {
			// Cut just after the first 'S': later segments at the
			// destination are unknown to it.
			for i, b := range d.Journal.Bodies {
				if b[0] == 'S' {
					d.Journal.Bodies, d.Journal.Tags = d.Journal.Bodies[:i+1], d.Journal.Tags[:i+1]
					return d.rewrite(false)
				}
			}
			return errors.New("no complete segment")
		}},
		Damage{Name: "wrong segment CRC32C in the journal (MAC recomputed)", Segments: 1, Apply: func(_ context.Context, d *Damaged) error {
			for _, b := range d.Journal.Bodies {
				if b[0] == 'S' {
					b[1+12] ^= 0x40
					return d.rewrite(true)
				}
			}
			return errors.New("no complete segment")
		}},
		Damage{Name: "same-size bit flip in an uploaded segment", Segments: 1, Apply: func(ctx context.Context, d *Damaged) error {
			name := d.Ship + "/" + d.Journal.Segments()[0].Name()
			b, err := d.Store.Get(ctx, name)
			if err != nil {
				return err
			}
			b[len(b)/3] ^= 0x10
			return d.Store.Put(ctx, name, b)
		}},
		Damage{Name: "uploaded segment deleted", Segments: 1, Apply: func(ctx context.Context, d *Damaged) error {
			return d.Store.Delete(ctx, d.Ship+"/"+d.Journal.Segments()[0].Name())
		}},
		Damage{Name: "key object replaced", Segments: 1, Apply: func(ctx context.Context, d *Damaged) error {
			name := fmt.Sprintf("%s/keys/%04d", d.Ship, d.Journal.Segments()[0].Slot)
			b, err := d.Store.Get(ctx, name)
			if err != nil {
				return err
			}
			b[len(b)-1] ^= 1
			return d.Store.Put(ctx, name, b)
		}},
		Damage{Name: "journal not a journal", Segments: 1, Aside: true, Apply: func(_ context.Context, d *Damaged) error {
			return os.WriteFile(d.Path, []byte("not a journal\n"), 0o600)
		}},
		Damage{Name: "journal byte flipped (by hand)", Segments: 1, Aside: true, Apply: func(_ context.Context, d *Damaged) error {
			d.Journal.Bodies[len(d.Journal.Bodies)/2][1] ^= 1
			return d.rewrite(false)
		}},
		Damage{Name: "journal cut short inside a record", Segments: 1, Apply: func(_ context.Context, d *Damaged) error {
			fi, err := os.Stat(d.Path)
			if err != nil {
				return err
			}
			return os.Truncate(d.Path, fi.Size()-7)
		}},
		Damage{Name: "state key replaced", Segments: 1, Aside: true, Apply: func(_ context.Context, d *Damaged) error {
			return os.WriteFile(filepath.Join(d.State, "dr", "state.key"), []byte(strings.Repeat("ab", 32)+"\n"), 0o600)
		}},
		Damage{Name: "state key damaged", Segments: 1, Aside: true, Apply: func(_ context.Context, d *Damaged) error {
			return os.WriteFile(filepath.Join(d.State, "dr", "state.key"), []byte("not a key\n"), 0o600)
		}},
	)
}

// DamagePoint kills a send of SourceA (SIGKILL, once its journal holds
// enough complete segments), damages what its rerun finds, runs it again
// and checks the guarantees: exit 0, a shipment that verifies without a
// key and restores bit for bit, no key object overwritten, the journal
// moved aside only when it cannot verify, and nothing left at the
// destination once prune removed the shipment a moved-aside journal
// abandoned.
func (w *World) DamagePoint(ctx context.Context, set *Setup, dm Damage) (res Result) {
	res.ReSent = -1
	s := set.Store.Sub(filepath.Base(w.Dir("damage")))
	state := w.Dir("state")
	args := w.sendArgs(set, s, w.SourceA, state)
	// The killed runs move at most 6 MB/s (about three seconds for SourceA)
	// so that a loaded machine cannot finish the send before the journal
	// is polled with the segments the damage needs; the rerun is not limited.
	killed := append(slices.Clip(args), "--bwlimit", "6M")
	need := 0
	for k := range max(1, dm.Kills) {
		need += max(1, dm.Segments)
		o, err := Run(ctx, w.Command(killed...), Trigger{At: 0, Signal: syscall.SIGKILL, When: func() bool { return journalSegments(state) >= need }})
		switch {
		case err != nil:
			return failf("%v", err)
		case !o.Fired || o.Code != 137:
			return failf("run %d was to be killed once %d segments were complete: fired %v, exit %d\n%s", k+1, need, o.Fired, o.Code, tail(o.Stderr))
		}
		res.Fired = true
	}
	jp, err := FindJournal(state)
	if err != nil {
		return failf("%v", err)
	}
	j, err := ReadJournal(jp)
	if err != nil {
		return failf("%v", err)
	}
	d := &Damaged{Store: s, State: state, Path: jp, Journal: j, Ship: j.ShipmentID()}
	keys, err := keyObjects(ctx, s, d.Ship)
	if err != nil {
		return failf("%v", err)
	}
	if err := dm.Apply(ctx, d); err != nil {
		return failf("damage: %v", err)
	}
	o, err := w.mustRun(ctx, args...)
	if err != nil {
		return failf("rerun: %v", err)
	}
	if err := w.checkDamaged(ctx, s, d, dm, o, keys); err != nil {
		return failf("rerun: %v\n%s", err, tail(o.Stderr+o.Stdout))
	}
	return res
}

// checkDamaged checks the rerun of a damaged send.
func (w *World) checkDamaged(ctx context.Context, s Store, d *Damaged, dm Damage, o *Outcome, keys map[string][]byte) error {
	id := o.String("shipment")
	aside, _ := filepath.Glob(d.Path + ".bad-*")
	switch {
	case dm.Aside && (len(aside) != 1 || id == d.Ship):
		return fmt.Errorf("the journal no longer verifies: want it moved aside and a new shipment; moved aside %v, shipment %s", aside, id)
	case !dm.Aside && (len(aside) != 0 || id != d.Ship):
		return fmt.Errorf("want shipment %s resumed; moved aside %v, shipment %s", d.Ship, aside, id)
	}
	after, err := keyObjects(ctx, s, d.Ship)
	if err != nil {
		return err
	}
	for name, b := range keys {
		if a, ok := after[name]; ok && !bytes.Equal(a, b) {
			return fmt.Errorf("%s/%s was overwritten", d.Ship, name)
		}
	}
	var allow []string
	if id != d.Ship {
		allow = []string{d.Ship}
	}
	if _, err := w.checkShipment(ctx, s, id, w.SourceA, allow); err != nil {
		return err
	}
	if len(allow) > 0 {
		if _, err := w.mustRun(ctx, append([]string{"prune", s.Dest(), "--keep-last", "1"}, s.Args()...)...); err != nil {
			return err
		}
		a, err := AuditStore(ctx, s)
		if err != nil {
			return err
		}
		if p := a.Problems(); len(p) > 0 {
			return fmt.Errorf("after prune: %s", strings.Join(p, "; "))
		}
		if _, err := w.mustRun(ctx, w.verifyArgs(s, "")...); err != nil {
			return err
		}
	}
	return stateClean(d.State)
}

// journalSegments counts the complete segments in the journal of a state
// directory (0 if there is none yet).
func journalSegments(state string) int {
	p, err := FindJournal(state)
	if err != nil {
		return 0
	}
	j, err := ReadJournal(p)
	if err != nil {
		return 0
	}
	return len(j.Segments())
}

// keyObjects reads every key object of a shipment.
func keyObjects(ctx context.Context, s Store, id string) (map[string][]byte, error) {
	objs, err := s.Objects(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for name := range objs {
		if rest, ok := strings.CutPrefix(name, id+"/keys/"); ok {
			b, err := s.Get(ctx, name)
			if err != nil {
				return nil, err
			}
			out["keys/"+rest] = b
		}
	}
	return out, nil
}
