// Package vmtest gives tests the real parts of a VM host: tools such as
// qemu-img, and loop devices. Missing, a test skips with the reason, or
// fails when CI=true (where make test has installed everything).
package vmtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Unavailable skips t, or fails it when CI=true.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// Tool returns the path of command name.
func Tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Unavailable(t, "%s is not installed (make test-deps installs it)", name)
	}
	return p
}

// Run runs a command and returns its standard output; it fails t with the
// command's output if it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	Tool(t, name)
	cmd := exec.Command(name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// Loop attaches a loop device to a new file of size bytes in a temporary
// directory and returns the device's path and the file's; it is detached
// when the test ends. Making loop devices needs root and /dev/loop-control:
// without them the test skips, saying so (fails under CI=true).
func Loop(t testing.TB, size int64) (dev, file string) {
	t.Helper()
	file = filepath.Join(t.TempDir(), "loop.img")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	return LoopFile(t, file), file
}

// LoopFile attaches a loop device to an existing file.
func LoopFile(t testing.TB, file string) string {
	t.Helper()
	Tool(t, "losetup")
	out, err := exec.Command("losetup", "--find", "--show", file).CombinedOutput()
	if err != nil {
		Unavailable(t, "cannot make a loop device (needs root and /dev/loop-control): losetup: %v: %s", err, strings.TrimSpace(string(out)))
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev
}
