package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/s3/s3test"
)

// drSend runs send with --json and returns the shipment id, the summary
// and what it printed (the JSON objects, notices among them, and stderr).
func drSend(t *testing.T, args ...string) (string, map[string]any, string) {
	t.Helper()
	r := run(t, append([]string{"send", "--json"}, args...)...)
	if r.code != 0 {
		t.Fatalf("coldship send %s: exit %d\nstderr: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	sum := summaryOf(t, r.stdout)
	id, _ := sum["shipment"].(string)
	return id, sum, r.stdout + r.stderr
}

// summaryOf returns the summary object among the JSON lines of stdout.
func summaryOf(t *testing.T, stdout string) map[string]any {
	t.Helper()
	for _, line := range strings.Split(stdout, "\n") {
		if strings.Contains(line, `"type":"summary"`) {
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatal(err)
			}
			return m
		}
	}
	t.Fatalf("no summary in %s", stdout)
	return nil
}

// listIDs returns the first column of list's tab-separated output.
func listIDs(stdout string) []string {
	var ids []string
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		if id, _, _ := strings.Cut(line, "\t"); id != "" {
			ids = append(ids, id)
		}
	}
	return ids
}

func num(m map[string]any, k string) int64 { v, _ := m[k].(float64); return int64(v) }

// rewriteBlocks overwrites blocks of bs bytes of a file with random data.
func rewriteBlocks(t *testing.T, path string, bs int64, blocks ...int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, bs)
	for _, b := range blocks {
		rand.Read(buf)
		if _, err := f.WriteAt(buf, b*bs); err != nil {
			t.Fatal(err)
		}
	}
}

// snapshot reads every regular file under dir, by relative path.
func snapshot(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().IsRegular() && !strings.HasPrefix(fi.Name(), ".coldship-restore") {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			rel, _ := filepath.Rel(dir, p)
			out[rel] = b
		}
		return nil
	})
	return out
}

func sameTree(t *testing.T, want map[string][]byte, dir string) {
	t.Helper()
	got := snapshot(t, dir)
	for p, b := range want {
		if g, ok := got[p]; !ok {
			t.Errorf("%s: missing from %s", p, dir)
		} else if !bytes.Equal(g, b) {
			t.Errorf("%s: differs in %s", p, dir)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: in %s, but not in the source", p, dir)
		}
	}
}

func TestIncrementalShipsOnlyChangedBlocks(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	// 64 random blocks, 16 compressible ones, and a hole.
	makeImage(t, src, 128*testBS, region{0, 64 * testBS, "random"}, region{96 * testBS, 16 * testBS, "text"})
	dest := filepath.Join(dir, "dest")
	send := []string{src, "--to", dest, "-r", rcpt, "--block-size", "64K", "--base", "latest"}

	id1, sum1, stderr := drSend(t, send...)
	if sum1["incremental"] != false || !strings.Contains(stderr, "sending a full shipment: no DR state") {
		t.Errorf("first send: incremental %v, stderr %s; want a full one saying why", sum1["incremental"], stderr)
	}
	if d := num(sum1, "bytes_data"); d != 80*testBS {
		t.Errorf("first send: bytes_data %d, want %d", d, 80*testBS)
	}

	rewriteBlocks(t, src, testBS, 3, 40, 120) // two random blocks, and one in the hole
	id2, sum2, _ := drSend(t, send...)
	if sum2["incremental"] != true || sum2["base"] != id1 {
		t.Fatalf("second send: %v; want incremental on %s", sum2, id1)
	}
	if d, u := num(sum2, "bytes_data"), num(sum2, "bytes_unchanged"); d != 3*testBS || u != 78*testBS {
		t.Errorf("second send: bytes_data %d, bytes_unchanged %d; want %d and %d", d, u, 3*testBS, 78*testBS)
	}
	// Issue 6: the summary says what was skipped, in one field.
	if k, want := num(sum2, "bytes_skipped"), num(sum2, "bytes_hole")+num(sum2, "bytes_zero")+78*testBS; k != want {
		t.Errorf("second send: bytes_skipped %d, want holes, zeros and unchanged blocks: %d", k, want)
	}
	// Three sealed blocks, plus the header, keys, inventory and manifest.
	sealed := 3 * cipher.SealedSize(testBS)
	if s := num(sum2, "bytes_shipped"); s < sealed || s > sealed+32<<10 {
		t.Errorf("second send shipped %d bytes; want the %d of 3 sealed blocks and a few KiB of metadata", s, sealed)
	}
	r := mustRun(t, "list", dest, "--json")
	if !strings.Contains(r.stdout, `"base":"`+id1+`"`) {
		t.Errorf("list --json does not show the base: %s", r.stdout)
	}

	// No change at all: nothing but metadata.
	id3, sum3, _ := drSend(t, send...)
	if sum3["base"] != id2 || num(sum3, "bytes_data") != 0 || num(sum3, "bytes_shipped") > 32<<10 {
		t.Errorf("unchanged source: %v", sum3)
	}

	for _, id := range []string{id2, id3} {
		mustRun(t, "verify", dest, id)
		mustRun(t, "verify", dest, id, "-i", key)
		out := filepath.Join(dir, "out-"+id)
		mustRun(t, "receive", dest, id, "--out", out, "-i", key, "-q")
		sameFile(t, src, filepath.Join(out, "disk.img"))
		if a, b := allocated(t, src), allocated(t, filepath.Join(out, "disk.img")); b > a {
			t.Errorf("restored incremental allocates %d bytes, the source %d", b, a)
		}
	}
	// The latest shipment is the newest of the chain.
	out := filepath.Join(dir, "out-latest")
	mustRun(t, "receive", dest, "--out", out, "-i", key, "-q")
	sameFile(t, src, filepath.Join(out, "disk.img"))
}

