package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coldship/coldship/shipper/sftp/sftptest"
)

// sftpEnv starts a real OpenSSH sshd on loopback and returns the DEST URL
// and the flags that authenticate to it, with the user's own ssh setup
// (agent, ~/.ssh) out of the way.
func sftpEnv(t *testing.T, opts ...sftptest.Option) (*sftptest.Server, string, []string) {
	srv := sftptest.StartSSHD(t, opts...)
	t.Setenv("HOME", t.TempDir())
	t.Setenv("SSH_AUTH_SOCK", "")
	dest := fmt.Sprintf("sftp://%s@%s:%d%s/dr", srv.User, srv.Host, srv.Port, srv.Root)
	return srv, dest, []string{"--ssh-key", srv.ClientKeyFile, "--known-hosts", srv.KnownHostsFile}
}

func TestSFTPRoundTrip(t *testing.T) {
	srv, dest, auth := sftpEnv(t)
	key, rcpt := keypair(t)
	dir := t.TempDir()
	vm := filepath.Join(dir, "vm")
	os.MkdirAll(vm, 0o755)
	src := filepath.Join(vm, "disk.img")
	makeImage(t, src, 48<<20, region{0, 6 << 20, "random"}, region{16 << 20, 2 << 20, "text"}, region{40 << 20, 1 << 20, "zero"})
	os.WriteFile(filepath.Join(vm, "vm.xml"), []byte("<domain/>\n"), 0o644)

	id := strings.TrimSpace(mustRun(t, append([]string{"send", vm, "--to", dest, "-r", rcpt, "--segment-size", "2M", "-q"}, auth...)...).stdout)
	if r := mustRun(t, append([]string{"list", dest}, auth...)...); !strings.Contains(r.stdout, id+"\t") || !strings.Contains(r.stdout, "complete") {
		t.Errorf("list over sftp: %q", r.stdout)
	}
	// Every transfer's summary says what the link was measured to be.
	for _, args := range [][]string{{"verify", dest, id}, {"verify", dest, id, "-i", key}, {"verify", "--all", dest}} {
		sum := summaryOf(t, mustRun(t, append(append(args, "--json"), auth...)...).stdout)
		if rtt, _ := sum["rtt_ms"].(float64); rtt <= 0 || sum["connections"] == nil || sum["channels"] == nil || sum["throughput_bps"] == nil {
			t.Errorf("%v --json: summary %v; want rtt_ms, connections, channels and throughput_bps", args, sum)
		}
	}
	out := filepath.Join(dir, "out")
	mustRun(t, append([]string{"receive", dest, id, "--out", out, "-i", key, "-q"}, auth...)...)
	sameFile(t, src, filepath.Join(out, "vm", "disk.img"))
	if a, b := allocated(t, src), allocated(t, filepath.Join(out, "vm", "disk.img")); b > a {
		t.Errorf("restored image allocates %d bytes, the source %d", b, a)
	}
	// The shipment on the server is the same folder of plain objects: it can
	// be received from a local path too.
	out2 := filepath.Join(dir, "out2")
	mustRun(t, "receive", filepath.Join(srv.Root, "dr"), id, "--out", out2, "-i", key, "-q")
	sameFile(t, src, filepath.Join(out2, "vm", "disk.img"))
}

