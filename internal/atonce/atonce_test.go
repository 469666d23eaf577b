package atonce

import (
	"fmt"
	"sync/atomic"
	"testing"
)

// TestEach: every call is made, never more than limit at once, and the
// error returned is that of the lowest index that failed.
func TestEach(t *testing.T) {
	for _, c := range []struct{ n, limit int }{{0, 4}, {1, 4}, {7, 1}, {20, 3}, {20, 0}} {
		var running, peak, calls atomic.Int64
		fails := map[int]bool{5: true, 3: true, 11: true}
		err := Each(c.n, c.limit, func(i int) error {
			calls.Add(1)
			r := running.Add(1)
			defer running.Add(-1)
			for p := peak.Load(); r > p && !peak.CompareAndSwap(p, r); p = peak.Load() {
			}
			if fails[i] {
				return fmt.Errorf("call %d", i)
			}
			return nil
		})
		want := ""
		for i := range c.n {
			if fails[i] {
				want = fmt.Sprintf("call %d", i)
				break
			}
		}
		if got := fmt.Sprint(err); want != "" && got != want || want == "" && err != nil {
			t.Errorf("n %d limit %d: %v, want %q", c.n, c.limit, err, want)
		}
		if calls.Load() != int64(c.n) {
			t.Errorf("n %d limit %d: %d calls", c.n, c.limit, calls.Load())
		}
		if peak.Load() > int64(max(c.limit, 1)) {
			t.Errorf("n %d limit %d: %d at once", c.n, c.limit, peak.Load())
		}
	}
}