// TestIncrementalChain sends a VM directory through a chain of changes
// (blocks rewritten, zeroed, punched, the image grown and shrunk, files
// added and removed) and restores every step exactly: from scratch with
// --out, step by step with --into, and with --into across several steps.
func TestIncrementalChain(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	vm := filepath.Join(dir, "vm")
	os.MkdirAll(vm, 0o755)
	disk := filepath.Join(vm, "disk.img")
	makeImage(t, disk, 64*testBS, region{0, 40 * testBS, "random"}, region{48 * testBS, 8 * testBS, "text"})
	os.WriteFile(filepath.Join(vm, "vm.xml"), []byte("<domain>v0</domain>\n"), 0o644)
	dest := filepath.Join(dir, "dest")
	send := []string{vm, "--to", dest, "-r", rcpt, "--block-size", "64K", "--base", "latest"}

	steps := []struct {
		name   string
		change func()
	}{
		{"full", func() {}},
		{"rewrite blocks", func() { rewriteBlocks(t, disk, testBS, 1, 2, 30, 50, 60) }},
		{"zero and punch", func() {
			f, _ := os.OpenFile(disk, os.O_WRONLY, 0)
			f.WriteAt(make([]byte, 2*testBS), 4*testBS)
			if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 10*testBS, 3*testBS); err != nil {
				t.Logf("punch hole: %v", err)
			}
			f.Close()
			os.WriteFile(filepath.Join(vm, "vm.xml"), []byte("<domain>v2, longer</domain>\n"), 0o600)
		}},
		{"grow", func() {
			f, _ := os.OpenFile(disk, os.O_WRONLY|os.O_APPEND, 0)
			b := make([]byte, 3*testBS+777)
			rand.Read(b)
			f.Write(b)
			f.Close()
		}},
		{"shrink, add and remove files", func() {
			os.Truncate(disk, 60*testBS+5)
			os.Remove(filepath.Join(vm, "vm.xml"))
			os.MkdirAll(filepath.Join(vm, "nvram"), 0o700)
			makeImage(t, filepath.Join(vm, "nvram", "efivars.fd"), 2*testBS, region{0, testBS, "random"})
			// Sorts before disk.img: its file index (and block contexts) moves,
			// while its unchanged records keep those of their base.
			makeImage(t, filepath.Join(vm, "boot.fd"), testBS, region{0, testBS, "random"})
		}},
		{"nothing changed", func() {}},
		{"rewrite again", func() { rewriteBlocks(t, disk, testBS, 0, 59) }},
	}
	var ids []string
	var want []map[string][]byte
	for i, st := range steps {
		st.change()
		id, sum, stderr := drSend(t, send...)
		if i > 0 && sum["incremental"] != true {
			t.Fatalf("step %s: not incremental: %s", st.name, stderr)
		}
		ids = append(ids, id)
		want = append(want, snapshot(t, vm))
	}

	into := filepath.Join(dir, "into")
	for i, id := range ids {
		t.Run(steps[i].name, func(t *testing.T) {
			mustRun(t, "verify", dest, id, "-i", key, "-q")
			out := filepath.Join(dir, "out", id)
			mustRun(t, "receive", dest, id, "--out", out, "-i", key, "-q")
			sameTree(t, want[i], filepath.Join(out, "vm"))
			if i == 0 {
				mustRun(t, "receive", dest, id, "--out", into, "-i", key, "-q")
			} else {
				r := mustRun(t, "receive", dest, id, "--into", into, "-i", key, "--json")
				s := summaryOf(t, r.stdout)
				if num(s, "bytes_read") != 0 {
					t.Errorf("--into read %d bytes of an untouched restore; the marker should vouch for it", num(s, "bytes_read"))
				}
			}
			sameTree(t, want[i], filepath.Join(into, "vm"))
			if a, b := allocated(t, filepath.Join(out, "vm", "disk.img")), allocated(t, filepath.Join(into, "vm", "disk.img")); b > a+2*testBS {
				t.Errorf("updated image allocates %d bytes, a fresh restore %d: not as sparse", b, a)
			}
		})
	}
	// Several steps at once, and back to an older shipment.
	jump := filepath.Join(dir, "jump")
	mustRun(t, "receive", dest, ids[1], "--out", jump, "-i", key, "-q")
	mustRun(t, "receive", dest, ids[len(ids)-1], "--into", jump, "-i", key, "-q")
	sameTree(t, want[len(ids)-1], filepath.Join(jump, "vm"))
	// Going back is a rollback: refused, unless asked for.
	if r := run(t, "receive", dest, ids[2], "--into", jump, "-i", key, "-q"); r.code != exitIntegrity {
		t.Errorf("back to an older shipment without --allow-rollback: exit %d", r.code)
	}
	mustRun(t, "receive", dest, ids[2], "--into", jump, "-i", key, "-q", "--allow-rollback")
	sameTree(t, want[2], filepath.Join(jump, "vm"))

	// A restore that changed since (the VM ran from it) is read and fixed.
	rewriteBlocks(t, filepath.Join(jump, "vm", "disk.img"), testBS, 7, 33)
	r := mustRun(t, "receive", dest, ids[2], "--into", jump, "-i", key)
	if !strings.Contains(r.stderr, "changed since it was restored") {
		t.Errorf("--into over a changed restore does not say so: %s", r.stderr)
	}
	sameTree(t, want[2], filepath.Join(jump, "vm"))

	// --into a new directory restores in full, and says so; --into a
	// directory that holds other files names the fix.
	fresh := filepath.Join(dir, "fresh", "dr")
	r = run(t, "receive", dest, ids[2], "--into", fresh, "-i", key)
	if r.code != 0 || !strings.Contains(r.stderr, "restoring "+ids[2]+" into it in full") {
		t.Errorf("--into a missing directory: exit %d, %s", r.code, r.stderr)
	}
	sameTree(t, want[2], filepath.Join(fresh, "vm"))
	mustRun(t, "receive", dest, ids[2], "--into", fresh, "-i", key, "-q") // now an update
	other := filepath.Join(dir, "other")
	os.MkdirAll(other, 0o755)
	os.WriteFile(filepath.Join(other, "notes.txt"), []byte("mine"), 0o644)
	if r := run(t, "receive", dest, ids[2], "--into", other, "-i", key); r.code != exitError ||
		!strings.Contains(r.stderr, "give an empty or new directory") || strings.Contains(r.stderr, "not a directory that") {
		t.Errorf("--into a directory of other files: exit %d, %s", r.code, r.stderr)
	}
}

