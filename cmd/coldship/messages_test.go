package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCountsInMessages checks that the sentences of verify --all and prune
// count in the singular for one: "1 shipment", not "1 shipments".
func TestCountsInMessages(t *testing.T) {
	dest, _, id, _ := sendSample(t)
	r := mustRun(t, "verify", "--all", dest)
	if !strings.Contains(r.stderr, ": 1 shipment, no problem") {
		t.Errorf("verify --all of one shipment: %s", r.stderr)
	}
	segs, _ := filepath.Glob(filepath.Join(dest, id, "segments", "*"))
	if len(segs) == 0 {
		t.Fatalf("no segment in %s", dest)
	}
	os.Remove(segs[0])
	r = run(t, "verify", "--all", dest)
	if r.code != exitIntegrity || !strings.Contains(r.stderr, ": 1 problem in 1 shipment (listed above)") {
		t.Errorf("verify --all of one shipment missing a segment: exit %d, %s", r.code, r.stderr)
	}

	dest = filepath.Join(t.TempDir(), "dest")
	now := time.Now()
	fakeShipment(t, dest, now.Add(-2*time.Hour), "")
	fakeShipment(t, dest, now.Add(-time.Hour), "")
	r = mustRun(t, "prune", dest, "--keep-last", "1", "--dry-run", "--state-dir", t.TempDir())
	if !strings.Contains(r.stderr, "would delete 1 shipment (") {
		t.Errorf("prune deleting one shipment: %s", r.stderr)
	}
}

// TestReceiveIntoAFile checks that a --out or --into naming a file (or a
// path through one) is a usage error saying so, before anything else: it
// used to fail on reading the restore marker inside it.
func TestReceiveIntoAFile(t *testing.T) {
	dest, key, _, _ := sendSample(t)
	file := filepath.Join(t.TempDir(), "afile")
	if err := os.WriteFile(file, []byte("not a folder"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ flag, dir string }{
		{"--into", file}, {"--out", file}, {"--into", filepath.Join(file, "sub")},
	} {
		r := run(t, "receive", dest, "-i", key, tc.flag, tc.dir)
		if want := "coldship: " + tc.flag + " " + tc.dir + ": not a directory\n"; r.code != exitUsage || r.stderr != want {
			t.Errorf("receive %s %s: exit %d, %q; want 2 and only %q", tc.flag, tc.dir, r.code, r.stderr, want)
		}
	}
}
