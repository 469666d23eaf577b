package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coldship/coldship/archive"
)

func TestUnknownCommandAndFlag(t *testing.T) {
	for _, args := range [][]string{{"sned"}, {"frobnicate"}, {"list", "--no-such-flag", "x"}, {"--bogus"}, {"list"}, {"keygen", "extra"}} {
		r := run(t, args...)
		if r.code != exitUsage {
			t.Errorf("coldship %s: exit %d, want %d; %s", strings.Join(args, " "), r.code, exitUsage, r.stderr)
		}
	}
	if r := run(t, "sned"); !strings.Contains(r.stderr, `did you mean "send"`) {
		t.Errorf("a mistyped command does not suggest the right one: %s", r.stderr)
	}
	if r := run(t); r.code != 0 || !strings.Contains(r.stdout, "Available Commands") {
		t.Errorf("coldship alone: exit %d, %s", r.code, r.stdout)
	}
}

func TestDestTypos(t *testing.T) {
	for _, tc := range []struct{ dest, want string }{
		{"s3:/dr-bucket/x", "s3://bucket[/prefix]"},
		{"s3:dr-bucket", "s3://bucket[/prefix]"},
		{"s3//dr-bucket/x", "s3://bucket[/prefix]"},
		{"s3://bucket:9000/x", "s3://bucket[/prefix]"},
		{"sftp:/host/path", "sftp://[user@]host[:port]/path"},
		{"sftp//host/path", "sftp://[user@]host[:port]/path"},
		{"sftp://user:pw@host/path", "sftp://[user@]host[:port]/path"},
		{"backup.example.com:/srv/coldship", "sftp://[user@]host/path"},
		{"user@host:dir", "sftp://[user@]host/path"},
		{"gs://bucket/x", destForms},
		{"ftp://host/x", destForms},
		{"https://s3.example.com/bucket", "--s3-endpoint"},
		{"ssh://host/dir", "send --live"},
		{"file://host/x", "file:///absolute/path"},
	} {
		for _, cmd := range [][]string{{"list", tc.dest}, {"verify", tc.dest}, {"prune", tc.dest, "--keep-last", "1"},
			{"receive", tc.dest, "--out", t.TempDir(), "-i", "/nonexistent"}, {"send", "/nonexistent", "--to", tc.dest, "-r", "x"}} {
			if cmd[0] == "receive" || cmd[0] == "send" {
				if tc.dest == "ssh://host/dir" && cmd[0] == "send" {
					continue // send --to ssh:// is refused for another reason: it needs --live
				}
			}
			r := run(t, cmd...)
			if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("coldship %s: exit %d, want %d naming %q; stderr %s", strings.Join(cmd, " "), r.code, exitUsage, tc.want, r.stderr)
			}
		}
	}
	// Plain paths, even odd ones, are local folders.
	for _, dest := range []string{"./host:/x", "dir/with:colon", "s3bucket", "sftp"} {
		if err := checkDest(dest); err != nil {
			t.Errorf("checkDest(%q) = %v, want a local path", dest, err)
		}
	}
}

func TestMissingDest(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-dir")
	key, _ := keypair(t)
	for _, args := range [][]string{
		{"list", missing}, {"verify", missing}, {"verify", "--all", missing}, {"prune", missing, "--keep-last", "1"},
		{"receive", missing, "--out", t.TempDir(), "-i", key}, {"show", missing, "-i", key},
		{"receive", missing, "20261121T233000Z-3f9a1c2e", "--out", t.TempDir(), "-i", key},
	} {
		r := run(t, args...)
		if r.code != exitError || !strings.Contains(r.stderr, "directory "+missing+" is missing") || !strings.Contains(r.stderr, "check DEST") {
			t.Errorf("coldship %s: exit %d, want 1 saying the directory is missing; %s", args[0], r.code, r.stderr)
		}
	}
	if _, err := os.Stat(missing); err == nil {
		t.Errorf("a command created the missing destination")
	}
}

