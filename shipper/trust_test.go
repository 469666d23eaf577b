package shipper_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"golang.org/x/crypto/ssh"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/local"
)

// signingFixture is a source directory, a local destination, DR state and
// a trusted signing key.
type signingFixture struct {
	dir      string
	src      string
	dest     string
	tr       shipper.Transport
	state    string
	rcpt     age.Recipient
	signer   ssh.Signer
	trusted  *cipher.AllowedSigners
	pubLine  string
	sources  []archive.Source
	identity *age.X25519Identity
	// inventories holds the SHA-256 of the inventory each send put.
	inventories map[string]archive.Digest
}

func newSigner(t *testing.T) (ssh.Signer, string) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey())))
}

func newSigningFixture(t *testing.T) *signingFixture {
	t.Helper()
	f := &signingFixture{dir: t.TempDir(), inventories: map[string]archive.Digest{}}
	f.src = filepath.Join(f.dir, "disk.img")
	writeRandom(t, f.src, 8*64<<10)
	var err error
	if f.sources, err = archive.CollectSources([]string{f.src}); err != nil {
		t.Fatal(err)
	}
	f.dest = filepath.Join(f.dir, "dest")
	f.tr, _ = local.New(f.dest)
	f.state = filepath.Join(f.dir, "state")
	f.identity, f.rcpt = newIdentity(t)
	f.signer, f.pubLine = newSigner(t)
	f.trusted = f.allow(t, `site-a namespaces="coldship" `+f.pubLine)
	return f
}