// TestIntoFailedSaysWhereFilesAre: an update that fails on a damaged
// shipment leaves the image aside (never half-written under its name), and
// its error says where it is and how to get it back.
func TestIntoFailedSaysWhereFilesAre(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 64*testBS, region{0, 64 * testBS, "random"})
	dest := filepath.Join(dir, "dest")
	send := []string{src, "--to", dest, "-r", rcpt, "--block-size", "64K", "--base", "latest", "--segment-size", "1M", "-q"}
	id1 := strings.TrimSpace(mustRun(t, append([]string{"send"}, send...)...).stdout)
	into := filepath.Join(dir, "into")
	mustRun(t, "receive", dest, id1, "--out", into, "-i", key, "-q")
	var all []int64
	for b := range int64(64) {
		all = append(all, b)
	}
	rewriteBlocks(t, src, testBS, all...)
	id2 := strings.TrimSpace(mustRun(t, append([]string{"send"}, send...)...).stdout)
	segs, _ := filepath.Glob(filepath.Join(dest, id2, "segments", "0*"))
	if len(segs) < 2 {
		t.Fatalf("segments of %s: %v, want several", id2, segs)
	}
	last := segs[len(segs)-1]
	b, _ := os.ReadFile(last)
	b[len(b)/2] ^= 1
	os.WriteFile(last, b, 0o644)

	r := run(t, "receive", dest, id2, "--into", into, "-i", key, "-q", "-j", "1", "--streams", "1", "--retries", "0")
	if r.code != exitIntegrity {
		t.Fatalf("update from a damaged shipment: exit %d, want 5; %s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(into, ".disk.img.coldship-update")); err != nil {
		t.Fatalf("the image is not aside after the failed update: %v", err)
	}
	if !strings.Contains(r.stderr, ".disk.img.coldship-update") || !strings.Contains(r.stderr, "--out --force") {
		t.Errorf("the error does not say where the image is and how to get it back: %s", r.stderr)
	}
}