// TestShipmentNotAnID: a SHIPMENT argument that is neither latest nor of
// an id's form is a usage error (exit 2) naming it, before DEST is read
// (a path such as ../etc never becomes an object name).
func TestShipmentNotAnID(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 1<<20, region{0, 64 << 10, "random"})
	dest := filepath.Join(dir, "dest")
	mustRun(t, "send", src, "--to", dest, "-r", rcpt, "-q")
	for _, bad := range []string{"../etc", "web01", "20261121T233000Z"} {
		for _, args := range [][]string{
			{"verify", dest, bad}, {"verify", dest, bad, "-i", key}, {"show", dest, bad, "-i", key},
			{"receive", dest, bad, "--out", filepath.Join(dir, "out"), "-i", key},
		} {
			r := run(t, args...)
			if r.code != exitUsage || !strings.Contains(r.stderr, strconv.Quote(bad)+" is not a shipment id") {
				t.Errorf("coldship %s %s: exit %d, want 2 naming it; %s", args[0], bad, r.code, r.stderr)
			}
		}
	}
	mustRun(t, "verify", dest, "latest")
}

// TestSSHConfigBadValue: a value of the user's ssh_config that coldship
// cannot use is the operator's to fix: a usage error (exit 2) naming the
// file, the Host and the value, before anything is dialled.
func TestSSHConfigBadValue(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("SSH_AUTH_SOCK", "")
	file := filepath.Join(home, ".ssh", "config")
	os.MkdirAll(filepath.Dir(file), 0o700)
	os.WriteFile(file, []byte("Host badport\n  HostName 127.0.0.1\n  Port 99999\n"+
		"Host badtimeout\n  HostName 127.0.0.1\n  ConnectTimeout soon\n"+
		"Host badalive\n  HostName 127.0.0.1\n  ServerAliveCountMax many\n"+
		"Host badjump\n  HostName 127.0.0.1\n  ProxyJump user@:x\n"), 0o600)
	for _, host := range []string{"badport", "badtimeout", "badalive", "badjump"} {
		r := run(t, "list", "sftp://root@"+host+"/srv/dr", "--json")
		if r.code != exitUsage || !strings.Contains(r.stderr, file) || !strings.Contains(r.stderr, "Host "+host) ||
			!strings.Contains(r.stdout, `"category":"usage"`) {
			t.Errorf("ssh_config Host %s: exit %d, stdout %q, stderr %q; want 2 naming the file and the Host", host, r.code, r.stdout, r.stderr)
		}
	}
}

func TestKeygenCreatesFolders(t *testing.T) {
	home := t.TempDir()
	p := filepath.Join(home, ".config", "coldship", "site-b.key")
	r := mustRun(t, "keygen", "-o", p)
	if !strings.HasPrefix(strings.TrimSpace(r.stdout), "age1") {
		t.Errorf("keygen printed %q, want a recipient", r.stdout)
	}
	for _, d := range []string{filepath.Join(home, ".config"), filepath.Dir(p)} {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v, mode %v; want a folder of mode 0700", d, err, fi.Mode().Perm())
		}
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("identity mode %v, want 0600", fi.Mode().Perm())
	}
	r = run(t, "keygen", "-o", p)
	if r.code != exitError || !strings.Contains(r.stderr, "already exists") || !strings.Contains(r.stderr, "choose another file name") {
		t.Errorf("keygen over an existing file: exit %d, %s", r.code, r.stderr)
	}
}

// sendSample ships a small VM directory (a sparse image and a config file)
// to a new local destination and returns the destination, the key, the
// shipment id and the source directory.
func sendSample(t *testing.T, extra ...string) (dest, key, id, vm string) {
	t.Helper()
	key, rcpt := keypair(t)
	dir := t.TempDir()
	vm = filepath.Join(dir, "vm")
	os.MkdirAll(filepath.Join(vm, "sub"), 0o750)
	makeImage(t, filepath.Join(vm, "disk.img"), 4<<20, region{0, 256 << 10, "random"}, region{1 << 20, 128 << 10, "zero"})
	os.WriteFile(filepath.Join(vm, "sub", "my vm.xml"), []byte("<domain/>\n"), 0o640)
	dest = filepath.Join(dir, "dest")
	r := mustRun(t, append([]string{"send", vm, "--to", dest, "-r", rcpt, "--block-size", "64K", "--json"}, extra...)...)
	id, _ = summaryOf(t, r.stdout)["shipment"].(string)
	return dest, key, id, vm
}