func TestSFTPHostKeysAndUserKey(t *testing.T) {
	srv, dest, _ := sftpEnv(t)
	dir := t.TempDir()

	empty := filepath.Join(dir, "known_hosts")
	os.WriteFile(empty, nil, 0o600)
	os.MkdirAll(filepath.Join(srv.Root, "dr"), 0o755) // list of a missing destination fails
	r := run(t, "list", dest, "--ssh-key", srv.ClientKeyFile, "--known-hosts", empty)
	if r.code != exitAuth || !strings.Contains(r.stderr, srv.HostKeyFingerprint) || !strings.Contains(r.stderr, "--accept-new-host-key") {
		t.Errorf("unknown host: exit %d, stderr %q; want 4 with the SHA256 fingerprint and how to trust it", r.code, r.stderr)
	}
	r = mustRun(t, "list", dest, "--ssh-key", srv.ClientKeyFile, "--known-hosts", empty, "--accept-new-host-key")
	if !strings.Contains(r.stderr, "Permanently added") || !strings.Contains(r.stderr, srv.HostKeyFingerprint) {
		t.Errorf("recorded host key: stderr %q; want it said, with the fingerprint, as ssh does", r.stderr)
	}
	mustRun(t, "list", dest, "--ssh-key", srv.ClientKeyFile, "--known-hosts", empty) // now known

	// The note of a recorded key follows --json (a notice object on
	// stdout) and --quiet (nothing), as every notice does.
	fresh := func(name string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, nil, 0o600)
		return p
	}
	r = mustRun(t, "list", dest, "--ssh-key", srv.ClientKeyFile, "--known-hosts", fresh("kh_json"), "--accept-new-host-key", "--json")
	if strings.Contains(r.stderr, "Permanently added") || !strings.Contains(r.stdout, `"type":"notice"`) || !strings.Contains(r.stdout, srv.HostKeyFingerprint) {
		t.Errorf("recorded host key with --json: stdout %q, stderr %q; want a notice object on stdout only", r.stdout, r.stderr)
	}
	r = run(t, "verify", "--all", dest, "--ssh-key", srv.ClientKeyFile, "--known-hosts", fresh("kh_quiet"), "--accept-new-host-key", "-q")
	if strings.Contains(r.stderr, "Permanently added") || !strings.Contains(r.stderr, "no shipment") {
		t.Errorf("recorded host key with --quiet: exit %d, stderr %q; want only the error", r.code, r.stderr)
	}

	// Changed host key: another key recorded for this host and port.
	_, other := sftptest.NewKeyFile(t, dir, "other_host_key", nil)
	changed := filepath.Join(dir, "known_hosts_changed")
	line := fmt.Sprintf("[%s]:%d %s", srv.Host, srv.Port, strings.TrimSpace(string(marshalAuthorizedKey(other.PublicKey()))))
	os.WriteFile(changed, []byte(line+"\n"), 0o600)
	for _, extra := range [][]string{nil, {"--accept-new-host-key"}} {
		r := run(t, append([]string{"list", dest, "--ssh-key", srv.ClientKeyFile, "--known-hosts", changed}, extra...)...)
		if r.code != exitAuth {
			t.Errorf("changed host key %v: exit %d, want 4; %s", extra, r.code, r.stderr)
		}
	}

	// A user key the server does not accept.
	wrongKey, _ := sftptest.NewKeyFile(t, dir, "id_wrong", nil)
	r = run(t, "list", dest, "--ssh-key", wrongKey, "--known-hosts", srv.KnownHostsFile)
	if r.code != exitAuth {
		t.Errorf("wrong user key: exit %d, want 4; %s", r.code, r.stderr)
	}
}

// TestSFTPConnectionCutAndRerun cuts every TCP connection in the middle of
// a send: the send fails, nothing at a final name is partial, and a rerun
// of the same command uploads only what is missing and restores exactly.
func TestSFTPConnectionCutAndRerun(t *testing.T) {
	srv, dest, auth := sftpEnv(t)
	srv.Forwarder().SetDelay(2 * time.Millisecond)
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 32<<20, region{0, 32 << 20, "random"})
	args := append([]string{"send", src, "--to", dest, "-r", rcpt, "--segment-size", "1M", "--streams", "2", "--retries", "0", "-q"}, auth...)

	done := make(chan result, 1)
	go func() { done <- runCtx(t, context.Background(), nil, args...) }()
	waitForFile(t, filepath.Join(srv.Root, "dr", "*", "segments", "00000003"))
	srv.CutConnections()
	r := <-done
	if r.code == 0 {
		t.Fatal("send succeeded although its connections were cut")
	}
	if strings.Contains(r.stderr, "notice") { // -q: only errors
		t.Errorf("send -q printed a notice: %s", r.stderr)
	}
	ships, _ := filepath.Glob(filepath.Join(srv.Root, "dr", "*"))
	if len(ships) != 1 {
		t.Fatalf("shipments after the cut: %v", ships)
	}
	id := filepath.Base(ships[0])
	if _, err := os.Stat(filepath.Join(ships[0], "manifest")); err == nil {
		t.Fatal("the interrupted shipment has a manifest")
	}
	before := map[string]int64{}
	segs, _ := filepath.Glob(filepath.Join(ships[0], "segments", "0*"))
	for _, s := range segs {
		fi, _ := os.Stat(s)
		before[filepath.Base(s)] = fi.Size()
	}

	srv.Forwarder().SetDelay(0)
	r = mustRun(t, args...)
	if got := strings.TrimSpace(r.stdout); got != id {
		t.Errorf("rerun made shipment %s, want to resume %s", got, id)
	}
	// Segments complete before the cut were kept as they were: every object
	// at a final name was whole (the inventory verify below checks sizes
	// and digests of all of them).
	for name, size := range before {
		fi, err := os.Stat(filepath.Join(ships[0], "segments", name))
		if err == nil && fi.Size() != size {
			t.Errorf("segment %s changed size on rerun (%d -> %d): it was partial or re-uploaded", name, size, fi.Size())
		}
	}
	mustRun(t, append([]string{"verify", dest, id}, auth...)...)
	out := filepath.Join(dir, "out")
	mustRun(t, append([]string{"receive", dest, id, "--out", out, "-i", key, "-q"}, auth...)...)
	sameFile(t, src, filepath.Join(out, "disk.img"))
	tmps, _ := filepath.Glob(filepath.Join(ships[0], "*", ".*"))
	if len(tmps) != 0 {
		t.Errorf("temporaries left on the server: %v", tmps)
	}
}

