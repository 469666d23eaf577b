package crashtest_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coldship/coldship/internal/crashtest"
	"github.com/coldship/coldship/shipper/s3/s3test"
	"github.com/coldship/coldship/shipper/sftp/sftptest"
)

// The suite's size: CRASHTEST_POINTS points per cell (transport, command,
// signal; default 1, what `make test` runs), from seed CRASHTEST_SEED on
// (default 1); CRASHTEST_ONLY=transport/command/signal runs one cell
// (e.g. "local/send/KILL"). `make crashtest` runs hundreds.
var (
	points   = envInt("CRASHTEST_POINTS", 1)
	baseSeed = uint64(envInt("CRASHTEST_SEED", 1))
	only     = os.Getenv("CRASHTEST_ONLY")
	tally    crashtest.Tally
)

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

var (
	worldOnce sync.Once
	world     *crashtest.World
	worldErr  error
	worldDir  string
)

// getWorld builds coldship (a plain build: the driver runs the binary
// users run) and makes the keys and sources, once.
func getWorld(t *testing.T) *crashtest.World {
	t.Helper()
	worldOnce.Do(func() {
		worldDir, worldErr = os.MkdirTemp("", "coldship-crashtest-")
		if worldErr != nil {
			return
		}
		w := &crashtest.World{Bin: filepath.Join(worldDir, "coldship"), Work: filepath.Join(worldDir, "work"), Env: os.Environ()}
		if out, err := exec.Command("go", "build", "-o", w.Bin, "github.com/coldship/coldship/cmd/coldship").CombinedOutput(); err != nil {
			worldErr = fmt.Errorf("build coldship: %v\n%s", err, out)
			return
		}
		w.Identity = filepath.Join(worldDir, "key.txt")
		out, err := exec.Command(w.Bin, "keygen", "-o", w.Identity).Output()
		if err != nil {
			worldErr = fmt.Errorf("keygen: %v", err)
			return
		}
		w.Recipient = strings.TrimSpace(string(out))
		if w.SourceA, w.SourceB, worldErr = crashtest.MakeSources(filepath.Join(worldDir, "src")); worldErr != nil {
			return
		}
		world = w
	})
	if worldErr != nil {
		t.Fatal(worldErr)
	}
	return world
}

func TestMain(m *testing.M) {
	code := m.Run()
	if !tally.Empty() {
		fmt.Printf("\ncrash-consistency points (seed %d, %d per cell):\n\n%s\n", baseSeed, points, tally.Table())
	}
	if worldDir != "" {
		os.RemoveAll(worldDir)
	}
	os.Exit(code)
}

// transports starts each destination's server and returns its setup;
// each runs as a subtest.
var transports = []struct {
	name  string
	setup func(t *testing.T, w *crashtest.World) *crashtest.Setup
}{
	{"local", func(t *testing.T, w *crashtest.World) *crashtest.Setup {
		return &crashtest.Setup{Store: crashtest.Local(filepath.Join(t.TempDir(), "dest")), BlockSize: 64 << 10, SegmentSize: 1 << 20, Streams: 2}
	}},
	{"sftp", func(t *testing.T, w *crashtest.World) *crashtest.Setup {
		srv := sftptest.StartSSHD(t)
		dir := filepath.Join(srv.Root, "dest")
		st := &crashtest.Folder{Kind: "sftp", Dir: dir, URL: fmt.Sprintf("sftp://%s@%s%s", srv.User, srv.Addr, dir),
			Flag: []string{"--ssh-key", srv.ClientKeyFile, "--known-hosts", srv.KnownHostsFile}}
		return &crashtest.Setup{Store: st, BlockSize: 64 << 10, SegmentSize: 1 << 20, Streams: 2, Outage: func() {
			srv.Stop()
			time.Sleep(time.Second)
			srv.Restart()
		}}
	}},
	{"s3", func(t *testing.T, w *crashtest.World) *crashtest.Setup {
		srv := s3test.Start(t)
		srv.SetEnv(t)
		w.Env = os.Environ()
		t.Cleanup(func() { w.Env = os.Environ() })
		st := &crashtest.Bucket{Client: srv.Client(), Bucket: srv.Bucket, Prefix: "dest", Flag: []string{"--s3-endpoint", srv.Endpoint}}
		// Segments past the 8 MiB part size go up as multipart uploads,
		// which a killed send leaves behind.
		return &crashtest.Setup{Store: st, BlockSize: 64 << 10, SegmentSize: 9 << 20, Streams: 2, Outage: func() {
			srv.Stop()
			time.Sleep(time.Second)
			srv.Restart()
		}}
	}},
}

var (
	commands = []string{crashtest.Send, crashtest.ReceiveOut, crashtest.ReceiveInto}
	signals  = []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM}
)