// TestIntoInterrupted kills an update in the middle: no half-written image
// is left under its name, the marker says so, and running receive --into
// again completes it exactly, without trusting what the killed run left.
func TestIntoInterrupted(t *testing.T) {
	bin := coldshipBinary(t)
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 256*testBS, region{0, 256 * testBS, "random"})
	dest := filepath.Join(dir, "dest")
	send := []string{src, "--to", dest, "-r", rcpt, "--block-size", "64K", "--base", "latest", "-q"}
	id1 := strings.TrimSpace(mustRun(t, append([]string{"send"}, send...)...).stdout)
	into := filepath.Join(dir, "into")
	mustRun(t, "receive", dest, id1, "--out", into, "-i", key, "-q")
	var changed []int64
	for b := int64(0); b < 256; b += 2 {
		changed = append(changed, b)
	}
	rewriteBlocks(t, src, testBS, changed...) // 8 MiB of 16
	id2 := strings.TrimSpace(mustRun(t, append([]string{"send"}, send...)...).stdout)

	// 8 MiB at 2 MiB/s: killed well before the end.
	cmd := exec.Command(bin, "receive", dest, id2, "--into", into, "-i", key, "-q", "--bwlimit", "2M", "-j", "1", "--streams", "1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	markers, _ := filepath.Glob(filepath.Join(into, ".coldship-restore-*.json"))
	if len(markers) != 1 {
		t.Fatalf("restore marker: %v", markers)
	}
	aside := filepath.Join(into, ".disk.img.coldship-update")
	waitForFile(t, aside)
	time.Sleep(time.Second)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	mb, _ := os.ReadFile(markers[0])
	if !strings.Contains(string(mb), `"state":"updating"`) {
		t.Errorf("marker after a killed update does not say updating: %.200s", mb)
	}
	if _, err := os.Stat(filepath.Join(into, "disk.img")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a half-updated image is under its final name (%v)", err)
	}
	// Damage a block the update does not rewrite: the rerun must not trust
	// the state the killed run left behind.
	rewriteBlocks(t, aside, testBS, 101)

	r := mustRun(t, "receive", dest, id2, "--into", into, "-i", key)
	if !strings.Contains(r.stderr, "interrupted update") {
		t.Errorf("rerun does not say it completes an interrupted update: %s", r.stderr)
	}
	sameFile(t, src, filepath.Join(into, "disk.img"))
	if _, err := os.Stat(aside); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the aside file is left after the update completed: %v", err)
	}
	mb, _ = os.ReadFile(markers[0])
	if !strings.Contains(string(mb), `"state":"done"`) || !strings.Contains(string(mb), id2) {
		t.Errorf("marker after the completed update: %.200s", mb)
	}

	// Killed again, then restored afresh with --out: what was left aside goes.
	rewriteBlocks(t, src, testBS, changed...)
	id3 := strings.TrimSpace(mustRun(t, append([]string{"send"}, send...)...).stdout)
	cmd = exec.Command(bin, "receive", dest, id3, "--into", into, "-i", key, "-q", "--bwlimit", "2M", "-j", "1", "--streams", "1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitForFile(t, aside)
	time.Sleep(300 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	mustRun(t, "receive", dest, id3, "--out", into, "-i", key, "-q")
	sameFile(t, src, filepath.Join(into, "disk.img"))
	if _, err := os.Stat(aside); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("receive --out left the aside file of the interrupted update: %v", err)
	}

	// A tampered record: exit 5, and again no image under its name.
	rewriteBlocks(t, src, testBS, 7)
	id4 := strings.TrimSpace(mustRun(t, append([]string{"send"}, send...)...).stdout)
	segs, _ := filepath.Glob(filepath.Join(dest, id4, "segments", "*"))
	b, _ := os.ReadFile(segs[0])
	b[100] ^= 1
	os.WriteFile(segs[0], b, 0o644)
	if r := run(t, "receive", dest, id4, "--into", into, "-i", key); r.code != exitIntegrity {
		t.Errorf("--into from a tampered shipment: exit %d, want 5; %s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(into, "disk.img")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an update that failed its checks left the image under its final name (%v)", err)
	}
	// Back to id3 (the source has moved on: compare with a fresh restore).
	mustRun(t, "receive", dest, id3, "--into", into, "-i", key, "-q")
	fresh := filepath.Join(dir, "fresh")
	mustRun(t, "receive", dest, id3, "--out", fresh, "-i", key, "-q")
	sameFile(t, filepath.Join(fresh, "disk.img"), filepath.Join(into, "disk.img"))
}

// TestPruneKeepsBases prunes a chain: kept shipments stay restorable,
// their bases are kept, the rest (an old incomplete one too) goes.
func TestPruneKeepsBases(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 16*testBS, region{0, 16 * testBS, "random"})
	dest := filepath.Join(dir, "dest")
	// An old failed send: incomplete, older than every complete shipment.
	stale := strings.TrimSpace(mustRun(t, "send", src, "--to", dest, "-r", rcpt, "--block-size", "64K", "-q").stdout)
	os.Remove(filepath.Join(dest, stale, "manifest"))

	send := []string{src, "--to", dest, "-r", rcpt, "--block-size", "64K", "--base", "latest", "-q"}
	full := strings.TrimSpace(mustRun(t, append([]string{"send"}, send...)...).stdout)
	var incs []string
	for range 3 {
		rewriteBlocks(t, src, testBS, 0, 1, 2, 3) // the same blocks: each shipment needs only the full one
		incs = append(incs, strings.TrimSpace(mustRun(t, append([]string{"send"}, send...)...).stdout))
	}
	before := mustRun(t, "list", dest).stdout

	r := mustRun(t, "prune", dest, "--keep-last", "1", "--dry-run")
	if got, want := strings.Fields(r.stdout), []string{stale, incs[0], incs[1]}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("prune --dry-run would delete %v, want %v\n%s", got, want, r.stderr)
	}
	if !strings.Contains(r.stderr, "base of "+incs[2]) || !strings.Contains(r.stderr, "incomplete, older") {
		t.Errorf("prune does not say why it keeps the base or deletes the incomplete shipment:\n%s", r.stderr)
	}
	if after := mustRun(t, "list", dest).stdout; after != before {
		t.Errorf("--dry-run deleted something:\n%s\n%s", before, after)
	}

	mustRun(t, "prune", dest, "--keep-last", "1")
	r = mustRun(t, "list", dest)
	listed := strings.Join(listIDs(r.stdout), " ")
	for _, id := range []string{full, incs[2]} {
		if !strings.Contains(listed, id) {
			t.Errorf("prune deleted %s:\n%s", id, r.stdout)
		}
	}
	for _, id := range []string{stale, incs[0], incs[1]} {
		if strings.Contains(listed, id) {
			t.Errorf("prune kept %s:\n%s", id, r.stdout)
		}
		if _, err := os.Stat(filepath.Join(dest, id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: left at the destination (%v)", id, err)
		}
	}
	mustRun(t, "verify", dest, incs[2])
	mustRun(t, "verify", dest, incs[2], "-i", key)
	out := filepath.Join(dir, "out")
	mustRun(t, "receive", dest, incs[2], "--out", out, "-i", key, "-q")
	sameFile(t, src, filepath.Join(out, "disk.img"))

	// The chain goes on, and keeps its base through the next prune.
	rewriteBlocks(t, src, testBS, 9)
	next := strings.TrimSpace(mustRun(t, append([]string{"send"}, send...)...).stdout)
	mustRun(t, "prune", dest, "--keep-last", "1", "-q")
	for _, id := range []string{full, incs[2], next} {
		mustRun(t, "verify", dest, id)
	}
	out = filepath.Join(dir, "out2")
	mustRun(t, "receive", dest, next, "--out", out, "-i", key, "-q")
	sameFile(t, src, filepath.Join(out, "disk.img"))

	if r := run(t, "prune", dest); r.code != exitUsage {
		t.Errorf("prune without a policy: exit %d, want 2", r.code)
	}
}

