package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/spf13/pflag"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/internal/atonce"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/restore"
)

// trustOptions is --trusted-senders (receive, verify, list, prune, show):
// the OpenSSH allowed_signers file whose keys may sign shipments.
type trustOptions struct {
	file    string
	senders *cipher.AllowedSigners // loaded by load; nil without the flag
	label   string                 // --name of receive, verify and show: one series at DEST
}

// addLabelFlag adds --name, which picks a series among several at DEST.
func addLabelFlag(f *pflag.FlagSet, o *trustOptions) {
	f.StringVar(&o.label, "name", "", "only a shipment of this `LABEL` (send --name): latest is the latest of the label; an id of another label is refused")
}

func addTrustFlags(f *pflag.FlagSet, o *trustOptions) {
	f.StringVar(&o.file, "trusted-senders", "", "accept only shipments signed (send --sign-key) by a key of this OpenSSH allowed_signers `FILE`")
}

// load reads the allowed signers file, if given: a file that does not
// load is a usage error, so that an unattended run fails before it looks
// at DEST.
func (o *trustOptions) load() error {
	if o.file == "" {
		return nil
	}
	a, err := cipher.ReadAllowedSigners(o.file)
	if err != nil {
		return usagef("--trusted-senders: %v", err)
	}
	o.senders = a
	return nil
}

// warnf reports what coldship passed over at DEST (a shipment dated ahead,
// one that does not verify): on stderr even with --quiet, as a notice with
// --json.
func (s *streams) warnf(json bool) func(string, ...any) {
	return func(format string, a ...any) {
		msg := "warning: " + fmt.Sprintf(format, a...)
		if json {
			s.emit(map[string]string{"type": "notice", "message": msg})
			return
		}
		fmt.Fprintf(s.err, "coldship: %s\n", msg)
	}
}

// latestName names the default shipment on the command line, as `send
// --base latest` does: `receive DEST latest` is `receive DEST`.
const latestName = "latest"

// shipmentArg returns the SHIPMENT argument of receive, show and verify
// (args[1]), "" when there is none: a usage error when it is neither
// latest nor of a shipment id's form, before DEST is reached.
func shipmentArg(args []string) (string, error) {
	if len(args) < 2 {
		return "", nil
	}
	if id := args[1]; id == latestName || archive.ValidID(id) {
		return id, nil
	}
	return "", usagef("%q is not a shipment id: give latest or an id as list shows it (20261121T233000Z-3f9a1c2e)", args[1])
}

// pick returns shipment id, or the latest one when id is "" or "latest"
// (no shipment id is a word: ids start with their date). With trusted
// senders the shipment's signature is checked (exit 4 when it does not
// verify) and the latest is the newest that verifies; without, the latest
// is the newest complete shipment that is readable and not dated more
// than shipper.MaxClockSkew ahead. Every newer shipment passed over is
// named with warn, with why.
func (o *trustOptions) pick(ctx context.Context, tr shipper.Transport, id string, warn func(string, ...any)) (string, *shipper.TrustInfo, error) {
	now := time.Now()
	if id == latestName {
		id = ""
	}
	switch {
	case o.senders == nil && id != "":
		return id, nil, o.checkLabel(ctx, tr, id)
	case o.senders == nil:
		id, err := shipper.Latest(ctx, tr, o.label, now, warn)
		return id, nil, err
	case id != "":
		ti, err := shipper.CheckSignature(ctx, tr, id, o.senders, now)
		if err != nil {
			return id, nil, o.refused(err)
		}
		return id, ti, o.checkLabel(ctx, tr, id)
	}
	ti, err := shipper.LatestTrusted(ctx, tr, o.senders, o.label, now, warn)
	if err != nil {
		return "", nil, o.refused(err)
	}
	return ti.Statement.ID, ti, nil
}

// checkLabel refuses shipment id unless it has the --name label.
func (o *trustOptions) checkLabel(ctx context.Context, tr shipper.Transport, id string) error {
	if o.label == "" {
		return nil
	}
	h, err := shipper.ReadHeader(ctx, tr, id)
	if err != nil {
		return err
	}
	return shipper.CheckLabel(h, o.label)
}

// refused says which file a shipment was checked against.
func (o *trustOptions) refused(err error) error {
	if errors.Is(err, shipper.ErrUntrusted) {
		return fmt.Errorf("%w (trusted senders: %s)", err, o.file)
	}
	return err
}

