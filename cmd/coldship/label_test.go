package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNameSelectsSeries: two VMs' series at one destination, told apart by
// send --name. receive, verify and show --name LABEL take the latest of
// that label, refuse a shipment of another named by its id, and (with
// trusted senders) do not take a shipment of another series whose header
// was relabelled, though signed by the same key.
func TestNameSelectsSeries(t *testing.T) {
	dir := t.TempDir()
	s := newTrustSite(t, filepath.Join(dir, "dest"))
	web, db := filepath.Join(dir, "web.img"), filepath.Join(dir, "db.img")
	makeImage(t, web, 1<<20, region{0, 1 << 20, "random"})
	makeImage(t, db, 1<<20, region{0, 1 << 20, "random"})
	webID := s.sendSigned(web, "--name", "web01")
	time.Sleep(1100 * time.Millisecond) // ids are dated to the second
	dbID := s.sendSigned(db, "--name", "db01", "--state-dir", filepath.Join(dir, "db-state"))

	receive := func(out string, args ...string) result {
		return s.run(append([]string{"receive", s.dest, "--out", filepath.Join(dir, out), "-i", s.key, "-q"}, args...)...)
	}
	if r := receive("newest"); r.code != 0 {
		t.Fatalf("receive: %d %s", r.code, r.stderr)
	}
	sameFile(t, db, filepath.Join(dir, "newest", "db.img"))
	for _, args := range [][]string{{"--name", "web01"}, {"--name", "web01", "--trusted-senders", s.allowed}} {
		out := "web" + string(rune('0'+len(args)))
		if r := receive(out, args...); r.code != 0 {
			t.Fatalf("receive %s: %d %s", args, r.code, r.stderr)
		}
		sameFile(t, web, filepath.Join(dir, out, "web.img"))
		missing(t, filepath.Join(dir, out, "db.img"))
	}
	for _, cmd := range [][]string{
		{"receive", s.dest, dbID, "--out", filepath.Join(dir, "refused"), "-i", s.key, "--name", "web01"},
		{"verify", s.dest, dbID, "--name", "web01"},
		{"verify", s.dest, dbID, "--name", "web01", "-i", s.key},
		{"show", s.dest, dbID, "--name", "web01", "-i", s.key},
	} {
		if r := s.run(cmd...); r.code == 0 || !strings.Contains(r.stderr, `is labelled "db01", not "web01"`) {
			t.Errorf("%s: exit %d, %q", cmd, r.code, r.stderr)
		}
	}
	missing(t, filepath.Join(dir, "refused"))
	if r := s.run("verify", s.dest, "--name", "nope"); r.code == 0 || !strings.Contains(r.stderr, `no complete shipment labelled "nope"`) {
		t.Errorf("verify --name nope: exit %d, %q", r.code, r.stderr)
	}
	if r := s.run("show", s.dest, "--name", "web01", "-i", s.key); r.code != 0 || !strings.Contains(r.stdout, webID) {
		t.Errorf("show --name web01: exit %d, %q", r.code, r.stdout)
	}
	if r := s.run("receive", s.dest, "--out", filepath.Join(dir, "json"), "-i", s.key, "--name", "web01", "--json"); r.code != 0 ||
		summaryOf(t, r.stdout)["label"] != "web01" || summaryOf(t, r.stdout)["shipment"] != webID {
		t.Errorf("receive --json --name web01: exit %d, %q", r.code, r.stdout)
	}
	if r := s.run("list", s.dest, "--name", "db01"); r.code != 0 || !strings.Contains(r.stdout, dbID) || strings.Contains(r.stdout, webID) {
		t.Errorf("list --name db01: exit %d, %q", r.code, r.stdout)
	}
	if r := s.run("list", s.dest, "--name", "nope"); r.code != 0 || r.stdout != "" || !strings.Contains(r.stderr, `no shipment labelled "nope"`) {
		t.Errorf("list --name nope: exit %d, %q, %q", r.code, r.stdout, r.stderr)
	}

	// The other series' newer shipment relabelled at DEST: not taken as
	// web01's, whether or not the signature is checked.
	hp := filepath.Join(s.dest, dbID, "header")
	b := mustReadFile(t, hp)
	relabelled := bytes.Replace(b, []byte(`"label":"db01"`), []byte(`"label":"web01"`), 1)
	if bytes.Equal(relabelled, b) {
		t.Fatalf("no label in the header: %q", b)
	}
	if err := os.WriteFile(hp, relabelled, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"--name", "web01"}, {"--name", "web01", "--trusted-senders", s.allowed}} {
		out := filepath.Join(dir, "relabelled"+string(rune('0'+len(args))))
		r := s.run(append([]string{"receive", s.dest, "--out", out, "-i", s.key, "-q"}, args...)...)
		if _, err := os.Stat(filepath.Join(out, "db.img")); err == nil {
			t.Errorf("receive %s restored the other series' image (exit %d)", args, r.code)
		}
		if r.code == 0 {
			sameFile(t, web, filepath.Join(out, "web.img"))
		}
		t.Logf("receive %s of a relabelled shipment: exit %d, %s", args, r.code, r.stderr)
	}
}

