package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestMissingKeyFilesExit2: a -R, -i, --passphrase-file, --ssh-key or
// --sign-key that names no file is a usage error.
func TestMissingKeyFilesExit2(t *testing.T) {
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	os.WriteFile(src, []byte("x"), 0o644)
	missing := filepath.Join(dir, "missing")
	for name, args := range map[string][]string{
		"-R":                         {"send", src, "--to", filepath.Join(dir, "dest"), "-R", missing},
		"--passphrase-file (send)":   {"send", src, "--to", filepath.Join(dir, "dest"), "--passphrase-file", missing},
		"-i":                         {"receive", filepath.Join(dir, "dest"), "--out", filepath.Join(dir, "out"), "-i", missing},
		"--passphrase-file (verify)": {"verify", filepath.Join(dir, "dest"), "--passphrase-file", missing},
		"--ssh-key (send)":           {"send", src, "--to", "sftp://127.0.0.1:1/x", "-r", rcpt, "--ssh-key", missing},
		"--ssh-key (receive)":        {"receive", "sftp://127.0.0.1:1/x", "--out", filepath.Join(dir, "out"), "-i", key, "--ssh-key", missing},
		"--ssh-key (live)":           {"send", "--live", src, "--to", "ssh://127.0.0.1:1/x", "--ssh-key", missing},
		"--sign-key":                 {"send", src, "--to", filepath.Join(dir, "dest"), "-r", rcpt, "--sign-key", missing},
	} {
		t.Run(name, func(t *testing.T) {
			if r := run(t, args...); r.code != exitUsage || !strings.Contains(r.stderr, missing) {
				t.Errorf("exit %d, want %d naming the file: %s", r.code, exitUsage, r.stderr)
			}
		})
	}
}

// TestUnusableArgumentsExit2: an --ssh-key file that holds no SSH private
// key and an S3 endpoint with credentials in it are usage errors, named
// (and the secret not repeated), not failed connections.
func TestUnusableArgumentsExit2(t *testing.T) {
	key, rcpt := keypair(t) // an age identity, not an SSH key
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	os.WriteFile(src, []byte("x"), 0o644)
	notSSH := "--ssh-key " + key + ": not an SSH private key"
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"--ssh-key (send)":    {[]string{"send", src, "--to", "sftp://127.0.0.1:1/x", "-r", rcpt, "--ssh-key", key}, notSSH},
		"--ssh-key (receive)": {[]string{"receive", "sftp://127.0.0.1:1/x", "--out", filepath.Join(dir, "out"), "-i", key, "--ssh-key", key}, notSSH},
		"--ssh-key (live)":    {[]string{"send", "--live", src, "--to", "ssh://127.0.0.1:1/x", "--ssh-key", key}, notSSH},
		"--s3-endpoint":       {[]string{"list", "s3://bucket", "--s3-endpoint", "http://AK:SECRET@127.0.0.1:7171"}, "credentials in the URL are not accepted"},
	} {
		t.Run(name, func(t *testing.T) {
			r := run(t, tc.args...)
			if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, want %d saying %q: %s", r.code, exitUsage, tc.want, r.stderr)
			}
			if strings.Contains(r.stderr, "SECRET") {
				t.Errorf("the secret is repeated: %s", r.stderr)
			}
		})
	}
}

// sendRSS runs the built coldship with args and returns its peak RSS in
// bytes and its stderr. The peak is VmHWM of /proc/PID/status, read until
// the process exits: wait4's ru_maxrss is no good here, since a child
// started with vfork (as os/exec does) counts the RSS of the test process
// it was forked from.
func sendRSS(t *testing.T, args ...string) (int64, string) {
	t.Helper()
	cmd := exec.Command(coldshipBinary(t), args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var peak atomic.Int64
	done := make(chan struct{})
	go func() {
		status := fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)
		for {
			if kb := vmHWM(status); kb > peak.Load() {
				peak.Store(kb)
			}
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	err := cmd.Wait()
	close(done)
	if err != nil {
		t.Fatalf("coldship %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	t.Logf("coldship %s: %s wall, %.1f s CPU, peak RSS %d MiB", args[0], time.Since(start).Round(time.Millisecond),
		time.Duration(ru.Utime.Nano()+ru.Stime.Nano()).Seconds(), peak.Load()>>10)
	return peak.Load() << 10, stderr.String()
}

// vmHWM returns the VmHWM line of a /proc status file, in KiB (0 once the
// process is gone).
func vmHWM(status string) int64 {
	b, err := os.ReadFile(status)
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// TestJobsClamped: --jobs 100000 on a 1-byte file is clamped to what the
// memory bound allows, with a notice, and stays within it.
func TestJobsClamped(t *testing.T) {
	_, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "one")
	os.WriteFile(src, []byte("x"), 0o644)
	rss, stderr := sendRSS(t, "send", src, "--to", filepath.Join(dir, "dest"), "-r", rcpt, "--jobs", "100000", "--state-dir", filepath.Join(dir, "state"))
	if rss > 256<<20 || !strings.Contains(stderr, "notice: --jobs 100000") {
		t.Errorf("peak RSS %d MiB, stderr %q; want at most 256 MiB and a notice", rss>>20, stderr)
	}
}

// memoryBlocks is how many blocks TestSendMemoryBound sends: 500,000
// (30 GiB apparent at 64 KiB blocks, 4 KiB of data in each: 1.9 GiB
// written; the whole test took 13.6 s on the quiet development machine),
// or $COLDSHIP_MEMORY_BLOCKS (the benchmark sends 2 million).
func memoryBlocks() int64 {
	if n, err := strconv.ParseInt(os.Getenv("COLDSHIP_MEMORY_BLOCKS"), 10, 64); err == nil && n > 0 {
		return n
	}
	return 500_000
}

// TestSendMemoryBound sends, then sends incrementally, an image of
// memoryBlocks blocks with data in every one, and checks that the peak
// RSS of each stays within 256 MiB: no per-block state is held in memory.
func TestSendMemoryBound(t *testing.T) {
	_, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	n := memoryBlocks()
	writeSparsePages(t, src, n, 64<<10)
	dest, state := filepath.Join(dir, "dest"), filepath.Join(dir, "state")
	args := []string{"send", src, "--to", dest, "-r", rcpt, "--block-size", "64K", "--state-dir", state, "--base", "latest", "-q"}
	if rss, _ := sendRSS(t, args...); rss > 256<<20 {
		t.Errorf("send of %d blocks: peak RSS %d MiB, want at most 256", n, rss>>20)
	}
	f, _ := os.OpenFile(src, os.O_WRONLY, 0)
	f.WriteAt([]byte("changed"), (n/2)*64<<10+100)
	f.Close()
	if rss, _ := sendRSS(t, append(args, "--json")...); rss > 256<<20 {
		t.Errorf("incremental send of %d blocks: peak RSS %d MiB, want at most 256", n, rss>>20)
	}
}

// writeSparsePages writes a sparse file of n blocks of bs bytes with one
// 4 KiB page of (compressible) data at the start of each.
func writeSparsePages(t *testing.T, path string, n, bs int64) {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(n * bs); err != nil {
		t.Fatal(err)
	}
	page := make([]byte, 4096)
	for i := range n {
		binary.BigEndian.PutUint64(page, uint64(i)+1)
		if _, err := f.WriteAt(page, i*bs); err != nil {
			t.Fatal(err)
		}
	}
}
