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
