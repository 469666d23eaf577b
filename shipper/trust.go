package shipper

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/internal/atonce"
)

// MaxClockSkew is how far ahead of the receiver's clock a shipment id may
// be dated and still be the latest: a shipment dated further ahead is
// never picked by default, so a forged id dated 2999 cannot stay "latest"
// forever.
const MaxClockSkew = 24 * time.Hour

// Trust errors. Every error CheckSignature returns for a shipment that is
// not vouched for wraps ErrUntrusted and one of cipher.ErrUnsigned,
// cipher.ErrBadSignature, cipher.ErrUntrustedSigner or
// ErrStatementMismatch; the command maps ErrUntrusted to exit status 4.
var (
	ErrUntrusted         = errors.New("not from a trusted sender")
	ErrStatementMismatch = errors.New("the signed statement does not match the shipment")
	// ErrRollback wraps archive.ErrIntegrity too (exit status 5).
	ErrRollback = errors.New("refusing to roll back")
)

// Limits of the objects read whole by the trust checks.
const (
	maxSignatureObject = 64 << 10
	maxHeaderObject    = 64 << 10
	maxInventoryObject = 64 << 20 // ~150 bytes per segment: 32 TiB of 64 MiB segments
)

// untrustedError carries one of the specific errors and ErrUntrusted.
type untrustedError struct{ err error }

func (e *untrustedError) Error() string   { return e.err.Error() }
func (e *untrustedError) Unwrap() []error { return []error{e.err, ErrUntrusted} }

func untrusted(id string, err error) error {
	return &untrustedError{fmt.Errorf("shipment %s: %w", id, err)}
}

func mismatch(id, format string, a ...any) error {
	return untrusted(id, fmt.Errorf("%w: %s", ErrStatementMismatch, fmt.Sprintf(format, a...)))
}

// TrustInfo is what CheckSignature proved about a shipment: who signed
// it, its statement, and its header and inventory as read and checked
// against the statement (so that callers use these, not a second read the
// destination could answer differently).
type TrustInfo struct {
	Signer    *cipher.SignerInfo
	Statement *archive.Statement // ID, Created, Chain, Previous, PreviousSHA256, Objects
	SHA256    archive.Digest     // of the statement object
	Header    *archive.Header
	Inventory *archive.Inventory
}

// Check reports whether b, read from the shipment as object name (relative
// to its folder), is what the signed statement lists. Readers of a trusted
// shipment call it for every object they read whole (manifest, key slots),
// so that nothing swapped after CheckSignature is used.
func (t *TrustInfo) Check(name string, b []byte) error {
	want, ok := t.Statement.Lookup(name)
	if !ok {
		return mismatch(t.Statement.ID, "%s is not in it", name)
	}
	if archive.Digest(sha256.Sum256(b)) != want {
		return mismatch(t.Statement.ID, "%s differs from it", name)
	}
	return nil
}

// SignShipment signs the complete shipment id at tr with signer as link of
// its chain, and returns the SHA-256 of its statement (for the next link).
// inventory is the SHA-256 of the inventory object the send put
// (SendResult.Inventory).
//
// It trusts nothing it has not read back in this call: it lists the
// shipment's objects, reads every one of them but the segments, checks
// that the inventory is the one the send put and that each object is in
// it with that size and BLAKE3 digest (so that whoever can write to the
// destination cannot swap in a shipment of their own between the send and
// its signature), and that the header and the inventory name the
// shipment, builds the statement of their SHA-256 digests, signs it, and
// puts `signed` then `signature`, the last objects of a shipment.
func SignShipment(ctx context.Context, tr Transport, id string, inventory archive.Digest, signer ssh.Signer, link ChainLink) (archive.Digest, error) {
	if !archive.ValidID(id) {
		return archive.Digest{}, fmt.Errorf("%q is not a shipment id", id)
	}
	st, err := readStatementObjects(ctx, tr, id, inventory)
	if err != nil {
		return archive.Digest{}, fmt.Errorf("sign shipment %s: %w", id, err)
	}
	st.Chain, st.Previous, st.PreviousSHA256 = link.Chain, link.Previous, link.PreviousSHA256
	b, err := st.Marshal()
	if err != nil {
		return archive.Digest{}, fmt.Errorf("sign shipment %s: %w", id, err)
	}
	sig, err := cipher.Sign(signer, b)
	if err != nil {
		return archive.Digest{}, fmt.Errorf("sign shipment %s: %w", id, err)
	}
	for _, o := range []struct {
		name string
		b    []byte
	}{{archive.SignedObject, b}, {archive.SignatureObject, sig}} {
		if err := tr.Put(ctx, id+"/"+o.name, bytes.NewReader(o.b), int64(len(o.b))); err != nil {
			return archive.Digest{}, fmt.Errorf("sign shipment %s: put %s: %w", id, o.name, err)
		}
	}
	return archive.StatementDigest(b), nil
}