func TestShow(t *testing.T) {
	dest, key, id, _ := sendSample(t)
	owner := fmt.Sprintf("%d:%d", os.Getuid(), os.Getgid())
	r := mustRun(t, "show", dest, "-i", key)
	for _, want := range []string{"shipment  " + id, "base      - (a full shipment)", "\tvm/disk.img\n", "\t\"vm/sub/my vm.xml\"\n", "file\t0640\t" + owner + "\t10\t10\t"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("show does not print %q:\n%s", want, r.stdout)
		}
	}
	r = mustRun(t, "show", dest, id, "-i", key, "--json")
	objs := jsonLines(t, r.stdout)
	files := map[string]map[string]any{}
	for _, o := range objs[1:] {
		files[o["path"].(string)] = o
	}
	if objs[0]["type"] != "shipment" || objs[0]["id"] != id || len(files) != 4 {
		t.Fatalf("show --json: %v", objs)
	}
	disk := files["vm/disk.img"]
	if disk["size"] != float64(4<<20) || disk["bytes_data"] != float64(256<<10) || disk["mode"] != "0644" || disk["owner"] != owner ||
		len(disk["blake3"].(string)) != 64 {
		t.Errorf("show --json of the image: %v; want 4 MiB with 256 KiB of data (the zero run and holes excluded)", disk)
	}
	if files["vm/sub"]["file_type"] != "dir" || files["vm/sub"]["mode"] != "0750" {
		t.Errorf("show --json of a folder: %v", files["vm/sub"])
	}
	if r := run(t, "show", dest, "-i", filepath.Join(t.TempDir(), "missing.key")); r.code == 0 {
		t.Errorf("show with a missing identity file succeeded")
	}
}

func TestShowChain(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 16*testBS, region{0, 8 * testBS, "random"})
	dest := filepath.Join(dir, "dest")
	send := []string{src, "--to", dest, "-r", rcpt, "--block-size", "64K", "--base", "latest"}
	full, _, _ := drSend(t, send...)
	rewriteBlocks(t, src, testBS, 2)
	inc, _, _ := drSend(t, send...)
	r := mustRun(t, "show", dest, inc, "-i", key, "--json")
	head := jsonLines(t, r.stdout)[0]
	if head["base"] != full || fmt.Sprint(head["bases"]) != fmt.Sprint([]any{full}) {
		t.Errorf("show of an incremental shipment: %v; want base and bases %s", head, full)
	}
	r = mustRun(t, "show", dest, inc, "-i", key)
	if !strings.Contains(r.stdout, "base      "+full+" (incremental; uses blocks of "+full+")") {
		t.Errorf("show does not print the chain:\n%s", r.stdout)
	}
}

func TestVerifyAll(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 16*testBS, region{0, 8 * testBS, "random"})
	dest := filepath.Join(dir, "dest")
	send := []string{src, "--to", dest, "-r", rcpt, "--block-size", "64K", "--base", "latest"}
	var ids []string
	for i := range 3 {
		rewriteBlocks(t, src, testBS, int64(i))
		id, _, _ := drSend(t, send...)
		ids = append(ids, id)
	}
	r := mustRun(t, "verify", "--all", dest)
	if !strings.Contains(r.stderr, "3 shipments, no problem") {
		t.Errorf("verify --all of a sound destination: %s", r.stderr)
	}
	mustRun(t, "verify", "--all", dest, "--read-data", "-i", key)

	// Corrupt a segment of the oldest shipment (the base of the others),
	// and leave a stray object and a leftover.
	segs, _ := filepath.Glob(filepath.Join(dest, ids[0], "segments", "*"))
	f, err := os.OpenFile(segs[0], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	f.ReadAt(b, 100)
	b[0] ^= 1
	f.WriteAt(b, 100)
	f.Close()
	os.WriteFile(filepath.Join(dest, "stray.bin"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(dest, ids[1], "segments", "99999999"), []byte("left"), 0o644)

	// The plain verify checks the newest only... and its base's objects.
	r = run(t, "verify", "--all", dest)
	if r.code != exitIntegrity {
		t.Fatalf("verify --all: exit %d, want 5; %s", r.code, r.stderr)
	}
	for _, want := range []string{
		filepath.Base(segs[0]) + ": its CRC32C differs", "stray.bin: belongs to no shipment",
		ids[1] + "/segments/99999999: not listed in the shipment's inventory",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("verify --all does not report %q:\n%s", want, r.stderr)
		}
	}
	// The corrupted segment is reported for the shipment itself and for
	// each newer one that needs it.
	for _, id := range ids {
		if !strings.Contains(r.stderr, id) {
			t.Errorf("verify --all does not name shipment %s:\n%s", id, r.stderr)
		}
	}
	r = run(t, "verify", "--all", dest, "--json")
	var problems int
	for _, o := range jsonLines(t, r.stdout) {
		checkSchema(t, o)
		if o["type"] == "problem" {
			problems++
		}
	}
	if r.code != exitIntegrity || problems < 4 {
		t.Errorf("verify --all --json: exit %d, %d problem objects; %s", r.code, problems, r.stdout)
	}
	r = run(t, "verify", "--all", dest, "--read-data", "-i", key)
	if r.code != exitIntegrity || !strings.Contains(r.stderr, "reading its data") {
		t.Errorf("verify --all --read-data: exit %d, %s", r.code, r.stderr)
	}
}

