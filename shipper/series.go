package shipper

// seriesNewest finds, for each label among the shipments that consider
// accepts (each label a series of its own, the unlabelled shipments one
// more), the index of its newest shipment that counts (-1: none). An
// incomplete shipment newer than that may be a send still writing it.
// runningAfter is the oldest of those (-1 when a series has none): an
// upload into a shipment not listed yet, whose series is unknown, may be
// a running send's when it is newer than that.
func seriesNewest(ships []ShipmentInfo, consider, counts func(i int) bool) (newest map[string]int, runningAfter int) {
	newest = map[string]int{}
	for i, si := range ships {
		if !consider(i) {
			continue
		}
		if _, ok := newest[si.Label]; !ok {
			newest[si.Label] = -1
		}
		if counts(i) {
			newest[si.Label] = i
		}
	}
	runningAfter = -1
	first := true
	for _, n := range newest {
		if first || n < runningAfter {
			runningAfter, first = n, false
		}
	}
	return newest, runningAfter
}
