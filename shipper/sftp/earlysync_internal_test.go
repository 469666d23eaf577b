package sftp

import "testing"

// TestEarlySyncEvery checks the interval of the early syncs: none for up
// to 4 streams, the budget shared by more, never below minEarlySync.
func TestEarlySyncEvery(t *testing.T) {
	for _, tc := range []struct {
		streams int
		want    int64
	}{
		{0, 0}, {1, 0}, {2, 0}, {4, 0},
		{5, earlySyncBudget / 5},
		{8, 16 << 20},
		{32, 4 << 20},
		{100, minEarlySync},
	} {
		if got := earlySyncEvery(tc.streams); got != tc.want {
			t.Errorf("earlySyncEvery(%d) = %d, want %d", tc.streams, got, tc.want)
		}
	}
}