// fakeShipment writes the objects list and prune read of a shipment made
// at t: a header and a manifest (its content is never opened by them).
func fakeShipment(t *testing.T, dest string, created time.Time, label string) string {
	t.Helper()
	id := created.UTC().Format("20060102T150405Z") + fmt.Sprintf("-%08x", created.UnixNano()&0xffffffff)
	h := archive.Header{Format: archive.FormatVersion, ID: id, Created: created.UTC(), Label: label, BlockSize: 1 << 20,
		Cipher: archive.CipherName, Compression: "zstd"}
	hb, err := h.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dest, id), 0o755)
	os.WriteFile(filepath.Join(dest, id, archive.HeaderObject), hb, 0o644)
	os.WriteFile(filepath.Join(dest, id, archive.ManifestObject), []byte("sealed"), 0o644)
	return id
}

func TestPruneRules(t *testing.T) {
	t.Setenv("TZ", "UTC")
	at := func(s string) time.Time {
		tm, err := time.Parse("2006-01-02 15:04", s)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	times := []string{
		"2024-03-10 10:00", "2025-01-05 10:00", "2025-06-01 10:00", "2025-06-20 10:00",
		"2026-10-31 23:00", "2026-11-01 08:00", "2026-11-20 09:00", "2026-11-20 21:00", "2026-11-21 06:00",
	}
	for _, tc := range []struct {
		name string
		args []string
		keep map[string]string // time -> a reason that keeps it
	}{
		{"last", []string{"--keep-last", "2"}, map[string]string{"2026-11-21 06:00": "last 1", "2026-11-20 21:00": "last 2"}},
		{"daily", []string{"--keep-daily", "2"}, map[string]string{"2026-11-21 06:00": "daily 2026-11-21", "2026-11-20 21:00": "daily 2026-11-20"}},
		{"weekly", []string{"--keep-weekly", "2"}, map[string]string{"2026-11-21 06:00": "weekly 2026-W47", "2026-11-01 08:00": "weekly 2026-W44"}},
		{"monthly", []string{"--keep-monthly", "3"}, map[string]string{"2026-11-21 06:00": "monthly 2026-11",
			"2026-10-31 23:00": "monthly 2026-10", "2025-06-20 10:00": "monthly 2025-06"}},
		{"yearly", []string{"--keep-yearly", "5"}, map[string]string{"2026-11-21 06:00": "yearly 2026", "2025-06-20 10:00": "yearly 2025",
			"2024-03-10 10:00": "yearly 2024"}},
		{"within", []string{"--keep-within", "1d3h"}, map[string]string{"2026-11-21 06:00": "within 1d3h", "2026-11-20 21:00": "within 1d3h",
			"2026-11-20 09:00": "within 1d3h"}},
		{"within months", []string{"--keep-within", "1m"}, map[string]string{"2026-11-21 06:00": "within 1m", "2026-11-20 21:00": "within 1m",
			"2026-11-20 09:00": "within 1m", "2026-11-01 08:00": "within 1m", "2026-10-31 23:00": "within 1m"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dest := t.TempDir()
			byID := map[string]string{}
			for _, s := range times {
				byID[fakeShipment(t, dest, at(s), "web01")] = s
			}
			r := mustRun(t, append([]string{"prune", dest, "--dry-run", "--json"}, tc.args...)...)
			var kept int
			for _, o := range jsonLines(t, r.stdout) {
				checkSchema(t, o)
				if o["type"] == "summary" {
					continue
				}
				when := byID[o["id"].(string)]
				reasons := fmt.Sprint(o["reasons"])
				want, keep := tc.keep[when]
				if o["delete"] == keep {
					t.Errorf("%s: delete=%v, reasons %s; want kept %v", when, o["delete"], reasons, keep)
				}
				if keep {
					kept++
					if !strings.Contains(reasons, want) {
						t.Errorf("%s: reasons %s, want %q", when, reasons, want)
					}
				}
			}
			if kept != len(tc.keep) {
				t.Errorf("kept %d, want %d", kept, len(tc.keep))
			}
			// stderr shows every shipment's fate and why.
			r = mustRun(t, append([]string{"prune", dest, "--dry-run"}, tc.args...)...)
			for _, want := range tc.keep {
				if !strings.Contains(r.stderr, want) {
					t.Errorf("prune --dry-run stderr does not say %q:\n%s", want, r.stderr)
				}
			}
			if strings.Count(r.stderr, "would delete") < len(times)-len(tc.keep) {
				t.Errorf("prune --dry-run stderr:\n%s", r.stderr)
			}
		})
	}
	// When fewer days have a shipment than asked, the oldest is kept too.
	dest := t.TempDir()
	for _, s := range times[6:] {
		fakeShipment(t, dest, at(s), "")
	}
	old := fakeShipment(t, dest, at(times[0]), "")
	r := mustRun(t, "prune", dest, "--dry-run", "--keep-daily", "30")
	if strings.Contains(r.stdout, old) || !strings.Contains(r.stderr, "oldest (daily 30: only 3 have a shipment)") {
		t.Errorf("--keep-daily 30 over 3 days does not keep the oldest:\n%s\n%s", r.stdout, r.stderr)
	}
	for _, bad := range []string{"7", "1w", "d", "1d1d", "-1d"} {
		if r := run(t, "prune", dest, "--keep-within", bad); r.code != exitUsage || !strings.Contains(r.stderr, "2y5m7d3h") {
			t.Errorf("--keep-within %s: exit %d, %s", bad, r.code, r.stderr)
		}
	}
}

// TestPruneNothing checks what prune says when its rules or its label
// select nothing: a --keep-within of 0 keeps nothing (a usage error that
// says so), and a label no shipment has is a notice (exit 0, since
// nothing to delete is no error), not silence.
func TestPruneNothing(t *testing.T) {
	dest := t.TempDir()
	fakeShipment(t, dest, time.Now().Add(-time.Hour), "web01")
	state := t.TempDir()
	r := run(t, "prune", dest, "--keep-within", "0d", "--state-dir", state)
	if r.code != exitUsage || !strings.Contains(r.stderr, "--keep-within 0d keeps nothing: give a span such as 7d") {
		t.Errorf("--keep-within 0d: exit %d, want 2 saying it keeps nothing: %s", r.code, r.stderr)
	}
	mustRun(t, "prune", dest, "--keep-within", "0d", "--keep-last", "1", "--dry-run", "--state-dir", state)

	notice := fmt.Sprintf("no shipment at %s has the label %q", dest, "db01")
	r = mustRun(t, "prune", dest, "--keep-last", "1", "--name", "db01", "--state-dir", state)
	if !strings.Contains(r.stderr, notice) {
		t.Errorf("prune --name of no shipment, stderr does not say %q: %s", notice, r.stderr)
	}
	r = mustRun(t, "prune", dest, "--keep-last", "1", "--name", "db01", "--json", "--state-dir", state)
	if o := jsonLines(t, r.stdout)[0]; o["type"] != "notice" || o["message"] != notice {
		t.Errorf("prune --name of no shipment --json: %s", r.stdout)
	}
	lastJSON(t, r.stdout)
	if r = mustRun(t, "prune", dest, "--keep-last", "1", "--name", "db01", "-q", "--state-dir", state); r.stderr != "" {
		t.Errorf("prune -q printed: %s", r.stderr)
	}
	if r = mustRun(t, "prune", dest, "--keep-last", "1", "--name", "web01", "--state-dir", state); strings.Contains(r.stderr, "has the label") {
		t.Errorf("prune --name of a label that exists: %s", r.stderr)
	}
}

func TestListColumns(t *testing.T) {
	dest, _, id, _ := sendSample(t, "--name", "web 01\tprod")
	r := mustRun(t, "list", dest)
	cols := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\t")
	if len(cols) != 6 || cols[0] != id || cols[2] != `"web 01\tprod"` || cols[4] != "complete" || cols[5] != "-" {
		t.Errorf("list: %q; want 6 tab-separated columns, the label quoted", r.stdout)
	}
	if _, err := fmt.Sscan(cols[3], new(int64)); err != nil {
		t.Errorf("list size column %q: want bytes when stdout is not a terminal", cols[3])
	}
	r = mustRun(t, "list", dest, "--json")
	o := jsonLines(t, r.stdout)[0]
	checkSchema(t, o)
	if o["label"] != "web 01\tprod" {
		t.Errorf("list --json label %q", o["label"])
	}
}

func TestReceiveNull(t *testing.T) {
	dest, key, _, _ := sendSample(t)
	r := mustRun(t, "receive", dest, "-i", key, "--out", t.TempDir(), "-z")
	paths := strings.Split(strings.TrimSuffix(r.stdout, "\x00"), "\x00")
	if strings.Contains(r.stdout, "\n") || len(paths) != 4 || !strings.Contains(r.stdout, "vm/sub/my vm.xml\x00") {
		t.Errorf("receive -z printed %q", r.stdout)
	}
}

func TestVersion(t *testing.T) {
	r := mustRun(t, "version")
	text := r.stdout
	for _, want := range []string{"coldship ", "go:     go1.", "commit: ", "github.com/spf13/cobra v1.10.2"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("version does not print %q:\n%s", want, r.stdout)
		}
	}
	if r2 := mustRun(t, "--version"); r2.stdout != r.stdout {
		t.Errorf("--version differs from version:\n%s\n%s", r2.stdout, r.stdout)
	}
	r = mustRun(t, "version", "--json")
	o := jsonLines(t, r.stdout)[0]
	checkSchema(t, o)
	if o["type"] != "version" || len(o["dependencies"].([]any)) == 0 {
		t.Errorf("version --json: %v", o)
	}
	// --version answers --json (or COLDSHIP_JSON) as every command does.
	if r2 := mustRun(t, "-v", "--json"); r2.stdout != r.stdout {
		t.Errorf("--version --json differs from version --json:\n%s\n%s", r2.stdout, r.stdout)
	}
	t.Setenv("COLDSHIP_JSON", "1")
	if r2 := mustRun(t, "--version"); r2.stdout != r.stdout {
		t.Errorf("COLDSHIP_JSON=1 --version differs from version --json:\n%s\n%s", r2.stdout, r.stdout)
	}
	if r2 := run(t, "--version", "--json", "--bogus"); r2.code != exitUsage {
		t.Errorf("--version --json --bogus: exit %d, want 2", r2.code)
	}
	if r2 := mustRun(t, "--version", "--json=false"); r2.stdout != text {
		t.Errorf("--version --json=false differs from version:\n%s\n%s", r2.stdout, text)
	}
}

