package crashtest

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// World is what every point of a run shares: the binary, the keys, the
// sources and a scratch folder.
type World struct {
	Bin       string
	Identity  string // age identity file
	Recipient string
	Work      string // scratch folder; each point takes folders in it
	Env       []string
	// SourceA and SourceB are two versions of one VM folder (same
	// top-level name): B is A with some blocks and a file changed, for
	// receive --into.
	SourceA, SourceB string

	seq int
}

// Dir returns a new folder name in Work (not created).
func (w *World) Dir(what string) string {
	w.seq++
	return filepath.Join(w.Work, fmt.Sprintf("%s-%d", what, w.seq))
}

// Command is coldship with args, in the world's environment.
func (w *World) Command(args ...string) Command {
	return Command{Bin: w.Bin, Args: args, Env: w.Env}
}

// Setup is one transport's destination and the send options used with it.
type Setup struct {
	Store       Store
	BlockSize   int64 // --block-size, bytes
	SegmentSize int64 // --segment-size, bytes
	Streams     int
	// Outage stops the destination's server, waits and starts it again
	// (nil for a local destination). It is called on the goroutine of
	// OutagePoint's caller.
	Outage func()
}

// sendArgs is the send command of src to s.
func (w *World) sendArgs(set *Setup, s Store, src, stateDir string) []string {
	args := []string{"send", src, "--to", s.Dest(), "-r", w.Recipient, "--json", "--state-dir", stateDir,
		"--block-size", fmt.Sprint(set.BlockSize), "--segment-size", fmt.Sprint(set.SegmentSize), "--streams", fmt.Sprint(set.Streams)}
	return append(args, s.Args()...)
}

// receiveArgs is the receive command of shipment id at s into out (mode
// "out" or "into").
func (w *World) receiveArgs(s Store, id, mode, out string) []string {
	args := []string{"receive", s.Dest(), id, "--" + mode, out, "-i", w.Identity, "--json"}
	return append(args, s.Args()...)
}

// verifyArgs is coldship verify (key-less) of one shipment, or with id
// "" of everything at s (--all).
func (w *World) verifyArgs(s Store, id string) []string {
	if id == "" {
		return append([]string{"verify", "--all", s.Dest(), "--json"}, s.Args()...)
	}
	return append([]string{"verify", s.Dest(), id, "--json"}, s.Args()...)
}

// mustRun runs a command to its end and fails unless it exits 0.
func (w *World) mustRun(ctx context.Context, args ...string) (*Outcome, error) {
	o, err := Run(ctx, w.Command(args...), Never)
	if err != nil {
		return o, err
	}
	if o.Code != 0 {
		return o, fmt.Errorf("coldship %s: exit %d\n%s", strings.Join(args, " "), o.Code, tail(o.Stderr))
	}
	return o, nil
}

// tail is the end of a long output, for messages.
func tail(s string) string {
	const max = 2000
	if len(s) > max {
		return "..." + s[len(s)-max:]
	}
	return s
}

// killedCodes are the exit statuses a run stopped by sig may have: 137
// for SIGKILL; 130 for SIGTERM, which coldship catches and reports as an
// interruption (README, Exit status).
func killedCodes(sig syscall.Signal) []int {
	if sig == syscall.SIGKILL {
		return []int{128 + int(syscall.SIGKILL)}
	}
	return []int{130}
}

// copyTree copies a folder with cp -a, holes kept: what a previous
// restore left for receive --into.
func copyTree(src, dst string) error {
	if out, err := exec.Command("cp", "-a", "--sparse=always", src, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("cp -a %s %s: %v: %s", src, dst, err, out)
	}
	return nil
}

// Reference runs the commands every point of a transport is measured
// against: a send of A and of B to a folder of the store, and receives of
// them; it returns the bytes each command moves when it runs to its end.
type Reference struct {
	Store      Store  // holds shipments A and B
	A, B       string // their ids
	RestoreA   string // a restore of A (--out), the starting point of --into
	SendMoved  int64
	OutMoved   int64
	IntoMoved  int64
	OutFetched int64
}