// readStatementObjects reads back the objects a statement of shipment id
// lists, checks them against its inventory, which must have SHA-256
// inventory, and returns the statement without its chain.
func readStatementObjects(ctx context.Context, tr Transport, id string, inventory archive.Digest) (*archive.Statement, error) {
	var objects map[string]int64
	var h *archive.Header
	var inv *archive.Inventory
	var hb, ib []byte
	var lerr, herr error
	var g errgroup.Group
	g.Go(func() error { objects, lerr = listShipment(ctx, tr, id); return nil })
	g.Go(func() error { h, inv, hb, ib, herr = readHeaderInventory(ctx, tr, id); return nil })
	g.Wait()
	if lerr != nil {
		return nil, lerr
	}
	if _, ok := objects[archive.ManifestObject]; !ok {
		return nil, fmt.Errorf("%w (%w)", archive.ErrIncomplete, archive.ErrIntegrity)
	}
	if herr != nil {
		return nil, herr
	}
	if archive.Digest(sha256.Sum256(ib)) != inventory {
		return nil, fmt.Errorf("%s is not the one this send put: it was changed at the destination (%w)", archive.InventoryObject, archive.ErrIntegrity)
	}
	if h.Created.Nanosecond() != 0 {
		return nil, fmt.Errorf("%s: creation time %s is not in whole seconds", archive.HeaderObject, h.Created)
	}
	st := &archive.Statement{ID: id, Created: h.Created.UTC()}
	var names []string
	for name := range objects {
		if archive.InStatement(name) && name != archive.HeaderObject && name != archive.InventoryObject {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	digests, errs := hashObjects(ctx, tr, id, names, true)
	for i, name := range names {
		if errs[i] != nil {
			return nil, errs[i]
		}
		if err := checkInventoryEntry(inv, name, digests[i]); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		st.Objects = append(st.Objects, archive.StatementEntry{Name: name, SHA256: digests[i].sha256})
	}
	if _, ok := objects[archive.HeaderObject]; ok {
		d := digestsOf(hb)
		if err := checkInventoryEntry(inv, archive.HeaderObject, d); err != nil {
			return nil, fmt.Errorf("%s: %w", archive.HeaderObject, err)
		}
		st.Objects = append(st.Objects, archive.StatementEntry{Name: archive.HeaderObject, SHA256: d.sha256})
	}
	if _, ok := objects[archive.InventoryObject]; ok {
		st.Objects = append(st.Objects, archive.StatementEntry{Name: archive.InventoryObject, SHA256: sha256.Sum256(ib)})
	}
	for _, o := range inv.Objects {
		if _, ok := objects[o.Name]; !ok {
			return nil, fmt.Errorf("%s is in the inventory but not at the destination: %w", o.Name, archive.ErrIntegrity)
		}
	}
	return st, nil
}

func checkInventoryEntry(inv *archive.Inventory, name string, d objectDigests) error {
	for _, o := range inv.Objects {
		if o.Name == name {
			if o.Size != d.size || o.BLAKE3 != d.blake3 {
				return fmt.Errorf("does not match the inventory: %w", archive.ErrIntegrity)
			}
			return nil
		}
	}
	return fmt.Errorf("not in the inventory: refusing to sign an object the send did not write: %w", archive.ErrIntegrity)
}

// listShipment returns the objects of shipment id by name relative to its
// folder, with their sizes.
func listShipment(ctx context.Context, tr Transport, id string) (map[string]int64, error) {
	return listObjects(ctx, tr, id, func(string) bool { return false })
}

// listSigned is listShipment without the segments, which a statement does
// not list: their folder is not read (see SkippingLister).
func listSigned(ctx context.Context, tr Transport, id string) (map[string]int64, error) {
	segments := id + "/" + archive.SegmentFolder
	return listObjects(ctx, tr, id, func(folder string) bool { return folder == segments })
}

// listObjects returns the objects of shipment id but those under the
// folders that skip names, by name relative to its folder.
func listObjects(ctx context.Context, tr Transport, id string, skip func(string) bool) (map[string]int64, error) {
	objects := map[string]int64{}
	err := listSkipping(ctx, tr, id+"/", skip, func(oi ObjectInfo) error {
		objects[strings.TrimPrefix(oi.Name, id+"/")] = oi.Size
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", id, err)
	}
	return objects, nil
}

// readHeaderInventory reads the header and the inventory of shipment id
// whole and checks that they parse and name it.
func readHeaderInventory(ctx context.Context, tr Transport, id string) (*archive.Header, *archive.Inventory, []byte, []byte, error) {
	hb, err := getObject(ctx, tr, id+"/"+archive.HeaderObject, maxHeaderObject)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	h, err := archive.ParseHeader(hb)
	if err != nil || h.ID != id {
		return nil, nil, nil, nil, fmt.Errorf("%s: does not parse or names another shipment: %v (%w)", archive.HeaderObject, err, archive.ErrIntegrity)
	}
	ib, err := getObject(ctx, tr, id+"/"+archive.InventoryObject, maxInventoryObject)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	inv, err := archive.ParseInventory(ib)
	if err != nil || inv.ID != id {
		return nil, nil, nil, nil, fmt.Errorf("%s: does not parse or names another shipment: %v (%w)", archive.InventoryObject, err, archive.ErrIntegrity)
	}
	return h, inv, hb, ib, nil
}

type objectDigests struct {
	size           int64
	sha256, blake3 archive.Digest
}

func digestsOf(b []byte) objectDigests {
	return objectDigests{int64(len(b)), sha256.Sum256(b), archive.ObjectDigest(b)}
}

// hashObject streams an object through SHA-256 (and BLAKE3 if asked): the
// manifest and whatever else is large are never held whole.
func hashObject(ctx context.Context, tr Transport, name string, withBLAKE3 bool) (objectDigests, error) {
	var d objectDigests
	rc, err := tr.Open(ctx, name, 0, -1)
	if err != nil {
		return d, fmt.Errorf("read %s: %w", name, err)
	}
	defer rc.Close()
	sh := sha256.New()
	var w io.Writer = sh
	var b3 *blake3.Hasher
	if withBLAKE3 {
		b3 = blake3.New()
		w = io.MultiWriter(sh, b3)
	}
	if d.size, err = io.Copy(w, rc); err != nil {
		return d, fmt.Errorf("read %s: %w", name, err)
	}
	sh.Sum(d.sha256[:0])
	if b3 != nil {
		b3.Sum(d.blake3[:0])
	}
	return d, nil
}

// hashAtOnce is how many objects hashObjects reads at once: a shipment's
// key objects, manifest and block table are each a round of requests on a
// long link.
const hashAtOnce = 8

// hashObjects hashes the objects names of shipment id, hashAtOnce at a
// time, and returns each one's digests or error, in the order of names.
func hashObjects(ctx context.Context, tr Transport, id string, names []string, withBLAKE3 bool) ([]objectDigests, []error) {
	digests, errs := make([]objectDigests, len(names)), make([]error, len(names))
	atonce.Each(len(names), hashAtOnce, func(i int) error {
		digests[i], errs[i] = hashObject(ctx, tr, id+"/"+names[i], withBLAKE3)
		return nil
	})
	return digests, errs
}

// CheckSignature checks shipment id at tr against the trusted senders at
// time now: its `signature` must be a valid SSH signature of its `signed`
// statement by a trusted key, the statement must be for this shipment, it
// must list exactly the shipment's objects other than segments (an object
// it does not list, a key slot or a key copy above all, fails) each with
// the SHA-256 read now, and the header and inventory must name the
// shipment (the header with the statement's creation time).
//
// Failures of trust wrap ErrUntrusted and the specific error; errors of
// the transport do not, nor does a shipment that is not there at all
// (ErrNotFound).
func CheckSignature(ctx context.Context, tr Transport, id string, trusted *cipher.AllowedSigners, now time.Time) (*TrustInfo, error) {
	if !archive.ValidID(id) {
		return nil, fmt.Errorf("%q is not a shipment id", id)
	}
	// The statement, its signature and the shipment's listing are read at
	// once (on a long link each is a round of requests or more); what
	// fails is reported in the order they are checked.
	var sb, sig []byte
	var objects map[string]int64
	var serr, gerr, lerr error
	var g errgroup.Group
	g.Go(func() error {
		sb, serr = readSignatureObject(ctx, tr, id, archive.SignedObject, archive.MaxStatement)
		return nil
	})
	g.Go(func() error {
		sig, gerr = readSignatureObject(ctx, tr, id, archive.SignatureObject, maxSignatureObject)
		return nil
	})
	g.Go(func() error { objects, lerr = listSigned(ctx, tr, id); return nil })
	g.Wait()
	if errors.Is(serr, cipher.ErrUnsigned) && absent(ctx, tr, id) {
		return nil, fmt.Errorf("no shipment %s at %s: %w", id, tr, ErrNotFound)
	}
	if serr != nil {
		return nil, serr
	}
	if gerr != nil {
		return nil, gerr
	}
	signer, err := trusted.Verify(sb, sig, now)
	if err != nil {
		return nil, untrusted(id, fmt.Errorf("%s: %w", archive.SignatureObject, err))
	}
	st, err := archive.ParseStatement(sb)
	if err != nil {
		return nil, mismatch(id, "%v", err)
	}
	if st.ID != id {
		return nil, mismatch(id, "it is the statement of shipment %s", st.ID)
	}
	if lerr != nil {
		return nil, lerr
	}
	ti := &TrustInfo{Signer: signer, Statement: st, SHA256: archive.StatementDigest(sb)}
	if err := ti.checkObjects(ctx, tr, objects); err != nil {
		return nil, err
	}
	return ti, nil
}

// readSignatureObject reads `signed` or `signature`: missing is unsigned,
// larger than limit is a bad signature.
func readSignatureObject(ctx context.Context, tr Transport, id, name string, limit int64) ([]byte, error) {
	b, err := getObject(ctx, tr, id+"/"+name, limit)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, untrusted(id, fmt.Errorf("no %s object: %w", name, cipher.ErrUnsigned))
	case errors.Is(err, archive.ErrIntegrity):
		return nil, untrusted(id, fmt.Errorf("%s: larger than %d bytes: %w", name, limit, cipher.ErrBadSignature))
	case err != nil:
		return nil, err
	}
	return b, nil
}

// checkObjects compares the shipment's objects (as listed: by name,
// with their sizes) with the statement, and fills in the header and the
// inventory from the bytes it checked. The objects are read at once;
// what fails is reported in the statement's order, the header and the
// inventory last.
func (t *TrustInfo) checkObjects(ctx context.Context, tr Transport, objects map[string]int64) error {
	id := t.Statement.ID
	var extra []string
	for name := range objects {
		if _, ok := t.Statement.Lookup(name); !ok && archive.InStatement(name) {
			extra = append(extra, name)
		}
	}
	if len(extra) > 0 {
		sort.Strings(extra)
		return mismatch(id, "it does not list %s", strings.Join(extra, ", "))
	}
	var names []string
	for _, o := range t.Statement.Objects {
		if _, ok := objects[o.Name]; ok && o.Name != archive.HeaderObject && o.Name != archive.InventoryObject {
			names = append(names, o.Name)
		}
	}
	var hb, ib []byte
	var herr, ierr error
	var g errgroup.Group
	g.Go(func() error { hb, herr = t.readListed(ctx, tr, archive.HeaderObject, maxHeaderObject); return nil })
	g.Go(func() error {
		ib, ierr = t.readListed(ctx, tr, archive.InventoryObject, maxInventoryObject)
		return nil
	})
	digests, errs := hashObjects(ctx, tr, id, names, false)
	g.Wait()
	at := 0
	for _, o := range t.Statement.Objects {
		if _, ok := objects[o.Name]; !ok {
			return mismatch(id, "%s is missing", o.Name)
		}
		if o.Name == archive.HeaderObject || o.Name == archive.InventoryObject {
			continue
		}
		d, err := digests[at], errs[at]
		at++
		if errors.Is(err, ErrNotFound) {
			return mismatch(id, "%s is missing", o.Name)
		} else if err != nil {
			return err
		}
		if d.sha256 != o.SHA256 {
			return mismatch(id, "%s differs from it", o.Name)
		}
	}
	if herr != nil {
		return herr
	}
	if ierr != nil {
		return ierr
	}
	return t.checkHeaderInventory(hb, ib)
}

// readListed reads the header or the inventory of the shipment whole and
// checks it against the statement.
func (t *TrustInfo) readListed(ctx context.Context, tr Transport, name string, limit int64) ([]byte, error) {
	id := t.Statement.ID
	b, err := getObject(ctx, tr, id+"/"+name, limit)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, mismatch(id, "%s is missing", name)
	case errors.Is(err, archive.ErrIntegrity):
		return nil, mismatch(id, "%s differs from it (larger than %d bytes)", name, limit)
	case err != nil:
		return nil, err
	}
	return b, t.Check(name, b)
}

// checkHeaderInventory parses the header and the inventory, read and
// checked against the statement, and checks that they name the shipment
// (the header with the statement's creation time).
func (t *TrustInfo) checkHeaderInventory(hb, ib []byte) error {
	id := t.Statement.ID
	h, err := archive.ParseHeader(hb)
	if err != nil || h.ID != id {
		return mismatch(id, "the header it lists does not parse or names another shipment (%v)", err)
	}
	inv, err := archive.ParseInventory(ib)
	if err != nil || inv.ID != id {
		return mismatch(id, "the inventory it lists does not parse or names another shipment (%v)", err)
	}
	if !h.Created.Equal(t.Statement.Created) {
		return mismatch(id, "the header was created at %s, the statement says %s",
			h.Created.UTC().Format(time.RFC3339), t.Statement.Created.Format(time.RFC3339))
	}
	t.Header, t.Inventory = h, inv
	return nil
}

// LatestTrusted returns the newest complete shipment at tr that
// CheckSignature vouches for at now. Every newer complete shipment it
// passes over is named with log, with why: dated more than MaxClockSkew
// ahead of now, or not trusted (unsigned, a bad signature, an untrusted
// signer, a statement that does not match; a junk folder that merely looks
// like a shipment is one of these). If no shipment verifies, the error
// wraps ErrUntrusted; if there is no complete shipment, ErrNotFound.
func LatestTrusted(ctx context.Context, tr Transport, trusted *cipher.AllowedSigners, label string, now time.Time, log func(string, ...any)) (*TrustInfo, error) {
	ti, _, err := latestTrusted(ctx, tr, trusted, label, now, log, false)
	return ti, err
}

// latestTrusted is LatestTrusted; with early, see choose.
func latestTrusted(ctx context.Context, tr Transport, trusted *cipher.AllowedSigners, label string, now time.Time, log func(string, ...any), early bool) (*TrustInfo, *prefetch, error) {
	if log == nil {
		log = func(string, ...any) {}
	}
	complete := 0
	var ti *TrustInfo
	// With a label the headers are read to skip the other series; the
	// label of the one chosen is what its signature vouches for, checked
	// again when it is opened (CheckLabel).
	_, pre, err := choose(ctx, tr, now, early, label != "", func(si ShipmentInfo) (bool, error) {
		if label != "" && si.Error == "" && si.Label != label {
			return false, nil
		}
		complete++
		if err := CheckNotFuture(si.ID, now); err != nil {
			log("skipping %s: %v", si.ID, err)
			return false, nil
		}
		t, err := CheckSignature(ctx, tr, si.ID, trusted, now)
		switch {
		case errors.Is(err, ErrUntrusted):
			log("skipping %v", err)
			return false, nil
		case err != nil:
			return false, err
		}
		ti = t
		return true, nil
	})
	switch {
	case err != nil:
		return nil, nil, err
	case ti != nil:
		return ti, pre, nil
	case complete == 0:
		return nil, nil, fmt.Errorf("no complete shipment%s at %s: %w", labelled(label), tr, ErrNotFound)
	}
	return nil, nil, fmt.Errorf("none of the %d complete shipments%s at %s is from a trusted sender: %w", complete, labelled(label), tr, ErrUntrusted)
}

// CheckNotFuture reports an error if shipment id is dated more than
// MaxClockSkew ahead of now.
func CheckNotFuture(id string, now time.Time) error {
	t, err := time.Parse("20060102T150405Z", id[:min(len(id), 16)])
	if err != nil {
		return fmt.Errorf("%q is not a shipment id", id)
	}
	if t.Sub(now) > MaxClockSkew {
		return fmt.Errorf("dated %s, more than %s ahead of this machine's clock (%s)",
			t.Format(time.RFC3339), MaxClockSkew, now.UTC().Truncate(time.Second).Format(time.RFC3339))
	}
	return nil
}

// NewestComplete returns the newest of ships (as List returns them,
// oldest first) that is complete, has a readable header and is not dated
// more than MaxClockSkew ahead of now: what `latest` means without
// trusted senders. Complete shipments it passes over are named with log.
func NewestComplete(ships []ShipmentInfo, now time.Time, log func(string, ...any)) (string, error) {
	if log == nil {
		log = func(string, ...any) {}
	}
	for i := len(ships) - 1; i >= 0; i-- {
		si := ships[i]
		if !si.Complete {
			continue
		}
		if why := notPickable(si, now); why != "" {
			log("skipping %s: %s", si.ID, why)
			continue
		}
		return si.ID, nil
	}
	return "", fmt.Errorf("no complete shipment: %w", ErrNotFound)
}

// ReadStatement reads and parses the statement of shipment id as it is at
// tr, without checking any signature: for showing a shipment's chain and
// previous shipment where no trusted senders are given, never for
// deciding anything. It returns nil and no error when the shipment has
// no statement.
func ReadStatement(ctx context.Context, tr Transport, id string) (*archive.Statement, error) {
	b, err := getObject(ctx, tr, id+"/"+archive.SignedObject, archive.MaxStatement)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	st, err := archive.ParseStatement(b)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", id, archive.SignedObject, err)
	}
	if st.ID != id {
		return nil, fmt.Errorf("%s/%s: it is the statement of shipment %s: %w", id, archive.SignedObject, st.ID, archive.ErrIntegrity)
	}
	return st, nil
}

