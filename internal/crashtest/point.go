package crashtest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// Command kinds a point stops.
const (
	Send        = "send"
	ReceiveOut  = "receive --out"
	ReceiveInto = "receive --into"
)

// Point is one seeded crash: which command, which signal, after how many
// bytes moved.
type Point struct {
	Command string
	Signal  syscall.Signal
	Seed    uint64
	At      int64 // bytes moved at which the signal is sent
}

// Result is what a point found.
type Result struct {
	Fired  bool  // the signal was sent before the command ended
	ReSent int64 // bytes the rerun moved again (see SendPoint, ReceivePoint); -1: not measured
	Note   string
	Err    error // the first broken guarantee; nil if the point passed
}

// failf records a broken guarantee.
func failf(format string, a ...any) Result { return Result{ReSent: -1, Err: fmt.Errorf(format, a...)} }

// SendPoint sends SourceA to a new folder of set's store, stops the send
// at p, checks what it left, runs the same command again and checks the
// shipment it completes.
func (w *World) SendPoint(ctx context.Context, set *Setup, p Point) (res Result) {
	s := set.Store.Sub(filepath.Base(w.Dir("send")))
	state := w.Dir("state")
	args := w.sendArgs(set, s, w.SourceA, state)
	first, err := Run(ctx, w.Command(args...), Kill(p.At, p.Signal))
	if err != nil {
		return failf("%v", err)
	}
	defer func() { res.Fired = first.Fired }()
	res.ReSent = -1
	if r := checkStopped(first, p.Signal); r.Err != nil {
		return r
	}
	after, err := w.checkAfterStop(ctx, s, state, p.Signal)
	if err != nil {
		return failf("after the %s at %d bytes: %v", p.Signal, first.FiredAt, err)
	}
	second, err := w.mustRun(ctx, args...)
	if err != nil {
		return failf("rerun after the %s at %d bytes: %v", p.Signal, first.FiredAt, err)
	}
	id := second.String("shipment")
	a, err := w.checkShipment(ctx, s, id, w.SourceA, nil)
	if err != nil {
		return failf("rerun after the %s at %d bytes: %v", p.Signal, first.FiredAt, err)
	}
	if err := stateClean(state); err != nil {
		return failf("after the rerun: %v", err)
	}
	res.ReSent, res.Note = after.resent(second, id, a.ShipmentBytes(id))
	if limit := int64(set.Streams)*maxSegment(set) + 4096; res.Note == "" && res.ReSent > limit {
		res.Err = fmt.Errorf("the rerun sent %d bytes again, more than one segment per stream (%d)", res.ReSent, limit)
	}
	return res
}

// checkStopped checks the exit status of a run that was to be stopped by
// sig: a killed one's, or 0 if it ended first.
func checkStopped(o *Outcome, sig syscall.Signal) Result {
	switch {
	case o.Code == 0:
		return Result{Fired: o.Fired, ReSent: -1}
	case !o.Fired:
		return failf("exit %d before the signal:\n%s", o.Code, tail(o.Stderr))
	case !slices.Contains(killedCodes(sig), o.Code):
		return failf("%s at %d bytes: exit %d, want one of %v\n%s", sig, o.FiredAt, o.Code, killedCodes(sig), tail(o.Stderr))
	}
	return Result{Fired: true}
}

// stopped is what a stopped send left at the destination.
type stopped struct {
	ship     string           // the shipment the journal is for ("": no journal)
	objects  map[string]int64 // its objects at the destination
	complete bool             // it has a manifest: the send got that far
}

// checkAfterStop checks what a stopped send left: every segment its
// journal says is complete is at the destination as recorded; a shipment
// with a manifest is complete and verifies; after a SIGTERM no
// unfinished upload is left.
func (w *World) checkAfterStop(ctx context.Context, s Store, state string, sig syscall.Signal) (*stopped, error) {
	a, err := AuditStore(ctx, s)
	if err != nil {
		return nil, err
	}
	st := &stopped{}
	if jp, err := FindJournal(state); err == nil {
		j, err := ReadJournal(jp)
		if err != nil {
			return nil, err
		}
		if err := j.Verify(state); err != nil {
			return nil, fmt.Errorf("the journal coldship wrote does not verify: %v", err)
		}
		if err := CheckJournalSegments(ctx, s, j); err != nil {
			return nil, err
		}
		st.ship = j.ShipmentID()
		st.objects = a.ShipmentObjects(st.ship)
	}
	for _, id := range a.Complete {
		// The send was stopped after it put the manifest: the
		// shipment must be whole.
		if _, err := w.mustRun(ctx, w.verifyArgs(s, id)...); err != nil {
			return nil, fmt.Errorf("a complete shipment after the stop: %v", err)
		}
		st.complete = st.complete || id == st.ship
	}
	if len(a.Unreferenced) > 0 || len(a.Missing) > 0 {
		return nil, fmt.Errorf("unreferenced %v, missing %v", a.Unreferenced, a.Missing)
	}
	if sig == syscall.SIGTERM && s.Name() == "s3" && len(a.Leftovers) > 0 {
		return nil, fmt.Errorf("an interrupted send left unfinished uploads or probe objects: %v", a.Leftovers)
	}
	return st, nil
}

