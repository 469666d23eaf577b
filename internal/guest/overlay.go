package guest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
)

// clusterSize is qcow2's default cluster size: the unit an overlay
// allocates, and so the unit in which Overlay compares.
const clusterSize = 64 << 10

// Overlay makes out a qcow2 overlay on the qcow2 image base (referred to by
// that name) such as a guest writing to its disk leaves it: it holds only
// the clusters in which raw differs from baseRaw, the raw image base was
// made from, written with qemu-io. raw and baseRaw must be the same size.
func (h Host) Overlay(ctx context.Context, base, baseRaw, raw, out string) error {
	runs, err := differingRuns(baseRaw, raw)
	if err != nil {
		return fmt.Errorf("overlay %s: %w", out, err)
	}
	fi, err := os.Stat(raw)
	if err != nil {
		return fmt.Errorf("overlay %s: %w", out, err)
	}
	create := exec.CommandContext(ctx, h.QEMUImg, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", out, strconv.FormatInt(fi.Size(), 10))
	if b, err := create.CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img create %s: %v\n%s", out, err, b)
	}
	if len(runs) == 0 {
		return nil
	}
	// qemu-io reads each run from a file of its own, named without spaces
	// (its command line has no quoting) relative to a scratch folder.
	scratch, err := os.MkdirTemp(filepath.Dir(out), ".overlay-")
	if err != nil {
		return fmt.Errorf("overlay %s: %w", out, err)
	}
	defer os.RemoveAll(scratch)
	src, err := os.Open(raw)
	if err != nil {
		return fmt.Errorf("overlay %s: %w", out, err)
	}
	defer src.Close()
	args := []string{"-f", "qcow2"}
	for i, r := range runs {
		name := "run-" + strconv.Itoa(i)
		if err := copyRange(src, filepath.Join(scratch, name), r[0], r[1]); err != nil {
			return fmt.Errorf("overlay %s: %w", out, err)
		}
		args = append(args, "-c", fmt.Sprintf("write -q -s %s %d %d", name, r[0], r[1]))
	}
	write := exec.CommandContext(ctx, h.QEMUIO, append(args, out)...)
	write.Dir = scratch
	// qemu-io can exit 0 after a failed command: any output is an error.
	if b, err := write.CombinedOutput(); err != nil || len(bytes.TrimSpace(b)) > 0 {
		return fmt.Errorf("qemu-io write into %s: %v\n%s", out, err, b)
	}
	return nil
}

// differingRuns returns the runs of clusters, as offset and length, in
// which the files a and b differ.
func differingRuns(a, b string) ([][2]int64, error) {
	x, err := os.ReadFile(a)
	if err != nil {
		return nil, err
	}
	y, err := os.ReadFile(b)
	if err != nil {
		return nil, err
	}
	if len(x) != len(y) {
		return nil, fmt.Errorf("%s has %d bytes, %s %d", a, len(x), b, len(y))
	}
	var runs [][2]int64
	for off := 0; off < len(x); off += clusterSize {
		end := min(off+clusterSize, len(x))
		if bytes.Equal(x[off:end], y[off:end]) {
			continue
		}
		if n := len(runs); n > 0 && runs[n-1][0]+runs[n-1][1] == int64(off) {
			runs[n-1][1] += int64(end - off)
		} else {
			runs = append(runs, [2]int64{int64(off), int64(end - off)})
		}
	}
	return runs, nil
}

// copyRange writes n bytes of src from off into the new file path.
func copyRange(src *os.File, path string, off, n int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, io.NewSectionReader(src, off, n)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