// TestSFTPServerRestartRetried stops sshd in the middle of a send and
// starts it again: the send retries with backoff and completes by itself.
func TestSFTPServerRestartRetried(t *testing.T) {
	srv, dest, auth := sftpEnv(t)
	srv.Forwarder().SetDelay(2 * time.Millisecond)
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 24<<20, region{0, 24 << 20, "random"})
	done := make(chan result, 1)
	go func() {
		done <- runCtx(t, context.Background(), nil, append([]string{"send", src, "--to", dest, "-r", rcpt, "--segment-size", "1M", "--streams", "2", "--json"}, auth...)...)
	}()
	waitForFile(t, filepath.Join(srv.Root, "dr", "*", "segments", "00000002"))
	srv.Stop()
	srv.CutConnections()
	time.Sleep(1500 * time.Millisecond)
	srv.Forwarder().SetDelay(0)
	srv.Restart()
	r := <-done
	if r.code != 0 {
		t.Fatalf("send across an sshd restart: exit %d\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, "resuming") {
		t.Errorf("no retry was reported: %s", r.stdout)
	}
	// The transport's own notice is a JSON object too, not a line on stderr.
	if !strings.Contains(r.stdout, `{"message":"notice: the connection to `+srv.Addr+` broke; connecting again","type":"notice"}`) ||
		strings.Contains(r.stderr, "broke") {
		t.Errorf("the reconnection was not reported as a JSON notice:\nstdout: %s\nstderr: %s", r.stdout, r.stderr)
	}
	out := filepath.Join(dir, "out")
	id, _ := summaryOf(t, r.stdout)["shipment"].(string)
	mustRun(t, append([]string{"receive", dest, id, "--out", out, "-i", key, "-q"}, auth...)...)
	sameFile(t, src, filepath.Join(out, "disk.img"))
}

// TestSFTPReceiveMemoryBound receives 512 MiB from a real sshd over 32
// SFTP channels with 8 openers, the most memory a receive asks for over
// SFTP: its reads ahead fill the shared budget, every channel has a piece
// of a segment to read, and the peak RSS must stay within the README's
// 256 MiB (without the runtime's memory limit it was 259-265 MiB here).
func TestSFTPReceiveMemoryBound(t *testing.T) {
	_, dest, auth := sftpEnv(t)
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 512<<20, region{0, 512 << 20, "random"})
	id := strings.TrimSpace(mustRun(t, append([]string{"send", src, "--to", dest, "-r", rcpt, "-q"}, auth...)...).stdout)
	out := filepath.Join(dir, "out")
	rss, _ := sendRSS(t, append([]string{"receive", dest, id, "--out", out, "-i", key, "-q", "--jobs", "8", "--streams", "32"}, auth...)...)
	if rss > 256<<20 {
		t.Errorf("receive over 32 SFTP channels: peak RSS %d MiB, want at most 256", rss>>20)
	}
	sameFile(t, src, filepath.Join(out, "disk.img"))
}

