package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// result is what one coldship invocation printed and returned.
type result struct {
	stdout, stderr string
	code           int
}

// run runs coldship in-process with args, like main does, and returns its
// output and exit status.
func run(t *testing.T, args ...string) result {
	t.Helper()
	return runCtx(t, context.Background(), nil, args...)
}

func runCtx(t *testing.T, ctx context.Context, env map[string]string, args ...string) result {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	var out, errb bytes.Buffer
	code := execute(ctx, args, strings.NewReader(""), &out, &errb)
	return result{out.String(), errb.String(), code}
}

func mustRun(t *testing.T, args ...string) result {
	t.Helper()
	r := run(t, args...)
	if r.code != 0 {
		t.Fatalf("coldship %s: exit %d\nstderr: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r
}

// keypair makes an age identity file and returns its path and recipient.
func keypair(t *testing.T) (string, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key.txt")
	r := mustRun(t, "keygen", "-o", p)
	return p, strings.TrimSpace(r.stdout)
}

// image describes a test disk image by its regions.
type region struct {
	off, n int64
	kind   string // random, text, zero (allocated zeros)
}

func makeImage(t *testing.T, path string, size int64, regions ...region) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, r := range regions {
		buf := make([]byte, r.n)
		switch r.kind {
		case "random":
			rand.Read(buf)
		case "text":
			line := []byte("coldship test log line: the quick brown fox\n")
			for i := range buf {
				buf[i] = line[i%len(line)]
			}
		case "zero":
		default:
			t.Fatalf("unknown region kind %q", r.kind)
		}
		if _, err := f.WriteAt(buf, r.off); err != nil {
			t.Fatal(err)
		}
	}
}

func sameFile(t *testing.T, a, b string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatalf("restored file: %v", err)
	}
	if !bytes.Equal(x, y) {
		t.Fatalf("%s and %s differ (%d vs %d bytes)", a, b, len(x), len(y))
	}
}

// allocated returns the bytes allocated on disk for path.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// requireTool returns the path of a command the test needs: missing, it
// skips, or fails under CI=true where make test installs it.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed (make test installs it)", name)
		}
		t.Skipf("%s is not installed; run make test-deps", name)
	}
	return p
}

func noFinalFiles(t *testing.T, dir string) {
	t.Helper()
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			t.Errorf("file left behind after a failed receive: %s", p)
		}
		return nil
	})
}

func TestMain(m *testing.M) {
	if p := os.Getenv("COLDSHIP_TEST_QEMU_LOCK"); p != "" {
		os.Exit(holdQEMULock(p))
	}
	if cmdline := os.Getenv("COLDSHIP_TEST_MAXRSS"); cmdline != "" {
		os.Exit(reportMaxRSS(cmdline))
	}
	// Resume journals of the tests go to a scratch state directory.
	d, err := os.MkdirTemp("", "coldship-state-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_STATE_HOME", d)
	code := m.Run()
	os.RemoveAll(d)
	os.Exit(code)
}