// CheckStatement checks, without any trusted key, that the objects of
// shipment id match its statement if it has one (what `sha256sum -c
// signed` checks); it returns nil and no error for a shipment without
// one. Anyone who can write to the destination can write a statement:
// this proves consistency, not authenticity. Errors wrap
// archive.ErrIntegrity, not ErrUntrusted.
func CheckStatement(ctx context.Context, tr Transport, id string) (*archive.Statement, error) {
	st, err := ReadStatement(ctx, tr, id)
	if err != nil || st == nil {
		return nil, err
	}
	objects, err := listSigned(ctx, tr, st.ID)
	if err != nil {
		return nil, err
	}
	ti := &TrustInfo{Statement: st}
	if err := ti.checkObjects(ctx, tr, objects); errors.Is(err, ErrUntrusted) {
		return nil, fmt.Errorf("%v (%w)", err, archive.ErrIntegrity)
	} else if err != nil {
		return nil, err
	}
	return st, nil
}

// CheckNotOlder is the rollback check of an update whose next shipment's
// signature was not checked: shipment next must not be dated before
// restoredID, the shipment the restore holds (ids name their creation
// time to the millisecond; within one, either may follow the other). The
// error wraps ErrRollback and archive.ErrIntegrity and names both
// shipments.
func CheckNotOlder(restoredID, next string) error {
	const stamp = len("20060102T150405Z-000") // the time and the milliseconds
	if len(next) >= stamp && len(restoredID) >= stamp && next[:stamp] < restoredID[:stamp] {
		return fmt.Errorf("%w: shipment %s is older than %s, which the restore holds (%w)",
			ErrRollback, next, restoredID, archive.ErrIntegrity)
	}
	return nil
}

// CheckNotRollback is for updating a restore in place: the restore holds
// shipment restoredID of chain restoredChain ("" when unknown: a restore
// of an unsigned shipment), and next is the trusted shipment it would be
// updated to. It refuses a shipment of another chain, or older than the
// one restored (unless it names the restored one as its previous: ids
// sort by time only to the millisecond); the same shipment again is
// allowed. The error wraps ErrRollback and archive.ErrIntegrity and names
// both shipments.
func CheckNotRollback(restoredID, restoredChain string, next *TrustInfo) error {
	st := next.Statement
	switch {
	case restoredChain != "" && st.Chain != restoredChain:
		return fmt.Errorf("%w: shipment %s belongs to chain %s, the restore holds %s of chain %s (%w)",
			ErrRollback, st.ID, st.Chain, restoredID, restoredChain, archive.ErrIntegrity)
	case st.ID == restoredID || st.Previous == restoredID:
		return nil
	case st.ID < restoredID:
		return fmt.Errorf("%w: shipment %s is older than %s, which the restore holds (%w)",
			ErrRollback, st.ID, restoredID, archive.ErrIntegrity)
	}
	return nil
}
