package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/shipper/v3test"
)

// The three receive paths (--out, --into, --live) go through one restore
// writer; each gets the same tests here: a receive killed with SIGKILL
// half-way, then run again (no stale temporary file left, the result
// bit-exact, sparse to 4 KiB), a link planted at a recorded temporary name
// and one at a parent folder (never followed).

// sparseImage writes size bytes with 4 KiB of random data at the start of
// every 64 KiB, the rest holes.
func sparseImage(t *testing.T, path string, size int64, seed uint64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(size)
	r := rand.New(rand.NewPCG(seed, 9))
	page := make([]byte, 4096)
	for off := int64(0); off < size; off += 64 << 10 {
		for i := range page {
			page[i] = byte(r.Uint32() | 1)
		}
		if _, err := f.WriteAt(page, off); err != nil {
			t.Fatal(err)
		}
	}
}

// restorePath is one receive path under test.
type restorePath struct {
	name string
	// setup makes the source and whatever the path needs, and returns the
	// command line of the receive (or live send) to kill and rerun, the
	// folder restored into and the source image.
	setup   func(t *testing.T, dir string) (argv []string, out, src string)
	pidFile string // live: where the receiver writes its pid
	// tempGlob matches the temporary file of the image while it is written.
	tempGlob string
}

// killMidway starts argv, waits until pattern matches a file that holds
// at least min bytes of data, and kills the receiver with SIGKILL: the
// process itself, or, with pidFile, the process whose pid it holds (a
// live receiver).
func killMidway(t *testing.T, argv []string, pattern, pidFile string, min int64) {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if m, _ := filepath.Glob(pattern); len(m) > 0 && allocatedOK(m[0]) >= min {
			break
		}
		time.Sleep(time.Millisecond)
	}
	victim := cmd.Process
	if pidFile != "" {
		b, _ := os.ReadFile(pidFile)
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatalf("receiver pid: %q", b)
		}
		if victim, err = os.FindProcess(pid); err != nil {
			t.Fatal(err)
		}
	}
	victim.Signal(syscall.SIGKILL)
	cmd.Wait()
}