func TestMan(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "man1")
	r := mustRun(t, "man", dir, "--json")
	o := jsonLines(t, r.stdout)[0]
	checkSchema(t, o)
	for _, page := range []string{"coldship.1", "coldship-send.1", "coldship-show.1", "coldship-verify.1"} {
		b, err := os.ReadFile(filepath.Join(dir, page))
		if err != nil {
			t.Errorf("man page %s: %v", page, err)
			continue
		}
		if !strings.Contains(string(b), "EXIT STATUS") || !strings.Contains(string(b), "COLDSHIP_") || !strings.Contains(string(b), ".TH \"COLDSHIP\"") {
			t.Errorf("man page %s lacks the exit status, environment or title:\n%.400s", page, b)
		}
	}
	if !strings.Contains(fmt.Sprint(o["pages"]), "coldship-prune.1") {
		t.Errorf("man --json pages: %v", o["pages"])
	}
}

func TestHelpEndsWithExamples(t *testing.T) {
	root := newRootCmd(strings.NewReader(""), os.Stdout, os.Stderr)
	names := []string{"completion"} // cobra's own, which it adds as it runs
	for _, c := range root.Commands() {
		if c.Name() != "help" && c.Name() != "completion" {
			names = append(names, c.Name())
		}
	}
	for _, name := range names {
		r := mustRun(t, name, "--help")
		i := strings.LastIndex(r.stdout, "\nEXAMPLES\n")
		examples := strings.Count(r.stdout[max(i, 0):], "  coldship ")
		if i < 0 || examples < 2 || examples > 3 || !strings.Contains(r.stdout, "COLDSHIP_<FLAG>") || !strings.Contains(r.stdout, "EXIT STATUS") {
			t.Errorf("coldship %s --help: want ENVIRONMENT, EXIT STATUS and 2 or 3 examples at the end:\n%s", name, r.stdout)
		}
	}
}