// TestConcurrentRunIsRefused runs a slow send in another process: a second
// run for the same destination exits at once naming it, or waits for it
// with --lock-wait.
func TestConcurrentRunIsRefused(t *testing.T) {
	bin := coldshipBinary(t)
	_, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 8<<20, region{0, 8 << 20, "random"})
	dest := filepath.Join(dir, "dest")
	state := filepath.Join(dir, "state")
	args := []string{"send", src, "--to", dest, "-r", rcpt, "--state-dir", state, "-q"}

	cmd := exec.Command(bin, append(args, "--bwlimit", "3M", "--compress", "none")...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lockFile := shipper.DestLockPath(state, destKey(dest))
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := os.Stat(dest) // the prunes below check DEST exists before they lock it
		if b, _ := os.ReadFile(lockFile); bytes.HasPrefix(b, []byte("pid ")) && err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first send never took the lock")
		}
		time.Sleep(20 * time.Millisecond)
	}

	link := filepath.Join(dir, "dest-link") // the same folder, spelled another way
	if err := os.Symlink(dest, link); err != nil {
		t.Fatal(err)
	}
	for _, second := range [][]string{args, {"prune", dest, "--keep-last", "1", "--state-dir", state},
		{"prune", link, "--keep-last", "1", "--state-dir", state}} {
		r := run(t, second...)
		if r.code != exitError || !strings.Contains(r.stderr, fmt.Sprintf("pid %d", cmd.Process.Pid)) ||
			!strings.Contains(r.stderr, "--lock-wait") {
			t.Errorf("%s %s during a send: exit %d, stderr %q; want 1 naming the running pid", second[0], second[1], r.code, r.stderr)
		}
	}
	if r := run(t, append(args, "--lock-wait", "200ms")...); r.code != exitError || !strings.Contains(r.stderr, "gave up after") {
		t.Errorf("send with a short --lock-wait: exit %d, %q", r.code, r.stderr)
	}
	start := time.Now()
	r := run(t, append(args, "--lock-wait", "2m")...)
	if r.code != 0 {
		t.Fatalf("send with --lock-wait: exit %d, %s", r.code, r.stderr)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("first send: %v", err)
	}
	t.Logf("second send waited and ran for %s", time.Since(start).Round(time.Millisecond))
	if out := mustRun(t, "list", dest).stdout; strings.Count(out, "complete") != 2 || strings.Contains(out, "incomplete") {
		t.Errorf("want two complete shipments:\n%s", out)
	}
}

// TestStateOutOfStep changes the destination or the state behind the
// source's back: the send falls back to a full shipment, saying why, and
// the next one is incremental again.
func TestStateOutOfStep(t *testing.T) {
	key, rcpt := keypair(t)
	_, rcpt2 := keypair(t)
	for _, tc := range []struct {
		name   string
		why    string
		args   []string
		break_ func(t *testing.T, dest, state, base string)
	}{
		{"base deleted", "is missing at the destination", nil, func(t *testing.T, dest, state, base string) {
			os.RemoveAll(filepath.Join(dest, base))
		}},
		{"base incomplete", "is incomplete", nil, func(t *testing.T, dest, state, base string) {
			os.Remove(filepath.Join(dest, base, "manifest"))
		}},
		{"base listed differently", "listed differently", nil, func(t *testing.T, dest, state, base string) {
			p := filepath.Join(dest, base, "inventory")
			b, _ := os.ReadFile(p)
			os.WriteFile(p, append(b, '\n'), 0o644)
		}},
		{"segment missing", "missing or of the wrong size", nil, func(t *testing.T, dest, state, base string) {
			segs, _ := filepath.Glob(filepath.Join(dest, base, "segments", "*"))
			os.Remove(segs[0])
		}},
		{"key object replaced", "differs from the key object", nil, func(t *testing.T, dest, state, base string) {
			p := filepath.Join(dest, base, "keys", "0000")
			b, _ := os.ReadFile(p)
			b[len(b)-1] ^= 1
			os.WriteFile(p, b, 0o644)
		}},
		{"recipients changed", "recipients differ", []string{"-r", rcpt2}, nil},
		{"block size changed", "--block-size differs", []string{"--block-size", "128K"}, nil},
		{"unknown base", "knows no shipment 20200101T000000Z-00000000", []string{"--base", "20200101T000000Z-00000000"}, nil},
		{"state key lost", "state key changed", nil, func(t *testing.T, dest, state, base string) {
			os.Remove(filepath.Join(state, "dr", "state.key"))
		}},
		{"state damaged", "damaged", nil, func(t *testing.T, dest, state, base string) {
			tables, _ := filepath.Glob(filepath.Join(state, "dr", "*", base+".json"))
			os.WriteFile(tables[0], []byte("{"), 0o600)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "disk.img")
			makeImage(t, src, 32*testBS, region{0, 32 * testBS, "random"})
			dest, state := filepath.Join(dir, "dest"), filepath.Join(dir, "state")
			send := []string{src, "--to", dest, "-r", rcpt, "--block-size", "64K", "--base", "latest", "--state-dir", state}
			base, _, _ := drSend(t, send...)
			if tc.break_ != nil {
				tc.break_(t, dest, state, base)
			}
			rewriteBlocks(t, src, testBS, 5)
			id, sum, stderr := drSend(t, append(send, tc.args...)...)
			if sum["incremental"] != false || !strings.Contains(stderr, "sending a full shipment") || !strings.Contains(stderr, tc.why) {
				t.Fatalf("incremental %v; stderr %s\nwant a full shipment, saying %q", sum["incremental"], stderr, tc.why)
			}
			bs := int64(testBS)
			if tc.name == "block size changed" {
				bs *= 2
			}
			if d := num(sum, "bytes_data"); d != 32*testBS {
				t.Errorf("fallback shipped %d bytes of data, want all %d", d, 32*testBS)
			}
			out := filepath.Join(dir, "out")
			mustRun(t, "receive", dest, id, "--out", out, "-i", key, "-q")
			sameFile(t, src, filepath.Join(out, "disk.img"))

			// And in step again.
			rewriteBlocks(t, src, testBS, 6)
			_, sum, stderr = drSend(t, append(send, tc.args...)...)
			if tc.name != "unknown base" && (sum["incremental"] != true || num(sum, "bytes_data") != bs) {
				t.Errorf("the send after the fallback: %v\n%s", sum, stderr)
			}
		})
	}
	t.Run("passphrase", func(t *testing.T) {
		dir := t.TempDir()
		src := filepath.Join(dir, "disk.img")
		makeImage(t, src, testBS, region{0, testBS, "random"})
		pass := filepath.Join(dir, "pass")
		os.WriteFile(pass, []byte("correct horse\n"), 0o600)
		if r := run(t, "send", src, "--to", filepath.Join(dir, "dest"), "--passphrase-file", pass, "--base", "latest"); r.code != exitUsage {
			t.Errorf("--base with a passphrase: exit %d, want 2; %s", r.code, r.stderr)
		}
	})
}

