package main

import (
	"time"

	"github.com/coldship/coldship/shipper"
)

// addLinkStats adds to a --json summary, and returns it, the throughput
// of bytes moved since start, in bytes per second, and what the transport
// measured of its link when it does (LinkReporter): the round trip in
// milliseconds, the network connections and the streams over them. A
// transport that measures nothing (a local directory) adds none of them,
// even under --bwlimit's wrapper.
func addLinkStats(summary map[string]any, tr shipper.Transport, bytes int64, start time.Time) map[string]any {
	if elapsed := time.Since(start); elapsed > 0 {
		summary["throughput_bps"] = int64(float64(bytes) / elapsed.Seconds())
	}
	lr, ok := linkReporter(tr)
	if !ok {
		return summary
	}
	st := lr.LinkStats()
	summary["rtt_ms"] = float64(st.RTT.Microseconds()) / 1000
	summary["connections"] = st.Connections
	summary["channels"] = st.Channels
	return summary
}

// linkReporter finds the LinkReporter in tr or under the wrappers around
// it (shipper.LimitBandwidth's), which return what they wrap from Unwrap.
func linkReporter(tr shipper.Transport) (shipper.LinkReporter, bool) {
	for {
		if lr, ok := tr.(shipper.LinkReporter); ok {
			return lr, true
		}
		w, ok := tr.(interface{ Unwrap() shipper.Transport })
		if !ok {
			return nil, false
		}
		tr = w.Unwrap()
	}
}