// TestSFTPLatest: without a shipment id, receive over SFTP (which lists
// only the shipments' own folders to choose) restores the newest
// complete shipment, through --bwlimit's wrapper too, and passes over a
// newer one whose manifest is gone.
func TestSFTPLatest(t *testing.T) {
	srv, dest, auth := sftpEnv(t)
	key, rcpt := keypair(t)
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	makeImage(t, a, 4<<20, region{0, 1 << 20, "random"})
	makeImage(t, b, 4<<20, region{1 << 20, 1 << 20, "random"})
	send := func(src string) string {
		return strings.TrimSpace(mustRun(t, append([]string{"send", src, "--to", dest, "-r", rcpt, "-q"}, auth...)...).stdout)
	}
	send(a)
	time.Sleep(1100 * time.Millisecond) // ids sort by the second
	idB := send(b)
	out := filepath.Join(dir, "out1")
	mustRun(t, append([]string{"receive", dest, "--out", out, "-i", key, "-q", "--bwlimit", "1G"}, auth...)...)
	sameFile(t, b, filepath.Join(out, "b.img"))

	if err := os.Remove(filepath.Join(srv.Root, "dr", idB, "manifest")); err != nil {
		t.Fatal(err)
	}
	out = filepath.Join(dir, "out2")
	mustRun(t, append([]string{"receive", dest, "--out", out, "-i", key, "-q"}, auth...)...)
	sameFile(t, a, filepath.Join(out, "a.img"))

	// A newer folder whose "manifest" is a folder is no complete shipment
	// (latest over SFTP asks Stat of each manifest rather than listing).
	junk := time.Now().UTC().Format("20060102T150405Z") + "-0000abcd"
	if err := os.MkdirAll(filepath.Join(srv.Root, "dr", junk, "manifest"), 0o755); err != nil {
		t.Fatal(err)
	}
	out = filepath.Join(dir, "out3")
	mustRun(t, append([]string{"receive", dest, "--out", out, "-i", key, "-q"}, auth...)...)
	sameFile(t, a, filepath.Join(out, "a.img"))
}