// TestIncrementalResumes interrupts an incremental send: the rerun resumes
// it as the same incremental shipment.
func TestIncrementalResumes(t *testing.T) {
	bin := coldshipBinary(t)
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 512*testBS, region{0, 512 * testBS, "random"})
	dest, state := filepath.Join(dir, "dest"), filepath.Join(dir, "state")
	send := []string{"send", src, "--to", dest, "-r", rcpt, "--block-size", "64K", "--base", "latest", "--state-dir", state,
		"--segment-size", "1M", "--compress", "none", "-q"}
	base := strings.TrimSpace(mustRun(t, send...).stdout)
	var changed []int64
	for b := int64(0); b < 512; b += 3 {
		changed = append(changed, b)
	}
	rewriteBlocks(t, src, testBS, changed...)

	cmd := exec.Command(bin, append(send, "--bwlimit", "4M", "--streams", "1", "-j", "1")...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		segs, _ := filepath.Glob(filepath.Join(dest, "*", "segments", "00000003"))
		if len(segs) > 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the incremental send put no segment in time")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	r := mustRun(t, append(send[:len(send)-1], "--json")...)
	id, _ := summaryOf(t, r.stdout)["shipment"].(string)
	if !strings.Contains(r.stdout, "resuming shipment "+id) {
		t.Errorf("the rerun did not resume: %s", r.stdout)
	}
	if s := summaryOf(t, r.stdout); s["base"] != base {
		t.Errorf("resumed send: %v; want incremental on %s", s, base)
	}
	out := filepath.Join(dir, "out")
	mustRun(t, "receive", dest, id, "--out", out, "-i", key, "-q")
	sameFile(t, src, filepath.Join(out, "disk.img"))
	mustRun(t, "verify", dest, id)
}

// TestS3IncrementalChain runs a DR chain over a real S3 server: incremental
// sends under a bandwidth limit, keyless verify of the bases, an in-place
// update that fetches records by ranged reads, and prune.
func TestS3IncrementalChain(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 96*testBS, region{0, 64 * testBS, "random"}, region{80 * testBS, 8 * testBS, "text"})
	dest := "s3://" + srv.Bucket + "/dr/web01"
	send := []string{src, "--to", dest, "-r", rcpt, "--block-size", "64K", "--segment-size", "1M", "--base", "latest", "--bwlimit", "20M"}
	full, _, _ := drSend(t, send...)
	out := filepath.Join(dir, "out")
	mustRun(t, "receive", dest, full, "--out", out, "-i", key, "-q")

	var ids []string
	for _, blocks := range [][]int64{{1, 50}, {1, 50, 90}} { // the second makes the first unneeded
		rewriteBlocks(t, src, testBS, blocks...)
		id, sum, stderr := drSend(t, send...)
		if sum["incremental"] != true || num(sum, "bytes_data") != int64(len(blocks))*testBS {
			t.Fatalf("incremental over S3: %v\n%s", sum, stderr)
		}
		ids = append(ids, id)
	}
	mustRun(t, "verify", dest, ids[1])
	mustRun(t, "verify", dest, ids[1], "-i", key)
	r := mustRun(t, "receive", dest, ids[1], "--into", out, "-i", key, "--bwlimit", "20M", "--json")
	if w := num(summaryOf(t, r.stdout), "bytes_written"); w != 3*testBS {
		t.Errorf("--into over S3 wrote %d bytes, want the 3 changed blocks", w)
	}
	sameFile(t, src, filepath.Join(out, "disk.img"))

	mustRun(t, "prune", dest, "--keep-last", "1")
	r = mustRun(t, "list", dest)
	if strings.Count(strings.TrimSpace(r.stdout), "\n") != 1 || !strings.Contains(r.stdout, full) || !strings.Contains(r.stdout, ids[1]) {
		t.Errorf("after prune --keep-last 1, want the newest and its base:\n%s", r.stdout)
	}
	out2 := filepath.Join(dir, "out2")
	mustRun(t, "receive", dest, ids[1], "--out", out2, "-i", key, "-q")
	sameFile(t, src, filepath.Join(out2, "disk.img"))
}