// seriesSender returns a destination and a send of one small image to it
// with the given arguments (--name LABEL), returning the shipment id.
func seriesSender(t *testing.T) (dest string, send func(args ...string) string) {
	_, rcpt := keypair(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	makeImage(t, img, 1<<20, region{0, 64 << 10, "random"})
	dest = filepath.Join(dir, "dest")
	return dest, func(args ...string) string {
		r := mustRun(t, append([]string{"send", img, "--to", dest, "-r", rcpt, "--no-resume"}, args...)...)
		time.Sleep(1100 * time.Millisecond) // ids are dated to the second
		return strings.TrimSpace(r.stdout)
	}
}

// TestPruneSeriesApart: without --name, prune applies its rules to each
// label's series apart (and to the unlabelled shipments as one more), as
// restic's forget groups snapshots: --keep-last 1 at a destination that
// two VMs share deleted the only shipment of the VM that shipped first.
func TestPruneSeriesApart(t *testing.T) {
	dest, send := seriesSender(t)
	webOld, webNew := send("--name", "web01"), send("--name", "web01")
	db, plain := send("--name", "db01"), send()
	dry := mustRun(t, "prune", dest, "--keep-last", "1", "--dry-run", "--json")
	labels := map[string]string{}
	for _, o := range jsonLines(t, dry.stdout) {
		if id, ok := o["id"].(string); ok {
			labels[id], _ = o["label"].(string)
		}
	}
	if labels[webOld] != "web01" || labels[db] != "db01" || labels[plain] != "" {
		t.Errorf("prune --json labels: %v; want web01 for %s, db01 for %s, none for %s", labels, webOld, db, plain)
	}
	r := mustRun(t, "prune", dest, "--keep-last", "1")
	if !strings.Contains(r.stderr, "db01: last 1") || !strings.Contains(r.stderr, "web01: last 1") {
		t.Errorf("prune's reasons do not name the series:\n%s", r.stderr)
	}
	if got := strings.TrimSpace(r.stdout); got != webOld {
		t.Errorf("prune --keep-last 1 deleted %q, want only %s (the older of web01's two); stderr:\n%s", got, webOld, r.stderr)
	}
	listed := mustRun(t, "list", dest).stdout
	for _, id := range []string{webNew, db, plain} {
		if !strings.Contains(listed, id) {
			t.Errorf("%s, the only or newest shipment of its series, is gone:\n%s", id, listed)
		}
	}
}

// TestVerifyAllSeriesApart: an incomplete shipment newer than the newest
// complete one of its own series may be a send still running, whatever
// another series shipped since: verify --all does not report it and prune
// keeps it, as they do for a single series.
func TestVerifyAllSeriesApart(t *testing.T) {
	dest, send := seriesSender(t)
	send("--name", "web01")
	running := send("--name", "web01")
	if err := os.Remove(filepath.Join(dest, running, "manifest")); err != nil { // as while its send runs
		t.Fatal(err)
	}
	send("--name", "db01")
	if r := run(t, "verify", "--all", dest); r.code != 0 || strings.Contains(r.stdout+r.stderr, running) {
		t.Errorf("verify --all: exit %d, reporting %s, which web01's send may still be writing:\n%s%s", r.code, running, r.stdout, r.stderr)
	}
	if r := mustRun(t, "prune", dest, "--keep-last", "1", "--dry-run"); strings.Contains(r.stdout, running) {
		t.Errorf("prune would delete %s, which web01's send may still be writing:\n%s", running, r.stderr)
	}
}

// TestPruneSeriesEscaped: a label holding a tab or a newline is quoted in
// prune's lines as list quotes it, so that each shipment stays one line
// with its columns aligned (a newline used to split a decision in two).
func TestPruneSeriesEscaped(t *testing.T) {
	dest, send := seriesSender(t)
	send("--name", "web01\nprod\tsite")
	r := mustRun(t, "prune", dest, "--keep-last", "1", "--dry-run")
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"web01\nprod\tsite": last 1`) {
		t.Errorf("prune --dry-run stderr:\n%s\nwant one decision line naming the series quoted", r.stderr)
	}
}