func TestCompletion(t *testing.T) {
	dest, _, id, _ := sendSample(t)
	r := mustRun(t, "__complete", "receive", dest, "")
	if !strings.Contains(r.stdout, id+"\t") {
		t.Errorf("completion after DEST does not offer the shipment id %s:\n%s", id, r.stdout)
	}
	r = mustRun(t, "__complete", "send", "x", "--to", "s")
	if !strings.Contains(r.stdout, "s3://") || !strings.Contains(r.stdout, "sftp://") || !strings.Contains(r.stdout, "ssh://") {
		t.Errorf("completion of --to: %s", r.stdout)
	}
	r = mustRun(t, "__complete", "send", "x", "--hook", "")
	if !strings.Contains(r.stdout, "pre-send=") || !strings.Contains(r.stdout, "on-failure=") {
		t.Errorf("completion of --hook: %s", r.stdout)
	}
	r = mustRun(t, "__complete", "list", "")
	if !strings.Contains(r.stdout, "s3://") {
		t.Errorf("completion of DEST: %s", r.stdout)
	}
}

// jsonLines parses stdout as NDJSON: every line must be a JSON object.
func jsonLines(t *testing.T, stdout string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSuffix(stdout, "\n"), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("stdout line is not a JSON object: %q (%v)", line, err)
		}
		out = append(out, m)
	}
	return out
}