// TestSFTPIncrementalChain runs a DR chain over OpenSSH's sshd: each
// incremental send checks every shipment its base uses at the destination
// (their segments' folder, manifests, inventories and keys, at once), the
// latest of the chain restores bit-exact, and a segment of a base deleted
// at the destination makes the next send a full one that says why.
func TestSFTPIncrementalChain(t *testing.T) {
	srv, dest, auth := sftpEnv(t)
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 64*testBS, region{0, 64 * testBS, "random"})
	send := append([]string{src, "--to", dest, "-r", rcpt, "--block-size", "64K", "--segment-size", "1M", "--base", "latest",
		"--state-dir", filepath.Join(dir, "state")}, auth...)
	full, _, _ := drSend(t, send...)
	var ids []string
	for i := range 4 {
		rewriteBlocks(t, src, testBS, int64(i), int64(40+i))
		id, sum, stderr := drSend(t, send...)
		if sum["incremental"] != true || num(sum, "bytes_data") != 2*testBS {
			t.Fatalf("incremental %d over SFTP: %v\n%s", i, sum, stderr)
		}
		ids = append(ids, id)
	}
	out := filepath.Join(dir, "out")
	mustRun(t, append([]string{"receive", dest, "--out", out, "-i", key, "-q"}, auth...)...)
	sameFile(t, src, filepath.Join(out, "disk.img"))

	segs, _ := filepath.Glob(filepath.Join(srv.Root, "dr", full, "segments", "*"))
	if len(segs) < 2 {
		t.Fatalf("the full shipment has %d segments", len(segs))
	}
	if err := os.Remove(segs[len(segs)-1]); err != nil {
		t.Fatal(err)
	}
	rewriteBlocks(t, src, testBS, 7)
	again, sum, stderr := drSend(t, send...)
	if sum["incremental"] != false || !strings.Contains(stderr, "sending a full shipment") || !strings.Contains(stderr, "missing or of the wrong size") {
		t.Fatalf("after a base segment was deleted: %v\n%s", sum, stderr)
	}
	out2 := filepath.Join(dir, "out2")
	mustRun(t, append([]string{"receive", dest, again, "--out", out2, "-i", key, "-q"}, auth...)...)
	sameFile(t, src, filepath.Join(out2, "disk.img"))
	if r := run(t, append([]string{"receive", dest, ids[3], "--out", filepath.Join(dir, "out3"), "-i", key, "-q"}, auth...)...); r.code != exitIntegrity {
		t.Errorf("receive of an incremental shipment whose base lost a segment: exit %d, want %d\n%s", r.code, exitIntegrity, r.stderr)
	}
}

