package shipper

import "github.com/coldship/coldship/shipper/internal/progress"

// Counters are the running totals of a send or receive; see
// progress.Counters.
type Counters = progress.Counters