// TestSFTPHeaderNotReadIsNoDamage: a header the server refuses to read
// (permission denied: sshd without root's override, the header mode 0) is
// not a damaged one. Before, list showed the shipment unreadable and exit
// 0, latest passed over it and restored an older shipment, and prune
// counted it for no rule and deleted its base; now each exits 1 naming the
// header, and nothing is restored or deleted.
func TestSFTPHeaderNotReadIsNoDamage(t *testing.T) {
	srv, dest, auth := sftpEnv(t, sftptest.NoOverride())
	key, rcpt := keypair(t)
	dir := t.TempDir()
	a, c := filepath.Join(dir, "a.img"), filepath.Join(dir, "c.img")
	makeImage(t, a, 4<<20, region{0, 1 << 20, "random"})
	makeImage(t, c, 4<<20, region{1 << 20, 1 << 20, "random"})
	send := func(src string, extra ...string) string {
		args := append([]string{"send", src, "--to", dest, "-r", rcpt, "-q"}, extra...)
		return strings.TrimSpace(mustRun(t, append(args, auth...)...).stdout)
	}
	idA := send(a, "--base", "none")
	time.Sleep(1100 * time.Millisecond) // ids sort by the second
	send(c, "--base", "none")
	time.Sleep(1100 * time.Millisecond)
	makeImage(t, a, 4<<20, region{0, 1 << 20, "random"}, region{2 << 20, 1 << 20, "random"})
	idB := send(a, "--base", idA) // the newest, incremental on A

	header := filepath.Join(srv.Root, "dr", idB, "header")
	if err := os.Chmod(header, 0); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(header, 0o644)
	named := idB + "/header"
	out := filepath.Join(dir, "out")
	for _, args := range [][]string{
		{"list", dest},
		{"receive", dest, "latest", "--out", out, "-i", key, "-q"},
		{"prune", dest, "--keep-last", "1"},
	} {
		r := run(t, append(args, auth...)...)
		if r.code != exitError || !strings.Contains(r.stderr, named) || !strings.Contains(r.stderr, "permission denied") {
			t.Errorf("%s with %s not readable: exit %d, stderr %q; want 1 naming it", args[0], named, r.code, r.stderr)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("receive latest restored something into %s (%v)", out, err)
	}
	if _, err := os.Stat(filepath.Join(srv.Root, "dr", idA, "manifest")); err != nil {
		t.Errorf("prune deleted %s, the base of %s: %v", idA, idB, err)
	}

	// A folder where a header should be is damage, not a failed read:
	// list shows that junk unreadable, as before.
	os.Chmod(header, 0o644)
	junk := filepath.Join(srv.Root, "dr", "20200101T000000Z-0000abcd")
	os.MkdirAll(filepath.Join(junk, "header"), 0o755)
	os.WriteFile(filepath.Join(junk, "header", "x"), []byte("x"), 0o644)
	r := run(t, append([]string{"list", dest}, auth...)...)
	if r.code != 0 || !strings.Contains(r.stdout, filepath.Base(junk)+"\t-\t-\t1\tunreadable") {
		t.Errorf("list with a folder as a header: exit %d, stdout %q, stderr %q; want it unreadable", r.code, r.stdout, r.stderr)
	}
}

// TestSFTPVerifyAllAgreesWithPrune: a folder older than the newest
// complete shipment, with no manifest and a header that does not parse,
// is one prune leaves alone (it cannot tell it is a shipment); verify
// --all reported it as a failed send that prune deletes.
func TestSFTPVerifyAllAgreesWithPrune(t *testing.T) {
	srv, dest, auth := sftpEnv(t)
	_, rcpt := keypair(t)
	src := filepath.Join(t.TempDir(), "a.img")
	makeImage(t, src, 2<<20, region{0, 1 << 20, "random"})
	mustRun(t, append([]string{"send", src, "--to", dest, "-r", rcpt, "-q"}, auth...)...)
	junk := filepath.Join(srv.Root, "dr", "20200101T000000Z-0000abcd")
	os.MkdirAll(filepath.Join(junk, "segments"), 0o755)
	os.WriteFile(filepath.Join(junk, "header"), []byte("not a header\n"), 0o644)
	os.WriteFile(filepath.Join(junk, "segments", "00000001"), []byte("x"), 0o644)

	id := filepath.Base(junk)
	r := run(t, append([]string{"prune", dest, "--keep-last", "1", "--dry-run"}, auth...)...)
	if r.code != 0 || !strings.Contains(r.stderr, "ignore  "+id) {
		t.Fatalf("prune --dry-run: exit %d, stderr %q; want %s left alone", r.code, r.stderr, id)
	}
	r = run(t, append([]string{"verify", "--all", dest}, auth...)...)
	line := ""
	for l := range strings.SplitSeq(r.stderr, "\n") {
		if strings.Contains(l, id) {
			line = l
		}
	}
	if r.code != exitIntegrity || !strings.Contains(line, "prune leaves it alone") || strings.Contains(line, "prune deletes it") {
		t.Errorf("verify --all: exit %d, says of %s %q; want 5, and that prune leaves it alone", r.code, id, line)
	}
}

// TestSFTPFolderForAnObject: a folder where a segment should be is a
// missing segment for every command that reads it (exit 5, naming it);
// key-less verify exited 1.
func TestSFTPFolderForAnObject(t *testing.T) {
	srv, dest, auth := sftpEnv(t)
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "a.img")
	makeImage(t, src, 4<<20, region{0, 4 << 20, "random"})
	id := strings.TrimSpace(mustRun(t, append([]string{"send", src, "--to", dest, "-r", rcpt, "--segment-size", "1M", "-q"}, auth...)...).stdout)
	seg := filepath.Join(srv.Root, "dr", id, "segments", "00000002")
	if err := os.Remove(seg); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(seg, "x"), 0o755)
	out := filepath.Join(dir, "out")
	for _, args := range [][]string{
		{"verify", dest, id},
		{"verify", dest, id, "-i", key},
		{"receive", dest, id, "--out", out, "-i", key, "-q"},
	} {
		r := run(t, append(args, auth...)...)
		if r.code != exitIntegrity || !strings.Contains(r.stderr, id+"/segments/00000002") {
			t.Errorf("%v with a folder for a segment: exit %d, stderr %q; want 5 naming it", args, r.code, r.stderr)
		}
	}
	noFinalFiles(t, out)
}