// NewReference makes the reference shipments and restores of a setup.
func (w *World) NewReference(ctx context.Context, set *Setup) (*Reference, error) {
	ref := &Reference{Store: set.Store.Sub("reference")}
	o, err := w.mustRun(ctx, w.sendArgs(set, ref.Store, w.SourceA, w.Dir("state"))...)
	if err != nil {
		return nil, err
	}
	ref.A, ref.SendMoved = o.String("shipment"), o.Moved
	if o, err = w.mustRun(ctx, w.sendArgs(set, ref.Store, w.SourceB, w.Dir("state"))...); err != nil {
		return nil, err
	}
	ref.B = o.String("shipment")
	ref.RestoreA = w.Dir("restore-a")
	if o, err = w.mustRun(ctx, w.receiveArgs(ref.Store, ref.A, "out", ref.RestoreA)...); err != nil {
		return nil, err
	}
	ref.OutMoved, ref.OutFetched = o.Moved, o.Int("bytes_fetched")
	if err := SameTree(w.SourceA, ref.RestoreA); err != nil {
		return nil, err
	}
	into := w.Dir("into")
	if err := copyTree(ref.RestoreA, into); err != nil {
		return nil, err
	}
	if o, err = w.mustRun(ctx, w.receiveArgs(ref.Store, ref.B, "into", into)...); err != nil {
		return nil, err
	}
	ref.IntoMoved = o.Moved
	if err := SameTree(w.SourceB, into); err != nil {
		return nil, fmt.Errorf("reference --into: %w", err)
	}
	os.RemoveAll(into)
	return ref, nil
}

// MakeSources writes the two versions of the VM folder the points ship,
// under dir/a/vm and dir/b/vm: a sparse 40 MiB disk image with about 17
// MiB of data (random, page-sparse and compressible, in runs between
// holes, and a run of written zeros), a small config file and a firmware
// store. B changes
// a few MiB of the image (one run where A had a hole) and the config.
// The content is the same for every run (a fixed seed), so that a point's
// seed lands it at the same stage.
func MakeSources(dir string) (a, b string, err error) {
	r := rand.NewChaCha8([32]byte{'c', 'r', 'a', 's', 'h'})
	random := func(n int) []byte {
		p := make([]byte, n)
		r.Read(p)
		return p
	}
	text := func(n int, line string) []byte { return bytes.Repeat([]byte(line), n/len(line)+1)[:n] }
	const mib = 1 << 20
	// Records of many lengths: blocks of 1 to 16 random pages then zeros
	// (page-sparse forms), and log text that compresses a little
	// differently in every block.
	sparse := make([]byte, 2*mib)
	for i := range 32 {
		r.Read(sparse[i*64<<10 : i*64<<10+(i%16+1)*4096])
	}
	var log bytes.Buffer
	for i := 0; log.Len() < 2*mib; i++ {
		fmt.Fprintf(&log, "%08d guest log: event %x, the quick brown fox %d\n", i, (i*2654435761)%100003, i%97)
	}
	disk := []region{
		{0, random(6 * mib)},
		{6 * mib, sparse},
		{8 * mib, log.Bytes()[:2*mib]},
		{16 * mib, random(8 * mib)},
		{24 * mib, make([]byte, mib)},
	}
	changes := []region{
		{2 * mib, random(mib)},
		{20 * mib, text(mib/2, "changed since A\n")},
		{30 * mib, random(mib)},
	}
	nvram := random(256 << 10)
	a, b = filepath.Join(dir, "a", "vm"), filepath.Join(dir, "b", "vm")
	for _, v := range []struct {
		dir    string
		disk   []region
		config string
	}{{a, disk, "<domain><name>vm</name></domain>\n"}, {b, append(disk, changes...), "<domain><name>vm</name><memory>2</memory></domain>\n"}} {
		if err := os.MkdirAll(v.dir, 0o755); err != nil {
			return "", "", err
		}
		if err := writeImage(filepath.Join(v.dir, "disk.img"), 40*mib, v.disk); err != nil {
			return "", "", err
		}
		if err := os.WriteFile(filepath.Join(v.dir, "vm.xml"), []byte(v.config), 0o644); err != nil {
			return "", "", err
		}
		if err := os.WriteFile(filepath.Join(v.dir, "nvram.fd"), nvram, 0o600); err != nil {
			return "", "", err
		}
	}
	return a, b, nil
}

type region struct {
	off  int64
	data []byte
}

// writeImage writes a sparse file of size bytes holding regions.
func writeImage(p string, size int64, regions []region) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	for _, r := range regions {
		if _, err := f.WriteAt(r.data, r.off); err != nil {
			return err
		}
	}
	return f.Close()
}