func allocatedOK(p string) int64 {
	var st syscall.Stat_t
	if syscall.Stat(p, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}

func TestReceivePathsKilledAndLinked(t *testing.T) {
	bin := coldshipBinary(t)
	key, rcpt := keypair(t)
	const size = 128 << 20 // 8 MiB of data
	paths := []restorePath{
		{name: "out", tempGlob: "vm/.disk.img.coldship-*", setup: func(t *testing.T, dir string) ([]string, string, string) {
			src := filepath.Join(dir, "vm", "disk.img")
			os.MkdirAll(filepath.Dir(src), 0o755)
			sparseImage(t, src, size, 1)
			dest := filepath.Join(dir, "dest")
			id := strings.TrimSpace(mustRun(t, "send", filepath.Dir(src), "--to", dest, "-r", rcpt, "--block-size", "64K", "-q").stdout)
			out := filepath.Join(dir, "out")
			return []string{bin, "receive", dest, id, "--out", out, "-i", key, "-j", "1", "--streams", "1", "--bwlimit", "2M"}, out, src
		}},
		{name: "into", tempGlob: "vm/.disk.img.coldship-update", setup: func(t *testing.T, dir string) ([]string, string, string) {
			src := filepath.Join(dir, "vm", "disk.img")
			os.MkdirAll(filepath.Dir(src), 0o755)
			sparseImage(t, src, size, 2)
			dest := filepath.Join(dir, "dest")
			send := []string{"send", filepath.Dir(src), "--to", dest, "-r", rcpt, "--block-size", "64K", "-q"}
			id1 := strings.TrimSpace(mustRun(t, send...).stdout)
			out := filepath.Join(dir, "out")
			mustRun(t, "receive", dest, id1, "--out", out, "-i", key, "-q")
			sparseImage(t, src, size, 3) // every block changes
			id2 := strings.TrimSpace(mustRun(t, send...).stdout)
			return []string{bin, "receive", dest, id2, "--into", out, "-i", key, "-j", "1", "--streams", "1", "--bwlimit", "2M"}, out, src
		}},
		{name: "live", tempGlob: "vm/.disk.img.coldship-*", pidFile: "receiver.pid", setup: func(t *testing.T, dir string) ([]string, string, string) {
			_, out, to, flags := liveEnv(t)
			// The receiver, through a wrapper that says its pid.
			wrapper := filepath.Join(dir, "coldship-wrapper")
			os.WriteFile(wrapper, []byte(fmt.Sprintf("#!/bin/sh\necho $$ > %s\nexec %s \"$@\"\n",
				filepath.Join(dir, "receiver.pid"), bin)), 0o755)
			for i := range flags {
				if flags[i] == bin {
					flags[i] = wrapper
				}
			}
			src := filepath.Join(dir, "vm", "disk.img")
			os.MkdirAll(filepath.Dir(src), 0o755)
			sparseImage(t, src, 4*size, 4)
			return append([]string{bin, "send", filepath.Dir(src), "--to", to, "--block-size", "64K", "-q"}, flags...), out, src
		}},
	}
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			dir := t.TempDir()
			argv, out, src := p.setup(t, dir)
			final := filepath.Join(out, "vm", "disk.img")
			pidFile := ""
			if p.pidFile != "" {
				pidFile = filepath.Join(dir, p.pidFile)
			}
			// Far enough for a batch of the blocks' records (slots) to be
			// on disk: what a resumed receive can reuse.
			min := int64(64 << 10)
			if p.name == "out" {
				min = 5 << 20
			}
			killMidway(t, argv, filepath.Join(out, p.tempGlob), pidFile, min)
			if _, err := os.Stat(final); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a killed receive left the image at its final name (%v)", err)
			}
			// A link where the killed receive's temporary file is.
			temps, _ := filepath.Glob(filepath.Join(out, p.tempGlob))
			if len(temps) != 1 {
				t.Fatalf("temporary files after the kill: %v", temps)
			}
			victim := filepath.Join(dir, "victim")
			os.WriteFile(victim, []byte("precious"), 0o644)
			if p.name == "out" {
				// Keep the resumable one; plant a stale one of another run.
				os.Symlink(victim, filepath.Join(out, "vm", ".disk.img.coldship-0123456789ab"))
			} else {
				os.Remove(temps[0])
				os.Symlink(victim, temps[0])
			}

			rerun := append(argv[1:], "--json")
			r := mustRun(t, rerun...)
			sameFile(t, src, final)
			if a, b := allocated(t, src), allocated(t, final); b > a+a/20 {
				t.Errorf("restored image allocates %d bytes, the source %d: not sparse to 4 KiB", b, a)
			}
			if got, _ := os.ReadFile(victim); string(got) != "precious" {
				t.Errorf("a link planted at a temporary name was written through: %q", got)
			}
			if left, _ := filepath.Glob(filepath.Join(out, "vm", ".*coldship-*")); len(left) != 0 {
				t.Errorf("temporary files left after the rerun: %v", left)
			}
			if p.name == "out" {
				if s := summaryOf(t, r.stdout); num(s, "bytes_reused") <= 0 {
					t.Errorf("the resumed receive reports bytes_reused %v", s["bytes_reused"])
				}
			}

			// A link where a folder of the shipment goes: refused, not followed.
			elsewhere := filepath.Join(dir, "elsewhere")
			os.MkdirAll(elsewhere, 0o755)
			os.Rename(filepath.Join(out, "vm"), filepath.Join(dir, "moved"))
			os.Symlink(elsewhere, filepath.Join(out, "vm"))
			again := rerun
			if p.name == "out" {
				again = append(again, "--force")
			}
			if r := run(t, again...); r.code != exitError || !strings.Contains(r.stderr, "symbolic link") {
				t.Errorf("receive through a linked folder: exit %d, %s", r.code, r.stderr)
			}
			if entries, _ := os.ReadDir(elsewhere); len(entries) != 0 {
				t.Errorf("wrote through a linked folder: %v", entries)
			}
		})
	}
}