// resent returns the bytes a rerun sent beyond what was missing from the
// shipment it completed (final bytes at the destination): bytes_shipped
// less (final less the objects the stopped run had completed), and a
// note when the rerun made a new shipment rather than resuming one.
func (st *stopped) resent(o *Outcome, id string, final int64) (int64, string) {
	shipped := o.Int("bytes_shipped")
	switch {
	case st.ship == "":
		return shipped, "no journal: a new shipment"
	case id != st.ship && st.complete:
		return shipped, "stopped after its manifest: a new shipment"
	case id != st.ship:
		return shipped, "not resumed: a new shipment"
	}
	var had int64
	for _, n := range st.objects {
		had += n
	}
	return max(0, shipped-(final-had)), ""
}

// maxSegment is the largest segment a send with set makes: segments close
// once past the segment size, so one record more.
func maxSegment(set *Setup) int64 { return set.SegmentSize + set.BlockSize + 4096 }

// checkShipment checks a shipment a send reported complete: key-less
// verify of it and verify --all of the destination pass, nothing at the
// destination is left over or unreferenced (but allowed incomplete
// shipments), and it restores bit for bit.
func (w *World) checkShipment(ctx context.Context, s Store, id, src string, allowIncomplete []string) (*Audit, error) {
	if id == "" {
		return nil, errors.New("no shipment id in the summary")
	}
	if _, err := w.mustRun(ctx, w.verifyArgs(s, id)...); err != nil {
		return nil, err
	}
	a, err := AuditStore(ctx, s)
	if err != nil {
		return nil, err
	}
	if p := a.Problems(allowIncomplete...); len(p) > 0 {
		return nil, fmt.Errorf("at the destination: %s", strings.Join(p, "; "))
	}
	if len(allowIncomplete) == 0 {
		if _, err := w.mustRun(ctx, w.verifyArgs(s, "")...); err != nil {
			return nil, err
		}
	}
	out := w.Dir("check")
	defer os.RemoveAll(out)
	if _, err := w.mustRun(ctx, w.receiveArgs(s, id, "out", out)...); err != nil {
		return nil, err
	}
	return a, SameTree(src, out)
}

// stateClean checks that a send that succeeded left no journal and no
// per-block state in the state directory.
func stateClean(state string) error {
	m, _ := filepath.Glob(filepath.Join(state, "resume", "*"))
	var left []string
	for _, p := range m {
		if !strings.Contains(filepath.Base(p), ".bad-") {
			left = append(left, filepath.Base(p))
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("the state directory still holds %v", left)
	}
	return nil
}

// ReceivePoint receives shipment A (--out, into a new folder) or B
// (--into a copy of a restore of A) from the reference store, stops the
// receive at p, checks that no final name holds anything new, runs the
// same command again and checks the restore. ReSent is, for --out, the
// data bytes the stopped run had written that the rerun did not reuse.
func (w *World) ReceivePoint(ctx context.Context, ref *Reference, p Point) (res Result) {
	id, mode, src, before := ref.A, "out", w.SourceA, ""
	if p.Command == ReceiveInto {
		id, mode, src, before = ref.B, "into", w.SourceB, w.SourceA
	}
	out := w.Dir("receive")
	defer os.RemoveAll(out)
	if before != "" {
		if err := copyTree(ref.RestoreA, out); err != nil {
			return failf("%v", err)
		}
	}
	args := w.receiveArgs(ref.Store, id, mode, out)
	first, err := Run(ctx, w.Command(args...), Kill(p.At, p.Signal))
	if err != nil {
		return failf("%v", err)
	}
	defer func() { res.Fired = first.Fired }()
	if r := checkStopped(first, p.Signal); r.Err != nil {
		return r
	}
	res.ReSent = -1
	if first.Code != 0 {
		if err := finalNamesKept(src, before, out); err != nil {
			return failf("after the %s at %d bytes: %v", p.Signal, first.FiredAt, err)
		}
	}
	recorded, err := RecordedData(out)
	if err != nil {
		return failf("after the %s at %d bytes: %v", p.Signal, first.FiredAt, err)
	}
	written, err := writtenData(out, src)
	if err != nil {
		return failf("after the %s at %d bytes: %v", p.Signal, first.FiredAt, err)
	}
	if mode == "out" && SameTree(src, out) == nil {
		// It completed before the signal took effect (its marker says
		// done, nothing of it is left over): the same command run
		// again would refuse the files it restored, as documented
		// (--force is needed), so the restore is checked as it is.
		if left, err := ReceiveLeftovers(out); err == nil && len(left) == 0 {
			return res
		}
	}
	second, err := w.mustRun(ctx, args...)
	if err != nil {
		return failf("rerun after the %s at %d bytes: %v", p.Signal, first.FiredAt, err)
	}
	if err := SameTree(src, out); err != nil {
		return failf("rerun after the %s at %d bytes: %v", p.Signal, first.FiredAt, err)
	}
	if left, err := ReceiveLeftovers(out); err != nil || len(left) > 0 {
		return failf("rerun after the %s at %d bytes: left over %v %v", p.Signal, first.FiredAt, left, err)
	}
	if mode == "out" && first.Code != 0 {
		// Every block it recorded is reused, and those it wrote after its
		// last record whose digest checks; nothing it did not write.
		reused := second.Int("bytes_reused")
		if reused < recorded || reused > written {
			return failf("rerun after the %s at %d bytes: reused %d bytes, the stopped run had recorded %d and written %d",
				p.Signal, first.FiredAt, reused, recorded, written)
		}
		res.ReSent = max(0, written-reused)
	}
	return res
}

// finalNamesKept checks that, after a receive was stopped, every final
// name of the shipment's files is as it was: absent for a new restore
// (before ""), or, for an update, absent (moved aside while it is
// rewritten) or holding the earlier version's content; or else holding
// exactly the new version (src): the stop came during the renames at the
// end, which begin only once every file has checked out. Never anything
// partial.
func finalNamesKept(src, before, out string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(filepath.Dir(src), p)
		final := filepath.Join(out, rel)
		if _, err := os.Lstat(final); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if sameFile(p, final) == nil {
			return nil
		}
		if before == "" {
			return fmt.Errorf("%s is at its final name and is not the shipment's version", rel)
		}
		if err := sameFile(filepath.Join(filepath.Dir(before), rel), final); err != nil {
			return fmt.Errorf("%s at its final name is neither absent nor the earlier version: %v", rel, err)
		}
		return nil
	})
}