// TestBaseCheckFlag: --base-check takes content or size; anything else is
// a usage error before anything is read.
func TestBaseCheckFlag(t *testing.T) {
	_, rcpt := keypair(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(img, []byte("a small disk"), 0o600)
	r := run(t, "send", img, "--to", t.TempDir(), "-r", rcpt, "--base", "latest", "--base-check", "crc", "--state-dir", t.TempDir())
	if r.code != exitUsage || !strings.Contains(r.stderr, "--base-check") {
		t.Errorf("--base-check crc: exit %d, want 2 naming the flag: %s", r.code, r.stderr)
	}
	for _, mode := range []string{"content", "size"} {
		if r := run(t, "send", img, "--to", t.TempDir(), "-r", rcpt, "--base", "latest", "--base-check", mode, "--state-dir", t.TempDir()); r.code != 0 {
			t.Errorf("--base-check %s: exit %d: %s", mode, r.code, r.stderr)
		}
	}
}

// TestDestKey: one destination has one name in journals, DR state and
// locks however it is spelled.
func TestDestKey(t *testing.T) {
	for _, same := range [][]string{
		{"sftp://backup@dr.example.com/srv/dr", "sftp://backup@dr.example.com/srv/dr/", "sftp://backup@dr.example.com:22//srv//dr/"},
		{"sftp://dr.example.com:2222/~/dr", "sftp://dr.example.com:2222/~/dr/"},
		{"s3://bucket/web01", "s3://bucket/web01/", "s3://bucket//web01"},
		{"file:///srv/dr", "/srv/dr/", "/srv//dr"},
	} {
		for _, d := range same[1:] {
			if got, want := destKey(d), destKey(same[0]); got != want {
				t.Errorf("destKey(%q) = %q, want %q as for %q", d, got, want, same[0])
			}
		}
	}
	for _, differ := range [][2]string{
		{"sftp://a@h/srv/dr", "sftp://b@h/srv/dr"},
		{"sftp://h/srv/dr", "sftp://h:2222/srv/dr"},
		{"sftp://h/~/dr", "sftp://h/dr"},
		{"s3://bucket/a", "s3://bucket/b"},
	} {
		if destKey(differ[0]) == destKey(differ[1]) {
			t.Errorf("destKey(%q) = destKey(%q) = %q", differ[0], differ[1], destKey(differ[0]))
		}
	}
}

// TestIntoRollbackCheckedUnderLock: receive --into checked that it would
// not roll the restore back before it waited for the folder's lock (and
// before its pre-receive hooks ran). Another receive that updated the
// folder to a newer shipment meanwhile went unseen: the first then
// updated it back to its older shipment and exited 0. The check is made
// again under the lock, on what the folder holds then.
func TestIntoRollbackCheckedUnderLock(t *testing.T) {
	bin := coldshipBinary(t)
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 16*testBS, region{0, 16 * testBS, "random"})
	dest, state := filepath.Join(dir, "dest"), filepath.Join(dir, "state")
	send := []string{src, "--to", dest, "-r", rcpt, "--block-size", "64K", "--base", "latest", "--state-dir", state}
	var ids []string
	for i := range 3 {
		rewriteBlocks(t, src, testBS, int64(i))
		id, _, _ := drSend(t, send...)
		ids = append(ids, id)
	}
	newest, _ := os.ReadFile(src)
	into := filepath.Join(dir, "dr")
	mustRun(t, "receive", dest, ids[0], "--out", into, "-i", key, "-q")

	// The older update passes its check, then waits in its pre-receive
	// hook while the newer one runs to its end.
	hooked, proceed := filepath.Join(dir, "hooked"), filepath.Join(dir, "proceed")
	hook := fmt.Sprintf("pre-receive=touch %s; while [ ! -e %s ]; do sleep 0.05; done", hooked, proceed)
	older := exec.Command(bin, "receive", dest, ids[1], "--into", into, "-i", key, "--lock-wait", "1m", "--hook", hook)
	var stderr bytes.Buffer
	older.Stderr = &stderr
	if err := older.Start(); err != nil {
		t.Fatal(err)
	}
	defer older.Process.Kill()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(hooked); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the older receive never ran its hook: %s", stderr.String())
		}
	}
	mustRun(t, "receive", dest, ids[2], "--into", into, "-i", key, "-q")
	os.WriteFile(proceed, nil, 0o644)
	err := older.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != exitIntegrity || !strings.Contains(stderr.String(), "refusing to roll back") ||
		!strings.Contains(stderr.String(), ids[2]) {
		t.Errorf("update to %s after another receive updated the folder to %s: %v; want exit 5 naming both\n%s", ids[1], ids[2], err, stderr.String())
	}
	if b, _ := os.ReadFile(filepath.Join(into, "disk.img")); !bytes.Equal(b, newest) {
		t.Errorf("the restore no longer holds %s", ids[2])
	}
}

// TestIntoRefusesAnotherLabel: two VMs sent to one destination under the
// same file name (/vms/a/disk.img, /vms/b/disk.img) with their own
// --name. receive --into the restore of one, of latest, took the other's
// newer shipment for the next of its series and replaced the restore
// with the other VM's disk, exit 0. It refuses (exit 5, naming both)
// unless --allow-rollback; the next shipment of its own label updates it.
func TestIntoRefusesAnotherLabel(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	dest, state := filepath.Join(dir, "dest"), filepath.Join(dir, "state")
	disk := map[string]string{}
	for _, vm := range []string{"a", "b"} {
		disk[vm] = filepath.Join(dir, vm, "disk.img")
		os.MkdirAll(filepath.Dir(disk[vm]), 0o755)
		makeImage(t, disk[vm], 8*testBS, region{0, 8 * testBS, "random"})
	}
	send := func(vm string) string {
		id, _, _ := drSend(t, disk[vm], "--to", dest, "-r", rcpt, "--block-size", "64K", "--base", "latest", "--state-dir", state, "--name", vm)
		return id
	}
	into := filepath.Join(dir, "dr-a")
	a1 := send("a")
	mustRun(t, "receive", dest, "--into", into, "-i", key, "-q")
	b1 := send("b")
	r := run(t, "receive", dest, "--into", into, "-i", key)
	if r.code != exitIntegrity || !strings.Contains(r.stderr, b1) || !strings.Contains(r.stderr, a1) || !strings.Contains(r.stderr, "another series") {
		t.Errorf("--into the restore of %q of latest, of label %q: exit %d; want 5 naming both\n%s", "a", "b", r.code, r.stderr)
	}
	sameFile(t, disk["a"], filepath.Join(into, "disk.img"))

	rewriteBlocks(t, disk["a"], testBS, 3)
	a2 := send("a")
	mustRun(t, "receive", dest, a2, "--into", into, "-i", key, "-q")
	sameFile(t, disk["a"], filepath.Join(into, "disk.img"))

	r = run(t, "receive", dest, b1, "--into", into, "-i", key, "--allow-rollback")
	if r.code != 0 || !strings.Contains(r.stderr, "--allow-rollback: refusing to update to another series") {
		t.Errorf("--allow-rollback: exit %d\n%s", r.code, r.stderr)
	}
	sameFile(t, disk["b"], filepath.Join(into, "disk.img"))
}