// TestReceiveMemoryFlat receives and verifies, with the built binary, a
// shipment of 500,000 blocks (two images of 250,000; the receive restores
// one of them, streaming the whole block table, so that it stays near a
// minute on the development machine) and measures the peak RSS: nothing
// per block is held in memory (issue 16: at most 256 MiB).
func TestReceiveMemoryFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("a 500,000-block shipment")
	}
	bin := coldshipBinary(t)
	dir := t.TempDir()
	key, _ := keypair(t)
	dest := filepath.Join(dir, "dest")
	start := time.Now()
	id := writeManyBlocks(t, dest, key, 250_000)
	t.Logf("shipment written in %s", time.Since(start).Round(time.Second))
	out := filepath.Join(dir, "out")
	for _, argv := range [][]string{
		{bin, "receive", dest, id, "--out", out, "-i", key, "-q", "--include", "a.img"},
		{bin, "verify", dest, id, "-i", key, "-q"},
	} {
		start := time.Now()
		peak := maxRSS(t, argv)
		t.Logf("%s of 500,000 blocks: peak RSS %d MiB (%s)", argv[1], peak>>20, time.Since(start).Round(time.Second))
		if peak > 256<<20 {
			t.Errorf("%s: peak RSS %d MiB, want at most 256", argv[1], peak>>20)
		}
	}
	fi, err := os.Stat(filepath.Join(out, "a.img"))
	if err != nil || fi.Size() != 250_000*(64<<10) {
		t.Fatalf("restored image: %v %v", fi, err)
	}
}

// maxRSS runs argv from a small helper process (this test binary again)
// and returns argv's peak RSS: a child of the test process itself would
// carry the test process's own high-water mark across exec.
func maxRSS(t *testing.T, argv []string) int64 {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	j, _ := json.Marshal(argv)
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), "COLDSHIP_TEST_MAXRSS="+string(j))
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, b)
	}
	_, after, ok := strings.Cut(string(b), "maxrss=")
	n, perr := strconv.ParseInt(strings.TrimSpace(after), 10, 64)
	if !ok || perr != nil {
		t.Fatalf("%s: %s", strings.Join(argv, " "), b)
	}
	return n
}

// reportMaxRSS is the helper process of maxRSS: it runs the command line
// (JSON) and prints its peak RSS in bytes.
func reportMaxRSS(cmdline string) int {
	var argv []string
	if err := json.Unmarshal([]byte(cmdline), &argv); err != nil || len(argv) == 0 {
		fmt.Println("bad command line")
		return 2
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Printf("maxrss=%d\n", cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss<<10)
	return 0
}

// writeManyBlocks writes a format 3 shipment of two 64 KiB-block images
// (a.img, b.img) of n blocks each, every block with one page of data, for
// the recipient of key.
func writeManyBlocks(t *testing.T, dest, key string, n int64) string {
	t.Helper()
	ids, err := cipher.ParseIdentityFile(key, nil)
	if err != nil {
		t.Fatal(err)
	}
	rcpt := ids[0].(*age.X25519Identity).Recipient()
	const bs = 64 << 10
	content := func(b int64, buf []byte) bool {
		clear(buf)
		for i := 0; i < 4096; i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], uint64(b)<<8|1)
		}
		return true
	}
	id, err := v3test.Write(dest, []v3test.File{
		{Path: "a.img", Size: n * bs, Content: content},
		{Path: "b.img", Size: n * bs, Content: content},
	}, v3test.Options{BlockSize: bs, Compress: true, Recipients: []age.Recipient{rcpt}})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestReceiveOwners: as root, files get the numeric owner and group of
// the manifest (format 3), unless --no-same-owner; as another user they
// belong to that user.
func TestReceiveOwners(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files other owners")
	}
	bin := coldshipBinary(t)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755) // nobody must reach it
	key, rcpt := keypair(t)
	r, err := age.ParseX25519Recipient(rcpt)
	if err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(dir, "dest")
	id, err := v3test.Write(dest, []v3test.File{
		{Path: "vm", Dir: true, UID: 64055, GID: 994},
		{Path: "vm/disk.img", Size: 1 << 20, UID: 64055, GID: 994, Content: v3test.Pattern(1, "d0")},
	}, v3test.Options{BlockSize: 64 << 10, Recipients: []age.Recipient{r}})
	if err != nil {
		t.Fatal(err)
	}
	owner := func(p string) (uint32, uint32) {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		return st.Uid, st.Gid
	}
	out := filepath.Join(dir, "root")
	mustRun(t, "receive", dest, id, "--out", out, "-i", key, "-q")
	for _, p := range []string{"vm", "vm/disk.img"} {
		if u, g := owner(filepath.Join(out, p)); u != 64055 || g != 994 {
			t.Errorf("as root: %s owned by %d:%d, want 64055:994", p, u, g)
		}
	}
	out = filepath.Join(dir, "nosame")
	mustRun(t, "receive", dest, id, "--out", out, "-i", key, "-q", "--no-same-owner")
	if u, g := owner(filepath.Join(out, "vm/disk.img")); u != 0 || g != 0 {
		t.Errorf("--no-same-owner: owned by %d:%d, want 0:0", u, g)
	}

	// As nobody, into a folder of nobody's, with a key nobody can read.
	nobody := filepath.Join(dir, "nobody")
	os.MkdirAll(nobody, 0o755)
	os.Chown(nobody, 65534, 65534)
	nkey := filepath.Join(nobody, "key")
	b, _ := os.ReadFile(key)
	os.WriteFile(nkey, b, 0o600)
	os.Chown(nkey, 65534, 65534)
	nbin := filepath.Join(nobody, "coldship")
	b, _ = os.ReadFile(bin)
	os.WriteFile(nbin, b, 0o755)
	cmd := exec.Command(nbin, "receive", dest, id, "--out", filepath.Join(nobody, "out"), "-i", nkey, "-q")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("receive as nobody: %v: %s", err, b)
	}
	if u, g := owner(filepath.Join(nobody, "out", "vm/disk.img")); u != 65534 || g != 65534 {
		t.Errorf("as nobody: owned by %d:%d, want the user", u, g)
	}
}