// TestVerifyAllEmpty: verify --all of a destination that holds no
// TestListEmpty: a destination that holds no shipment lists nothing on
// stdout, for scripts (with --json too: a script reading ids must not
// meet another kind of object), exits 0, and says so on stderr.
func TestListEmpty(t *testing.T) {
	dest := t.TempDir()
	r := mustRun(t, "list", dest)
	if r.stdout != "" || !strings.Contains(r.stderr, "no shipment at "+dest) {
		t.Errorf("list of an empty destination: stdout %q, stderr %q; want nothing, then a notice", r.stdout, r.stderr)
	}
	r = mustRun(t, "list", dest, "--json")
	if r.stdout != "" || !strings.Contains(r.stderr, "no shipment at "+dest) {
		t.Errorf("list --json of an empty destination: stdout %q, stderr %q", r.stdout, r.stderr)
	}
}

// TestVerifyAllEmpty: verify --all of a destination that holds no
// shipment fails (exit 1) rather than passing a monitoring job on a
// mistyped prefix or an empty folder.
func TestVerifyAllEmpty(t *testing.T) {
	dest := t.TempDir()
	r := run(t, "verify", "--all", dest)
	if r.code != exitError || !strings.Contains(r.stderr, "no shipment there") {
		t.Errorf("verify --all of an empty destination: exit %d, want 1 saying so: %s", r.code, r.stderr)
	}
}

// fullWriter fails every write, as stdout redirected to a full disk does.
type fullWriter struct{}

func (fullWriter) Write([]byte) (int, error) {
	return 0, errors.New("write /dev/stdout: no space left on device")
}

// TestStdoutWriteFails: what a script captures on stdout (keygen's
// identity, the shipment id, list's lines) that cannot be written fails
// the command, text or JSON alike: `coldship keygen > site.key` on a full
// disk exited 0 having lost the only copy of the identity.
func TestStdoutWriteFails(t *testing.T) {
	dest, key, _, vm := sendSample(t)
	_, rcpt := keypair(t)
	for _, args := range [][]string{
		{"keygen"}, {"keygen", "-o", filepath.Join(t.TempDir(), "k")}, {"list", dest}, {"show", dest, "-i", key},
		{"send", vm, "--to", dest, "-r", rcpt, "--no-resume"}, {"prune", dest, "--keep-last", "1", "--dry-run"},
		{"list", dest, "--json"},
	} {
		var errb strings.Builder
		code := execute(context.Background(), args, strings.NewReader(""), fullWriter{}, &errb)
		if code != exitError || !strings.Contains(errb.String(), "no space left on device") {
			t.Errorf("coldship %s with stdout on a full disk: exit %d, want %d saying why; stderr:\n%s", strings.Join(args, " "), code, exitError, errb.String())
		}
	}
}
