package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coldship/coldship/shipper"
)

// TestProgressDetails: the bar's text says what the command moved: bytes
// shipped by send, fetched by receive and verify.
func TestProgressDetails(t *testing.T) {
	cnt := new(shipper.Counters)
	cnt.Shipped.Store(3 << 20)
	for op, want := range map[string]string{"send": "shipped 3.0 MiB", "receive": "fetched 3.0 MiB", "verify": "fetched 3.0 MiB"} {
		r := &reporter{op: op, cnt: cnt}
		if got := r.details(8<<20, 4<<20, 1<<20, 0, false); !strings.Contains(got, want) {
			t.Errorf("%s: %q, want it to say %q", op, got, want)
		}
	}
}

// TestProgressFinishing: once every byte is read, the last segments may
// still be going up: no ETA of 0 is claimed, the bar says "finishing",
// and the JSON progress object has no eta_s.
func TestProgressFinishing(t *testing.T) {
	cnt := new(shipper.Counters)
	cnt.Total.Store(8 << 20)
	cnt.Done.Store(8 << 20)
	r := &reporter{op: "send", cnt: cnt, moved: movedShipped}
	start := time.Now()
	r.samples = append(r.samples, sample{t: start})
	if _, _, ok := r.rates(start.Add(time.Second)); ok {
		t.Error("rates claims an ETA with nothing left to read")
	}
	if got := r.details(8<<20, 8<<20, 1<<20, 0, false); !strings.Contains(got, "finishing") {
		t.Errorf("details %q; want it to say finishing", got)
	}
	cnt.Done.Store(4 << 20)
	if got := r.details(8<<20, 4<<20, 1<<20, 0, false); strings.Contains(got, "finishing") {
		t.Errorf("details %q half way; want no finishing", got)
	}
}

// TestETASkipsHoles: a sparse image under --bwlimit. The data is 6 MiB
// of 512 MiB at 2 MiB/s, so neither send nor receive has more than about
// 3 s left at any point; the ETA counted the holes still ahead as if they
// had to be read at the data's pace (over two minutes here).
func TestETASkipsHoles(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 512<<20, region{0, 6 << 20, "random"})
	dest := filepath.Join(dir, "dest")
	limited := []string{"--bwlimit", "2M", "--json", "--streams", "1", "-j", "1"}
	checkETA := func(op, stdout string) {
		t.Helper()
		seen := 0
		for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
			var o map[string]any
			if err := json.Unmarshal([]byte(line), &o); err != nil {
				t.Fatalf("%s: %q: %v", op, line, err)
			}
			eta, ok := o["eta_s"].(float64)
			if o["type"] != "progress" || !ok {
				continue
			}
			seen++
			if eta > 8 {
				t.Errorf("%s: progress %s: ETA %.0f s with at most 6 MiB of data left at 2 MiB/s", op, line, eta)
			}
		}
		if seen == 0 {
			t.Errorf("%s: no progress object with an ETA in %s", op, stdout)
		}
	}
	r := mustRun(t, append([]string{"send", src, "--to", dest, "-r", rcpt, "--compress", "none", "--state-dir", filepath.Join(dir, "state")}, limited...)...)
	checkETA("send", r.stdout)
	r = mustRun(t, append([]string{"receive", dest, "latest", "--out", filepath.Join(dir, "out"), "-i", key}, limited...)...)
	checkETA("receive", r.stdout)
	sameFile(t, src, filepath.Join(dir, "out", "disk.img"))
}