// TestReceiveJobsClamped: --jobs far beyond what memory allows is lowered,
// with a notice, and the receive stays within its memory bound (issue
// 14.5: --jobs 100000 once took 3.1 GiB for a 1-byte file).
func TestReceiveJobsClamped(t *testing.T) {
	bin := coldshipBinary(t)
	dir := t.TempDir()
	key, rcpt := keypair(t)
	r, _ := age.ParseX25519Recipient(rcpt)
	dest := filepath.Join(dir, "dest")
	id, err := v3test.Write(dest, []v3test.File{{Path: "one", Size: 1, Content: v3test.Pattern(1, "d")}},
		v3test.Options{BlockSize: 64 << 20, Recipients: []age.Recipient{r}})
	if err != nil {
		t.Fatal(err)
	}
	res := mustRun(t, "receive", dest, id, "--out", filepath.Join(dir, "a"), "-i", key, "--jobs", "100000", "--streams", "1000")
	if !strings.Contains(res.stderr, "memory bound allows") {
		t.Errorf("no notice that --jobs was lowered: %s", res.stderr)
	}
	peak := maxRSS(t, []string{bin, "receive", dest, id, "--out", filepath.Join(dir, "b"), "-i", key, "-q", "--jobs", "100000"})
	if peak > 256<<20 {
		t.Errorf("receive --jobs 100000 of 64 MiB blocks: peak RSS %d MiB", peak>>20)
	}
}

// TestReceiveForgedExitCodes: at the command level, what issue 13 lists
// ends as the README says: a swapped key object and a manifest that
// contradicts itself exit 5, a shipment that does not fit exits 1, an
// honest 8 TiB sparse image restores, a shipment that is not there exits
// 1; none leaves a temporary file.
func TestReceiveForgedExitCodes(t *testing.T) {
	dir := t.TempDir()
	key, rcpt := keypair(t)
	r, _ := age.ParseX25519Recipient(rcpt)
	dest := filepath.Join(dir, "dest")
	const bs = 1 << 20
	big := []v3test.File{{Path: "big.img", Size: 8 << 40, Blocks: []int64{0, (8<<40)/bs - 1}, Content: v3test.Pattern(3, "d0")}}
	write := func(files []v3test.File, tamper func(m *archive.Manifest), slots int) string {
		id, err := v3test.Write(dest, files, v3test.Options{BlockSize: bs, Recipients: []age.Recipient{r}, Tamper: tamper, Slots: slots})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	honest := write(big, nil, 1)
	swapped := write(big, nil, 2)
	k, _ := cipher.NewKey()
	wrapped, _ := k.Wrap(r)
	if err := v3test.ReplaceObject(dest, swapped, "keys/0000", wrapped); err != nil {
		t.Fatal(err)
	}
	contradicts := write(big, func(m *archive.Manifest) { m.Files[0].DataBlocks++ }, 1)
	tooMuch := write(big, func(m *archive.Manifest) { m.Files[0].DataBlocks, m.Files[0].DataBytes = 8<<20, 8<<40 }, 1)
	for _, tc := range []struct {
		name, id string
		code     int
		stderr   string
	}{
		{"honest 8 TiB sparse", honest, exitOK, ""},
		{"swapped key object", swapped, exitIntegrity, "keys/0000"},
		{"manifest contradicts its table", contradicts, exitIntegrity, "data blocks"},
		{"more data than the disk holds", tooMuch, exitError, "needs"},
		{"no such shipment", "20261130T000000Z-0deadbee", exitError, "no shipment 20261130T000000Z-0deadbee at"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(dir, "out-"+tc.id)
			res := run(t, "receive", dest, tc.id, "--out", out, "-i", key)
			if res.code != tc.code || !strings.Contains(res.stderr, tc.stderr) {
				t.Fatalf("exit %d, want %d; stderr: %s", res.code, tc.code, res.stderr)
			}
			if left, _ := filepath.Glob(filepath.Join(out, ".*.coldship-*")); len(left) != 0 {
				t.Errorf("temporary files left: %v", left)
			}
			if tc.code == exitOK {
				if a := allocated(t, filepath.Join(out, "big.img")); a > 4<<20 {
					t.Errorf("the 8 TiB image allocates %d bytes", a)
				}
			} else if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a failed receive left %s (%v)", out, err)
			}
		})
	}
	if res := run(t, "verify", dest, "20261130T000000Z-0deadbee"); res.code != exitError || !strings.Contains(res.stderr, "no shipment") {
		t.Errorf("verify of a shipment that is not there: exit %d, %s", res.code, res.stderr)
	}
}