// open picks the shipment as pick does and opens it, every object it
// reads checked against the signed statement when there are trusted
// senders. The id is returned even when opening fails, for the hooks.
func (o *trustOptions) open(ctx context.Context, tr shipper.Transport, id string, ids []age.Identity,
	warn func(string, ...any)) (string, *shipper.Shipment, error) {
	var sh *shipper.Shipment
	var err error
	if id == "" || id == latestName {
		id, sh, err = shipper.OpenLatest(ctx, tr, o.senders, o.label, time.Now(), warn, ids)
		err = o.refused(err)
	} else {
		var ti *shipper.TrustInfo
		if id, ti, err = o.pick(ctx, tr, id, warn); err != nil {
			return id, nil, err
		}
		var opts []shipper.OpenOption
		if ti != nil {
			opts = append(opts, shipper.Trusted(ti))
		}
		sh, err = shipper.OpenShipment(ctx, tr, id, ids, opts...)
	}
	// The header opened is the one checked (against the manifest, and the
	// signature with trusted senders): its label is the one that counts.
	if err == nil {
		err = shipper.CheckLabel(sh.Header, o.label)
	}
	return id, sh, err
}

// checkAll checks the signature of every complete shipment at tr (verify
// --all): each that does not verify is a problem, reported and added to
// res.
func (o *trustOptions) checkAll(ctx context.Context, tr shipper.Transport, res *shipper.VerifyAllResult, report func(shipper.Problem)) error {
	ships, err := shipper.List(ctx, tr)
	if err != nil {
		return err
	}
	now := time.Now()
	errs := make([]error, len(ships))
	atonce.Each(len(ships), describeAtOnce, func(i int) error {
		if ships[i].Complete {
			_, errs[i] = shipper.CheckSignature(ctx, tr, ships[i].ID, o.senders, now)
		}
		return nil
	})
	for i, si := range ships {
		if !si.Complete {
			continue
		}
		err := errs[i]
		if errors.Is(err, shipper.ErrUntrusted) {
			p := shipper.Problem{Shipment: si.ID, Problem: strings.TrimPrefix(err.Error(), "shipment "+si.ID+": "), Err: err}
			report(p)
			res.Problems = append(res.Problems, p)
		} else if err != nil {
			return err
		}
	}
	return nil
}

// signedBy describes the signer of a checked shipment for a person:
// "site-a (ssh-ed25519 SHA256:...)".
func signedBy(ti *shipper.TrustInfo) string {
	return fmt.Sprintf("%s (%s %s)", ti.Signer.Principal(), ti.Signer.Key.Type(), ti.Signer.Fingerprint())
}

// checkRollback refuses to update the restore in dir to sh when that
// would roll it back: sh older than the shipment the restore holds (of an
// update that did not complete: the one it came from) or,
// when sh's signature was checked and the restore's was too, of another
// chain; or when sh is of another label than the shipment the restore
// holds (when its marker says: another series at the destination). A
// restore of an unsigned shipment, or a receive without trusted senders,
// has no chain to compare: only the age rule applies. With allow, the
// refusal is only said.
//
// It checks what dir holds now, before the pre-receive hooks run; the
// check it returns is for the update to make again under dir's lock
// (ReceiveOptions.CheckHeld), as another receive may have updated dir
// while this one waited for the lock (--lock-wait) or ran its hooks.
func checkRollback(dir string, sh *shipper.Shipment, allow bool, log func(string, ...any)) (func(restore.Holding) error, error) {
	held, ok, err := restore.Held(dir, sh.Manifest.Files)
	if err != nil {
		return nil, err
	}
	check := func(h restore.Holding) error { return rollbackCheck(dir, sh, h, allow, log) }
	if ok {
		if err := check(held); err != nil {
			return nil, err
		}
	}
	return func(h restore.Holding) error {
		if ok && sameHolding(h, held) {
			return nil // checked above (and, with allow, said)
		}
		return check(h)
	}, nil
}

// rollbackCheck is checkRollback's check of what dir holds.
func rollbackCheck(dir string, sh *shipper.Shipment, held restore.Holding, allow bool, log func(string, ...any)) error {
	// An update that did not complete left the folder at the shipment it
	// came from: completing it, or going anywhere from there, is no
	// rollback.
	ref := held.Shipment
	if held.State == "updating" && held.From != "" && sh.Header.ID != held.Shipment {
		ref = held.From
	}
	err := shipper.CheckSameLabel(held.Shipment, held.Label, sh.Header.ID, sh.Header.Label)
	if ti := sh.Trust(); err == nil && ti != nil {
		err = shipper.CheckNotRollback(ref, held.Chain, ti)
	} else if err == nil {
		err = shipper.CheckNotOlder(ref, sh.Header.ID)
	}
	switch {
	case err == nil:
		return nil
	case allow:
		log("--allow-rollback: %v: updating %s anyway", err, dir)
		return nil
	}
	if errors.Is(err, shipper.ErrOtherSeries) {
		return fmt.Errorf("--into %s: %w; name a shipment of its series (coldship list shows the labels), or give --allow-rollback to update to it anyway", dir, err)
	}
	return fmt.Errorf("--into %s: %w; give --allow-rollback to update to it anyway", dir, err)
}

func sameHolding(a, b restore.Holding) bool {
	return a.Shipment == b.Shipment && a.State == b.State && a.From == b.From && a.Chain == b.Chain && a.Statement == b.Statement &&
		(a.Label == nil) == (b.Label == nil) && (a.Label == nil || *a.Label == *b.Label)
}