func (f *signingFixture) allow(t *testing.T, lines string) *cipher.AllowedSigners {
	t.Helper()
	a, err := cipher.ParseAllowedSigners("allowed_signers", []byte(lines+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// send ships the source (incremental with base "latest" when asked) dated
// now, unsigned. It lists the source anew, as every run of send does.
func (f *signingFixture) send(t *testing.T, base string, now time.Time) string {
	t.Helper()
	sources, err := archive.CollectSources([]string{f.src})
	if err != nil {
		t.Fatal(err)
	}
	res, err := shipper.Send(context.Background(), f.tr, sources, shipper.SendOptions{
		Recipients: []age.Recipient{f.rcpt}, BlockSize: 64 << 10, Jobs: 2, Streams: 1,
		StateDir: f.state, Dest: f.dest, RecipientsID: "r1", Base: base, Now: func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	f.inventories[res.ID] = res.Inventory
	return res.ID
}

// sign signs shipment id as the next of the fixture's chain, as send
// --sign-key does.
func (f *signingFixture) sign(t *testing.T, id string) (shipper.ChainLink, archive.Digest) {
	t.Helper()
	cs, err := shipper.OpenChainState(f.state, f.dest, f.sources, "")
	if err != nil {
		t.Fatal(err)
	}
	link, err := cs.Link(context.Background(), f.tr, id, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := shipper.SignShipment(context.Background(), f.tr, id, f.inventories[id], f.signer, link)
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.Record(id, sum); err != nil {
		t.Fatal(err)
	}
	return link, sum
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed (make test installs it)", name)
		}
		t.Skipf("%s is not installed; run make test-deps", name)
	}
	return p
}

func TestSignAndCheckChain(t *testing.T) {
	f := newSigningFixture(t)
	ctx := context.Background()
	now := time.Now()
	first := f.send(t, "latest", now.Add(-time.Hour))
	link1, sum1 := f.sign(t, first)
	if !archive.ValidChainID(link1.Chain) || link1.Previous != "" {
		t.Fatalf("first link %+v", link1)
	}
	fh, _ := os.OpenFile(f.src, os.O_WRONLY, 0)
	fh.WriteAt([]byte("one changed block"), 3*64<<10)
	fh.Close()
	second := f.send(t, "latest", now)
	link2, _ := f.sign(t, second)
	if link2.Chain != link1.Chain || link2.Previous != first || link2.PreviousSHA256 != sum1 {
		t.Fatalf("second link %+v, want chain %s after %s", link2, link1.Chain, first)
	}

	ti, err := shipper.CheckSignature(ctx, f.tr, second, f.trusted, now)
	if err != nil {
		t.Fatal(err)
	}
	st := ti.Statement
	if ti.Signer.Principal() != "site-a" || st.ID != second || st.Chain != link1.Chain || st.Previous != first ||
		st.PreviousSHA256 != sum1 || ti.Header.ID != second || ti.Inventory.ID != second || ti.Header.Base != first {
		t.Fatalf("trust info %+v %+v", ti.Signer, st)
	}
	// The incremental shipment's copy of its base's key is signed.
	if _, ok := st.Lookup(archive.BaseKeyObject(first, 0)); !ok {
		t.Fatalf("statement does not list the base key copy: %+v", st.Objects)
	}
	signed, _ := os.ReadFile(filepath.Join(f.dest, second, archive.SignedObject))
	if ti.SHA256 != archive.StatementDigest(signed) {
		t.Fatal("TrustInfo.SHA256 is not the statement's digest")
	}
	if err := ti.Check(archive.ManifestObject, mustRead(t, filepath.Join(f.dest, second, "manifest"))); err != nil {
		t.Fatal(err)
	}
	if err := ti.Check(archive.ManifestObject, []byte("forged")); !errors.Is(err, shipper.ErrStatementMismatch) {
		t.Fatalf("Check of a changed manifest: %v", err)
	}

	// An operator can check it with coreutils alone.
	cmd := exec.Command(needTool(t, "sha256sum"), "-c", "--strict", archive.SignedObject)
	cmd.Dir = filepath.Join(f.dest, second)
	if out, err := cmd.CombinedOutput(); err != nil || strings.Count(string(out), ": OK") != len(st.Objects) {
		t.Fatalf("sha256sum -c: %v\n%s", err, out)
	}
	// Receive still works on a signed shipment.
	restore(t, f.tr, second, f.identity, mustRead(t, f.src))
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCheckSignatureRefuses tampers with a signed shipment in every way the
// check must catch.
func TestCheckSignatureRefuses(t *testing.T) {
	f := newSigningFixture(t)
	now := time.Now()
	other := f.send(t, "", now.Add(-2*time.Hour))
	f.sign(t, other)
	id := f.send(t, "", now.Add(-time.Hour))
	f.sign(t, id)
	untrustedSigner, _ := newSigner(t)
	orig := filepath.Join(f.dir, "orig")
	if err := os.CopyFS(orig, os.DirFS(filepath.Join(f.dest, id))); err != nil {
		t.Fatal(err)
	}
	at := func(name string) string { return filepath.Join(f.dest, id, filepath.FromSlash(name)) }
	put := func(name string, b []byte) {
		os.MkdirAll(filepath.Dir(at(name)), 0o755)
		os.WriteFile(at(name), b, 0o644)
	}
	// resign signs a statement of the shipment as it is, edited by edit.
	resign := func(signer ssh.Signer, edit func(*archive.Statement)) func() {
		return func() {
			st, err := archive.ParseStatement(mustRead(t, at(archive.SignedObject)))
			if err != nil {
				t.Fatal(err)
			}
			edit(st)
			b, err := st.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			sig, err := cipher.Sign(signer, b)
			if err != nil {
				t.Fatal(err)
			}
			put(archive.SignedObject, b)
			put(archive.SignatureObject, sig)
		}
	}
	rcptKey := func() []byte {
		k, _ := cipher.NewKey()
		b, _ := k.Wrap(f.rcpt) // what an attacker with the public recipient can make
		return b
	}
	for name, tc := range map[string]struct {
		tamper  func()
		trusted string
		want    error
	}{
		"no signature":      {func() { os.Remove(at(archive.SignatureObject)) }, "", cipher.ErrUnsigned},
		"no statement":      {func() { os.Remove(at(archive.SignedObject)) }, "", cipher.ErrUnsigned},
		"garbage signature": {func() { put(archive.SignatureObject, []byte("garbage")) }, "", cipher.ErrBadSignature},
		"huge signature":    {func() { put(archive.SignatureObject, bytes.Repeat([]byte("x"), 1<<20)) }, "", cipher.ErrBadSignature},
		"statement edited": {func() {
			put(archive.SignedObject, bytes.Replace(mustRead(t, at(archive.SignedObject)), []byte("keys/0000"), []byte("keys/0001"), 1))
		}, "", cipher.ErrBadSignature},
		"untrusted signer":    {resign(untrustedSigner, func(*archive.Statement) {}), "", cipher.ErrUntrustedSigner},
		"namespaces git":      {nil, `site-a namespaces="git" ` + f.pubLine, cipher.ErrUntrustedSigner},
		"expired key":         {nil, `site-a valid-before="20200101Z" ` + f.pubLine, cipher.ErrUntrustedSigner},
		"key slot swapped":    {func() { put("keys/0000", rcptKey()) }, "", shipper.ErrStatementMismatch},
		"key slot added":      {func() { put("keys/0001", rcptKey()) }, "", shipper.ErrStatementMismatch},
		"base key copy added": {func() { put(archive.BaseKeyObject(other, 0), rcptKey()) }, "", shipper.ErrStatementMismatch},
		"header changed": {func() {
			put("header", bytes.Replace(mustRead(t, at("header")), []byte(`"block_size"`), []byte(` "block_size"`), 1))
		}, "", shipper.ErrStatementMismatch},
		"inventory changed":    {func() { put("inventory", append(mustRead(t, at("inventory")), ' ')) }, "", shipper.ErrStatementMismatch},
		"manifest deleted":     {func() { os.Remove(at("manifest")) }, "", shipper.ErrStatementMismatch},
		"statement of another": {func() { copySigned(t, f.dest, other, id) }, "", shipper.ErrStatementMismatch},
		"omits the key slot": {resign(f.signer, func(st *archive.Statement) {
			st.Objects = slicesDelete(st.Objects, "keys/0000")
		}), "", shipper.ErrStatementMismatch},
		"junk object": {func() { put("README", []byte("hello")) }, "", shipper.ErrStatementMismatch},
	} {
		t.Run(name, func(t *testing.T) {
			os.RemoveAll(filepath.Join(f.dest, id))
			if err := os.CopyFS(filepath.Join(f.dest, id), os.DirFS(orig)); err != nil {
				t.Fatal(err)
			}
			if tc.tamper != nil {
				tc.tamper()
			}
			trusted := f.trusted
			if tc.trusted != "" {
				trusted = f.allow(t, tc.trusted)
			}
			_, err := shipper.CheckSignature(context.Background(), f.tr, id, trusted, now)
			if !errors.Is(err, tc.want) || !errors.Is(err, shipper.ErrUntrusted) || errors.Is(err, archive.ErrIntegrity) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), id) {
				t.Errorf("error does not name the shipment: %v", err)
			}
		})
	}
	// Segments are bound by the sealed manifest, not by the statement: a
	// changed segment is for the receive to find (exit 5).
	os.RemoveAll(filepath.Join(f.dest, id))
	os.CopyFS(filepath.Join(f.dest, id), os.DirFS(orig))
	if _, err := shipper.CheckSignature(context.Background(), f.tr, id, f.trusted, now); err != nil {
		t.Fatalf("the untouched shipment: %v", err)
	}
}

func copySigned(t *testing.T, dest, from, to string) {
	for _, n := range []string{archive.SignedObject, archive.SignatureObject} {
		if err := os.WriteFile(filepath.Join(dest, to, n), mustRead(t, filepath.Join(dest, from, n)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func slicesDelete(es []archive.StatementEntry, name string) []archive.StatementEntry {
	var out []archive.StatementEntry
	for _, e := range es {
		if e.Name != name {
			out = append(out, e)
		}
	}
	return out
}

func TestSignShipmentRefuses(t *testing.T) {
	f := newSigningFixture(t)
	id := f.send(t, "", time.Now())
	at := func(name string) string { return filepath.Join(f.dest, id, name) }
	link := shipper.ChainLink{Chain: archive.NewChainID()}
	aside := filepath.Join(f.dir, "aside")
	for name, tc := range map[string]struct {
		tamper, undo func()
	}{
		"incomplete": {
			func() { os.Rename(at("manifest"), aside) }, func() { os.Rename(aside, at("manifest")) }},
		"object not in the inventory": {
			func() { os.WriteFile(at("keys/0001"), []byte("x"), 0o644) }, func() { os.Remove(at("keys/0001")) }},
		"object changed since the send": {
			func() { os.Rename(at("keys/0000"), aside); os.WriteFile(at("keys/0000"), []byte("x"), 0o644) },
			func() { os.Rename(aside, at("keys/0000")) }},
		"inventory object missing": {
			func() { os.Rename(at("keys/0000"), aside) }, func() { os.Rename(aside, at("keys/0000")) }},
		// Whoever can write to the destination swaps, between the send and
		// its signature, a key slot of their own in, with an inventory
		// that agrees: the send must not sign what it did not write.
		"key slot and inventory swapped since the send": {
			func() { swapKeySlot(t, filepath.Join(f.dest, id), filepath.Join(f.dir, "swapped")) },
			func() { restoreSwapped(t, filepath.Join(f.dest, id), filepath.Join(f.dir, "swapped")) }},
	} {
		t.Run(name, func(t *testing.T) {
			tc.tamper()
			defer tc.undo()
			if _, err := shipper.SignShipment(context.Background(), f.tr, id, f.inventories[id], f.signer, link); err == nil {
				t.Fatal("signed")
			}
			if _, err := os.Stat(at(archive.SignatureObject)); err == nil {
				t.Fatal("a signature was written")
			}
		})
	}
	if _, err := shipper.SignShipment(context.Background(), f.tr, id, f.inventories[id], f.signer, link); err != nil {
		t.Fatalf("the untouched shipment: %v", err)
	}
}

// swapKeySlot replaces keys/0000 of the shipment in folder dir with other
// bytes and its inventory with one that lists them, keeping the originals
// in aside.
func swapKeySlot(t *testing.T, dir, aside string) {
	t.Helper()
	if err := os.MkdirAll(aside, 0o755); err != nil {
		t.Fatal(err)
	}
	ib, err := os.ReadFile(filepath.Join(dir, archive.InventoryObject))
	if err != nil {
		t.Fatal(err)
	}
	inv, err := archive.ParseInventory(ib)
	if err != nil {
		t.Fatal(err)
	}
	slot := []byte("age-encryption.org/v1\n-> X25519 an attacker's key slot\n")
	for i := range inv.Objects {
		if inv.Objects[i].Name == "keys/0000" {
			inv.Objects[i].Size, inv.Objects[i].BLAKE3 = int64(len(slot)), archive.ObjectDigest(slot)
		}
	}
	forged, err := inv.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{archive.InventoryObject, "keys/0000"} {
		if err := os.Rename(filepath.Join(dir, name), filepath.Join(aside, filepath.Base(name))); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, archive.InventoryObject), forged, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "keys/0000"), slot, 0o644); err != nil {
		t.Fatal(err)
	}
}

// restoreSwapped undoes swapKeySlot.
func restoreSwapped(t *testing.T, dir, aside string) {
	t.Helper()
	for _, name := range []string{archive.InventoryObject, "keys/0000"} {
		if err := os.Rename(filepath.Join(aside, filepath.Base(name)), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestLatestTrusted(t *testing.T) {
	f := newSigningFixture(t)
	ctx := context.Background()
	now := time.Now()
	old := f.send(t, "", now.Add(-3*time.Hour))
	f.sign(t, old)
	newest := f.send(t, "", now.Add(-2*time.Hour))
	f.sign(t, newest)
	// An attacker's shipments: unsigned, signed by another key, and one
	// signed by the trusted key but dated two days ahead.
	unsigned := f.send(t, "", now.Add(-time.Hour))
	byOther := f.send(t, "", now.Add(-30*time.Minute))
	otherSigner, _ := newSigner(t)
	if _, err := shipper.SignShipment(ctx, f.tr, byOther, f.inventories[byOther], otherSigner, shipper.ChainLink{Chain: archive.NewChainID()}); err != nil {
		t.Fatal(err)
	}
	future := f.send(t, "", now.Add(48*time.Hour))
	f.sign(t, future)
	// A junk folder that looks like a shipment.
	os.MkdirAll(filepath.Join(f.dest, "29991231T235959Z-ffffffff"), 0o755)
	os.WriteFile(filepath.Join(f.dest, "29991231T235959Z-ffffffff", "manifest"), []byte("junk"), 0o644)
	junk := now.Add(time.Hour).UTC().Format("20060102T150405Z") + "-eeeeeeee"
	os.MkdirAll(filepath.Join(f.dest, junk), 0o755)
	os.WriteFile(filepath.Join(f.dest, junk, "manifest"), []byte("junk"), 0o644)

	var logs []string
	logf := func(format string, a ...any) { logs = append(logs, fmt.Sprintf(format, a...)) }
	ti, err := shipper.LatestTrusted(ctx, f.tr, f.trusted, "", now, logf)
	if err != nil {
		t.Fatal(err)
	}
	if ti.Statement.ID != newest {
		t.Fatalf("latest trusted is %s, want %s", ti.Statement.ID, newest)
	}
	all := strings.Join(logs, "\n")
	for _, want := range []string{
		"skipping 29991231T235959Z-ffffffff: dated 2999-12-31T23:59:59Z, more than 24h0m0s ahead",
		"skipping " + future + ": dated",
		"skipping shipment " + byOther + ": signature: signer is not trusted",
		"skipping shipment " + unsigned + ": no signed object: not signed",
		"skipping shipment " + junk + ": no signed object: not signed",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("log does not say %q:\n%s", want, all)
		}
	}
	if strings.Contains(all, newest) || strings.Contains(all, old) {
		t.Errorf("log names a trusted shipment:\n%s", all)
	}
	if len(logs) != 5 {
		t.Errorf("%d lines logged, want one per skipped shipment:\n%s", len(logs), all)
	}
	// OpenLatest chooses the same and opens it with its checked signature
	// (its early reads were for the junk folder, the newest not dated
	// ahead, and are given up).
	id, sh, err := shipper.OpenLatest(ctx, f.tr, f.trusted, "", now, nil, []age.Identity{f.identity})
	if err != nil || id != newest || sh.Trust() == nil || sh.Trust().Statement.ID != newest {
		t.Fatalf("OpenLatest with trusted senders = %s, %v", id, err)
	}

	// No trusted shipment at all: an untrusted error, not "not found".
	otherPub := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(otherSigner.PublicKey())))
	if ti, err := shipper.LatestTrusted(ctx, f.tr, f.allow(t, "site-b "+otherPub), "", now, nil); err != nil || ti.Statement.ID != byOther {
		t.Fatalf("trusting the other key: %v", err)
	}
	if _, err := shipper.LatestTrusted(ctx, f.tr, f.allow(t, `site-b namespaces="git" `+otherPub), "", now, nil); !errors.Is(err, shipper.ErrUntrusted) {
		t.Fatalf("no trusted shipment: %v", err)
	}
	empty, _ := local.New(filepath.Join(f.dir, "empty"))
	if _, err := shipper.LatestTrusted(ctx, empty, f.trusted, "", now, nil); !errors.Is(err, shipper.ErrNotFound) {
		t.Fatalf("empty destination: %v", err)
	}
}

func TestNewestComplete(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	ships := []shipper.ShipmentInfo{
		{ID: "20261120T000000Z-00000001", Complete: true},
		{ID: "20261121T000000Z-00000002", Complete: true},
		{ID: "20261122T000000Z-00000003", Complete: false},
		{ID: "20261122T010000Z-00000004", Complete: true, Error: "header: malformed"},
		{ID: "20261123T115959Z-00000005", Complete: true},
		{ID: "29991231T235959Z-ffffffff", Complete: true},
	}
	var logs []string
	id, err := shipper.NewestComplete(ships, now, func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) })
	if err != nil || id != "20261123T115959Z-00000005" {
		t.Fatalf("got %s, %v: a shipment within 24 h ahead is still the latest", id, err)
	}
	if len(logs) != 1 || !strings.Contains(logs[0], "29991231T235959Z-ffffffff: dated") {
		t.Fatalf("logs %q", logs)
	}
	logs = nil
	id, _ = shipper.NewestComplete(ships[:5], now.Add(-time.Hour), func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) })
	if id != "20261121T000000Z-00000002" || len(logs) != 2 || !strings.Contains(logs[1], "header: malformed") {
		t.Fatalf("got %s, logs %q", id, logs)
	}
	if _, err := shipper.NewestComplete(ships[2:3], now, nil); !errors.Is(err, shipper.ErrNotFound) {
		t.Fatalf("no complete shipment: %v", err)
	}
}

func TestCheckNotRollback(t *testing.T) {
	const chain, otherChain = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
	next := func(id, prev, chain string) *shipper.TrustInfo {
		return &shipper.TrustInfo{Statement: &archive.Statement{ID: id, Previous: prev, Chain: chain}}
	}
	restored := "20261122T010000Z-00000002"
	for name, tc := range map[string]struct {
		next          *shipper.TrustInfo
		restoredChain string
		ok            bool
	}{
		"newer":                {next("20261123T010000Z-00000003", restored, chain), chain, true},
		"newer, gap":           {next("20261124T010000Z-00000004", "20261123T010000Z-00000003", chain), chain, true},
		"same":                 {next(restored, "", chain), chain, true},
		"older":                {next("20261121T010000Z-00000001", "", chain), chain, false},
		"same second, follows": {next("20261122T010000Z-00000001", restored, chain), chain, true},
		"other chain":          {next("20261123T010000Z-00000003", "", otherChain), chain, false},
		"unsigned restore":     {next("20261123T010000Z-00000003", "", otherChain), "", true},
		"unsigned, older":      {next("20261121T010000Z-00000001", "", otherChain), "", false},
	} {
		t.Run(name, func(t *testing.T) {
			err := shipper.CheckNotRollback(restored, tc.restoredChain, tc.next)
			if (err == nil) != tc.ok {
				t.Fatalf("got %v, want ok=%v", err, tc.ok)
			}
			if err != nil && (!errors.Is(err, shipper.ErrRollback) || !errors.Is(err, archive.ErrIntegrity) ||
				!strings.Contains(err.Error(), restored) || !strings.Contains(err.Error(), tc.next.Statement.ID)) {
				t.Fatalf("error %v: want ErrRollback, exit 5, both ids", err)
			}
		})
	}
}

func TestChainState(t *testing.T) {
	f := newSigningFixture(t)
	ctx := context.Background()
	a := f.send(t, "", time.Now().Add(-time.Hour))
	link, sum := f.sign(t, a)
	path := filepath.Join(f.state, "chains")
	ents, _ := os.ReadDir(path)
	if len(ents) != 1 {
		t.Fatalf("chain state files: %v", ents)
	}
	file := filepath.Join(path, ents[0].Name())
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Fatalf("chain state mode %v", fi.Mode())
	}
	open := func(sources []archive.Source) *shipper.ChainState {
		cs, err := shipper.OpenChainState(f.state, f.dest, sources, "")
		if err != nil {
			t.Fatal(err)
		}
		return cs
	}
	var logs []string
	logf := func(format string, a ...any) { logs = append(logs, fmt.Sprintf(format, a...)) }

	b := f.send(t, "", time.Now())
	got, err := open(f.sources).Link(ctx, f.tr, b, logf)
	if err != nil || got.Chain != link.Chain || got.Previous != a || got.PreviousSHA256 != sum || len(logs) != 0 {
		t.Fatalf("link %+v, %v, logs %q", got, err, logs)
	}
	if _, err := open(f.sources).Link(ctx, f.tr, a, logf); err == nil {
		t.Fatal("linked a shipment to itself")
	}
	// The previous statement changed at the destination: said, and the
	// recorded digest is kept.
	signed := filepath.Join(f.dest, a, archive.SignedObject)
	orig := mustRead(t, signed)
	os.WriteFile(signed, append(bytes.Clone(orig), '\n'), 0o644)
	if got, _ := open(f.sources).Link(ctx, f.tr, b, logf); got.PreviousSHA256 != sum || len(logs) != 1 || !strings.Contains(logs[0], "changed at the destination") {
		t.Fatalf("link %+v, logs %q", got, logs)
	}
	// Pruned: the recorded digest, silently.
	os.RemoveAll(filepath.Join(f.dest, a))
	logs = nil
	if got, _ := open(f.sources).Link(ctx, f.tr, b, logf); got.PreviousSHA256 != sum || len(logs) != 0 {
		t.Fatalf("link %+v, logs %q", got, logs)
	}
	// Other sources: another chain.
	src2 := filepath.Join(f.dir, "other.img")
	writeRandom(t, src2, 1000)
	sources2, _ := archive.CollectSources([]string{src2})
	if got, _ := open(sources2).Link(ctx, f.tr, b, logf); got.Chain == link.Chain || got.Previous != "" {
		t.Fatalf("other sources share the chain: %+v", got)
	}
	// Damaged state: a new chain, said.
	os.WriteFile(file, []byte("{not json"), 0o600)
	logs = nil
	if got, _ := open(f.sources).Link(ctx, f.tr, b, logf); got.Chain == link.Chain || got.Previous != "" ||
		len(logs) != 1 || !strings.Contains(logs[0], "damaged") {
		t.Fatalf("link %+v, logs %q", got, logs)
	}
}