// OutagePoint runs a send of SourceA to a new folder of set's store, or
// (command ReceiveOut) a receive of the reference shipment A, and once it
// has moved at bytes, has set.Outage stop and restart the server. The
// command must retry (--retries, its default), resume, and exit 0 with a
// result that restores bit for bit; it must have outlived the outage or
// said that an attempt failed (else the outage missed it, and the point
// proves nothing). S3 requests are retried by the client library too, so
// a send to S3 may ride out the outage without a failed attempt.
func (w *World) OutagePoint(ctx context.Context, set *Setup, ref *Reference, command string, at int64) (res Result) {
	res.ReSent = -1
	var args []string
	var s Store
	out := w.Dir("receive")
	defer os.RemoveAll(out)
	if command == Send {
		s = set.Store.Sub(filepath.Base(w.Dir("outage")))
		args = w.sendArgs(set, s, w.SourceA, w.Dir("state"))
	} else {
		args = w.receiveArgs(ref.Store, ref.A, "out", out)
	}
	fire := make(chan struct{})
	type ran struct {
		o   *Outcome
		err error
	}
	done := make(chan ran, 1)
	go func() {
		o, err := Run(ctx, w.Command(args...), Trigger{At: at, Do: func() { close(fire) }})
		done <- ran{o, err}
	}()
	var r ran
	outlived := false // still running once the server was back
	select {
	case <-fire:
		set.Outage()
		select {
		case r = <-done:
		default:
			outlived = true
			r = <-done
		}
	case r = <-done:
	}
	if r.err != nil {
		return failf("%v", r.err)
	}
	o := r.o
	res.Fired = o.Fired
	switch {
	case !o.Fired:
		return failf("%s ended (exit %d) before the outage at %d bytes", command, o.Code, at)
	case o.Code != 0:
		return failf("%s through an outage: exit %d\n%s", command, o.Code, tail(o.Stderr))
	case !outlived && !strings.Contains(o.Stdout+o.Stderr, "attempt 1 failed"):
		// It ended while the server was going down, before any request
		// failed: the outage missed it, and the point proves nothing
		// (counted as ended first).
		res.Fired, res.Note = false, "the outage missed it"
	}
	var err error
	if command == Send {
		_, err = w.checkShipment(ctx, s, o.String("shipment"), w.SourceA, nil)
	} else if err = SameTree(w.SourceA, out); err == nil {
		if left, lerr := ReceiveLeftovers(out); lerr != nil || len(left) > 0 {
			err = fmt.Errorf("left over %v %v", left, lerr)
		}
	}
	if err != nil {
		return failf("%s through an outage: %v", command, err)
	}
	return res
}
