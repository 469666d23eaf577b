package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coldship/coldship/shipper"
)

// measuredLink is a transport that measured its link.
type measuredLink struct {
	shipper.Transport
	st shipper.LinkStats
}

func (m measuredLink) LinkStats() shipper.LinkStats { return m.st }

// TestAddLinkStatsUnderBandwidthLimit checks that --bwlimit's wrapper
// neither hides a measured link nor invents one: a transport that
// measures nothing gets no rtt_ms, connections or channels, as without
// --bwlimit.
func TestAddLinkStatsUnderBandwidthLimit(t *testing.T) {
	measured := measuredLink{st: shipper.LinkStats{RTT: 1500 * time.Microsecond, Connections: 2, Channels: 8}}
	for _, tc := range []struct {
		name string
		tr   shipper.Transport
		want map[string]any // nil: no link fields
	}{
		{"unmeasured", struct{ shipper.Transport }{}, nil},
		{"unmeasured under --bwlimit", shipper.LimitBandwidth(struct{ shipper.Transport }{}, 1<<20), nil},
		{"measured", measured, map[string]any{"rtt_ms": 1.5, "connections": 2, "channels": 8}},
		{"measured under --bwlimit", shipper.LimitBandwidth(measured, 1<<20), map[string]any{"rtt_ms": 1.5, "connections": 2, "channels": 8}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := addLinkStats(map[string]any{}, tc.tr, 100, time.Now().Add(-time.Second))
			for _, k := range []string{"rtt_ms", "connections", "channels"} {
				v, ok := got[k]
				switch {
				case tc.want == nil && ok:
					t.Errorf("%s = %v for a transport that measures no link", k, v)
				case tc.want != nil && v != tc.want[k]:
					t.Errorf("%s = %v, want %v", k, v, tc.want[k])
				}
			}
		})
	}
}

// TestBandwidthLimitLocalJSON runs send and receive --bwlimit --json to a
// local directory: their summaries have no link fields (README: SFTP and
// S3 only).
func TestBandwidthLimitLocalJSON(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 256<<10, region{0, 64 << 10, "random"})
	dest := filepath.Join(dir, "dest")
	send := mustRun(t, "send", src, "--to", dest, "-r", rcpt, "--bwlimit", "50M", "--json")
	recv := mustRun(t, "receive", dest, "-i", key, "--out", filepath.Join(dir, "out"), "--bwlimit", "50M", "--json")
	for _, out := range []string{send.stdout, recv.stdout} {
		lines := strings.Split(strings.TrimSpace(out), "\n")
		var summary map[string]any
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &summary); err != nil || summary["type"] != "summary" {
			t.Fatalf("no summary last: %v\n%s", err, out)
		}
		for _, k := range []string{"rtt_ms", "connections", "channels"} {
			if v, ok := summary[k]; ok {
				t.Errorf("%s summary to a local directory under --bwlimit has %s = %v", summary["op"], k, v)
			}
		}
	}
}