// TestChainStatePerLabel: two VMs whose files have the same names, sent
// to one destination under their own labels, keep a chain each (one chain
// for both made each statement name the other VM's last shipment as its
// previous); a labelled series without a chain of its own continues the
// one an earlier coldship kept for its sources, so that `receive --into`
// needs no --allow-rollback after the upgrade.
func TestChainStatePerLabel(t *testing.T) {
	f := newSigningFixture(t)
	ctx := context.Background()
	link := func(label, id string) shipper.ChainLink {
		t.Helper()
		cs, err := shipper.OpenChainState(f.state, f.dest, f.sources, label)
		if err != nil {
			t.Fatal(err)
		}
		l, err := cs.Link(ctx, f.tr, id, t.Errorf)
		if err != nil {
			t.Fatal(err)
		}
		if err := cs.Record(id, archive.Digest{byte(len(id))}); err != nil {
			t.Fatal(err)
		}
		return l
	}
	now := time.Now().Add(-time.Hour)
	next := func() string { now = now.Add(time.Second); return f.send(t, "", now) }

	// Without labels, as an earlier coldship kept it for both VMs.
	x := next()
	former, _ := f.sign(t, x)
	a1, b1 := next(), next()
	if l := link("a", a1); l.Chain != former.Chain || l.Previous != x {
		t.Fatalf("a's first link after the upgrade %+v: want chain %s after %s", l, former.Chain, x)
	}
	if l := link("b", b1); l.Chain != former.Chain || l.Previous != x {
		t.Fatalf("b's first link after the upgrade %+v: want chain %s after %s", l, former.Chain, x)
	}
	a2, b2 := next(), next()
	if l := link("a", a2); l.Chain != former.Chain || l.Previous != a1 {
		t.Errorf("a's second link %+v: want the previous %s, a's own", l, a1)
	}
	if l := link("b", b2); l.Chain != former.Chain || l.Previous != b1 {
		t.Errorf("b's second link %+v: want the previous %s, b's own", l, b1)
	}
	// The unlabelled series keeps its own.
	if l := link("", next()); l.Chain != former.Chain || l.Previous != x {
		t.Errorf("the unlabelled series' link %+v: want the previous %s", l, x)
	}

	// Labels from the start: a chain each.
	g := newSigningFixture(t)
	f.state, f.dest, f.tr, f.sources = g.state, g.dest, g.tr, g.sources
	la, lb := link("a", next()), link("b", next())
	if la.Chain == lb.Chain || la.Previous != "" || lb.Previous != "" {
		t.Errorf("two labels' first links %+v and %+v: want two new chains", la, lb)
	}
}
