package main

import (
	"time"

	"github.com/coldship/coldship/shipper"
)

// addLinkStats adds to a --json summary, and returns it, the throughput
// of bytes moved since start, in bytes per second, and what the transport
// measured of its link when it does (LinkReporter): the round trip in
// milliseconds, the network connections and the streams over them.
func addLinkStats(summary map[string]any, tr shipper.Transport, bytes int64, start time.Time) map[string]any {
	if elapsed := time.Since(start); elapsed > 0 {
		summary["throughput_bps"] = int64(float64(bytes) / elapsed.Seconds())
	}
	lr, ok := tr.(shipper.LinkReporter)
	if !ok {
		return summary
	}
	st := lr.LinkStats()
	summary["rtt_ms"] = float64(st.RTT.Microseconds()) / 1000
	summary["connections"] = st.Connections
	summary["channels"] = st.Channels
	return summary
}