// TestCrash stops send and receive at seeded points on every transport,
// runs them again and checks the guarantees of issue 14 (see package
// crashtest).
func TestCrash(t *testing.T) {
	w := getWorld(t)
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			if !wanted(tr.name, "") {
				t.Skip("not in CRASHTEST_ONLY")
			}
			set := tr.setup(t, w)
			ctx := context.Background()
			ref, err := w.NewReference(ctx, set)
			if err != nil {
				t.Fatalf("reference runs: %v", err)
			}
			for _, command := range commands {
				for _, sig := range signals {
					cell := crashtest.Cell(tr.name, command, sig)
					if !wanted(tr.name, cell) {
						continue
					}
					total := map[string]int64{crashtest.Send: ref.SendMoved, crashtest.ReceiveOut: ref.OutMoved, crashtest.ReceiveInto: ref.IntoMoved}[command]
					for i := range points {
						seed := baseSeed + uint64(i)
						p := crashtest.Point{Command: command, Signal: sig, Seed: seed, At: int64(crashtest.Fraction(cell, seed) * float64(total))}
						var r crashtest.Result
						if command == crashtest.Send {
							r = w.SendPoint(ctx, set, p)
						} else {
							r = w.ReceivePoint(ctx, ref, p)
						}
						tally.Add(cell, p, r)
						t.Logf("%s seed %d: at %d of %d bytes: fired %v, re-sent %d %s", cell, seed, p.At, total, r.Fired, r.ReSent, r.Note)
						if r.Err != nil {
							t.Errorf("%s seed %d (at %d of %d bytes): %v\nreproduce: CRASHTEST_ONLY=%s CRASHTEST_SEED=%d CRASHTEST_POINTS=1 make crashtest",
								cell, seed, p.At, total, r.Err, cell, seed)
						}
					}
				}
			}
		})
	}
}

// wanted reports whether CRASHTEST_ONLY selects the transport (cell "")
// or the cell.
func wanted(transport, cell string) bool {
	if only == "" {
		return true
	}
	if cell == "" {
		return strings.HasPrefix(only, transport+"/") || only == transport
	}
	return only == cell || only == transport
}

// TestDamage damages what the rerun of a killed send trusts, in every way
// of issue 14, and checks that the rerun still exits 0 with a shipment
// that restores (see crashtest.Damages). `make test` runs every damage on
// the local destination and a few over SFTP and S3; `make crashtest`
// (CRASHTEST_POINTS > 1) runs all of them everywhere.
func TestDamage(t *testing.T) {
	w := getWorld(t)
	few := map[string]bool{"same-size bit flip in an uploaded segment": true, "key slots forgotten after two attempts (MAC recomputed)": true,
		"journal not a journal": true, "whole records swapped across segments (MAC recomputed)": true}
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			if !wanted(tr.name, "") {
				t.Skip("not in CRASHTEST_ONLY")
			}
			set := tr.setup(t, w)
			// Small segments everywhere: the damages need a few complete
			// ones before the kill.
			set.SegmentSize = 1 << 20
			for _, dm := range crashtest.Damages() {
				if tr.name != "local" && points == 1 && !few[dm.Name] {
					continue
				}
				cell := crashtest.Cell(tr.name, "damage: "+dm.Name, syscall.SIGKILL)
				r := w.DamagePoint(context.Background(), set, dm)
				tally.Add(cell, crashtest.Point{}, r)
				if r.Err != nil {
					t.Errorf("%s: %v", cell, r.Err)
				}
			}
		})
	}
}

// TestOutage stops and restarts the SFTP and S3 servers in the middle of
// a send and of a receive: each must retry the lost connection, resume,
// and complete with a result that restores bit for bit (issue 14 item 5:
// receive retries like send).
func TestOutage(t *testing.T) {
	w := getWorld(t)
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			if tr.name == "local" || !wanted(tr.name, "") {
				t.Skip("no server to stop")
			}
			set := tr.setup(t, w)
			ctx := context.Background()
			ref, err := w.NewReference(ctx, set)
			if err != nil {
				t.Fatalf("reference runs: %v", err)
			}
			for _, command := range []string{crashtest.Send, crashtest.ReceiveOut} {
				total := map[string]int64{crashtest.Send: ref.SendMoved, crashtest.ReceiveOut: ref.OutMoved}[command]
				for i := range points {
					seed := baseSeed + uint64(i)
					cell := tr.name + "/" + command + " (server restarted)/-"
					at := int64((0.1 + 0.5*crashtest.Fraction(cell, seed)) * float64(total))
					r := w.OutagePoint(ctx, set, ref, command, at)
					tally.Add(cell, crashtest.Point{Seed: seed}, r)
					if r.Err != nil {
						t.Errorf("%s seed %d (at %d of %d bytes): %v", cell, seed, at, total, r.Err)
					}
				}
			}
		})
	}
}