// TestReceiveIntoDoesNotFit: an update (--into) whose shipment holds more
// data than the folder's file system has room for, beyond what the held
// files already allocate, is refused before anything changes (exit 1,
// naming the folder), as a fresh restore is; an update of the same size
// goes ahead though the file system could not hold the image twice. On an
// 8 MiB tmpfs of its own.
func TestReceiveIntoDoesNotFit(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small file system")
	}
	dir := t.TempDir()
	key, rcpt := keypair(t)
	r, _ := age.ParseX25519Recipient(rcpt)
	dest := filepath.Join(dir, "dest")
	const bs = 1 << 20
	now := time.Now().Add(-time.Hour)
	write := func(seed byte, blocks int64) string {
		now = now.Add(time.Second)
		var data []int64
		for b := range blocks {
			data = append(data, b)
		}
		files := []v3test.File{{Path: "disk.img", Size: 64 << 20, Blocks: data, Content: v3test.Pattern(seed, "d")}}
		id, err := v3test.Write(dest, files, v3test.Options{BlockSize: bs, Recipients: []age.Recipient{r}, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	first, tooMuch, same := write(1, 5), write(2, 12), write(3, 5)
	into := filepath.Join(dir, "restore")
	if err := os.Mkdir(into, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", into).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", into).Run() })
	held := func() (state, shipment string) {
		t.Helper()
		ms, _ := filepath.Glob(filepath.Join(into, ".coldship-restore-*.json"))
		if len(ms) != 1 {
			t.Fatalf("restore markers in %s: %v", into, ms)
		}
		var m struct{ State, Shipment string }
		if err := json.Unmarshal(mustReadFile(t, ms[0]), &m); err != nil {
			t.Fatal(err)
		}
		return m.State, m.Shipment
	}
	mustRun(t, "receive", dest, first, "--into", into, "-i", key, "-q")
	res := run(t, "receive", dest, tooMuch, "--into", into, "-i", key)
	if res.code != exitError || !strings.Contains(res.stderr, "needs 7.0 MiB more") || !strings.Contains(res.stderr, into) {
		t.Fatalf("exit %d, want %d naming %s and what it needs; stderr: %s", res.code, exitError, into, res.stderr)
	}
	if left, _ := filepath.Glob(filepath.Join(into, ".*.coldship-*")); len(left) != 0 {
		t.Errorf("files left aside or temporary: %v", left)
	}
	if state, id := held(); id != first || state != "done" {
		t.Errorf("the refused update left the restore %s of %s, want done of %s", state, id, first)
	}
	mustRun(t, "receive", dest, same, "--into", into, "-i", key, "-q")
	if state, id := held(); id != same || state != "done" {
		t.Errorf("after the update that fits: %s of %s, want done of %s", state, id, same)
	}
	mustRun(t, "verify", dest, same, "-i", key, "-q")
}