// TestSFTPVerifyInPieces: without a key, verify reads a large segment in
// pieces over several channels of real sshd (32 MiB segments, 4 streams:
// pieces of 10 MiB) and still checks it whole: a byte flipped in its middle
// or one appended at its end exits 5, naming it.
func TestSFTPVerifyInPieces(t *testing.T) {
	srv, dest, auth := sftpEnv(t)
	_, rcpt := keypair(t)
	src := filepath.Join(t.TempDir(), "disk.img")
	makeImage(t, src, 40<<20, region{0, 40 << 20, "random"})
	id := strings.TrimSpace(mustRun(t, append([]string{"send", src, "--to", dest, "-r", rcpt, "--segment-size", "32M", "--streams", "1", "--compress", "none", "-q"}, auth...)...).stdout)
	verify := append([]string{"verify", dest, id, "--streams", "4"}, auth...)
	mustRun(t, verify...)

	seg := filepath.Join(srv.Root, "dr", id, "segments", "00000001")
	if fi, err := os.Stat(seg); err != nil || fi.Size() < 30<<20 {
		t.Fatalf("segment 1: %v, %v; want one of about 32 MiB", fi, err)
	}
	flip := func(off int64) {
		f, err := os.OpenFile(seg, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, 1)
		f.ReadAt(b, off)
		b[0] ^= 0x01
		f.WriteAt(b, off)
	}
	flip(17 << 20)
	if r := run(t, verify...); r.code != exitIntegrity || !strings.Contains(r.stderr, "segments/00000001") {
		t.Errorf("verify of a segment damaged in its middle: exit %d, want 5 naming it: %s", r.code, r.stderr)
	}
	flip(17 << 20)
	mustRun(t, verify...)
	f, err := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{0})
	f.Close()
	if r := run(t, verify...); r.code != exitIntegrity || !strings.Contains(r.stderr, "segments/00000001") {
		t.Errorf("verify of a segment one byte longer: exit %d, want 5 naming it: %s", r.code, r.stderr)
	}
}

// TestSFTPLockSpellings: a send to an SFTP destination holds its lock
// however another run spells it (without the user, by an ssh_config
// alias): a prune meanwhile is refused, naming the send's pid.
func TestSFTPLockSpellings(t *testing.T) {
	srv, dest, auth := sftpEnv(t)
	bin := coldshipBinary(t)
	_, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 2<<20, region{0, 2 << 20, "random"})
	state := filepath.Join(dir, "state")
	home := os.Getenv("HOME")
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	os.WriteFile(filepath.Join(home, ".ssh", "config"), fmt.Appendf(nil, "Host vault\n  HostName %s\n  Port %d\n", srv.Host, srv.Port), 0o600)

	cmd := exec.Command(bin, append([]string{"send", src, "--to", dest, "-r", rcpt, "--state-dir", state, "-q", "--bwlimit", "2M", "--compress", "none"}, auth...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		locks, _ := filepath.Glob(filepath.Join(state, "locks", "*.lock"))
		if len(locks) == 1 {
			if b, _ := os.ReadFile(locks[0]); strings.HasPrefix(string(b), "pid ") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the send never took the lock")
		}
	}
	for _, spelling := range []string{
		fmt.Sprintf("sftp://%s:%d%s/dr", srv.Host, srv.Port, srv.Root),
		fmt.Sprintf("sftp://vault%s/dr", srv.Root),
	} {
		r := run(t, append([]string{"prune", spelling, "--keep-last", "1", "--state-dir", state}, auth...)...)
		if r.code != exitError || !strings.Contains(r.stderr, fmt.Sprintf("pid %d", cmd.Process.Pid)) {
			t.Errorf("prune %s during a send to %s: exit %d, want 1 naming pid %d:\n%s", spelling, dest, r.code, cmd.Process.Pid, r.stderr)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("send: %v", err)
	}
}
