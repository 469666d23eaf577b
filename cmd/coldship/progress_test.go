package main

import (
	"strings"
	"testing"

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
