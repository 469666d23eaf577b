package main

import (
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
