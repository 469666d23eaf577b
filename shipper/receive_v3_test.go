package shipper_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/hooks"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/local"
	"github.com/coldship/coldship/shipper/v3test"
)

// v3env is a local destination holding format 3 shipments.
type v3env struct {
	t     *testing.T
	dir   string
	dest  string
	tr    shipper.Transport
	ident *age.X25519Identity
}

func newV3Env(t *testing.T) *v3env {
	t.Helper()
	ident, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dest := filepath.Join(dir, "dest")
	tr, err := local.New(dest)
	if err != nil {
		t.Fatal(err)
	}
	return &v3env{t: t, dir: dir, dest: dest, tr: tr, ident: ident}
}

func (e *v3env) write(files []v3test.File, opts v3test.Options) string {
	e.t.Helper()
	opts.Recipients = []age.Recipient{e.ident.Recipient()}
	id, err := v3test.Write(e.dest, files, opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

func (e *v3env) open(id string) (*shipper.Shipment, error) {
	return shipper.OpenShipment(context.Background(), e.tr, id, []age.Identity{e.ident})
}

func (e *v3env) receive(id, out string, opts shipper.ReceiveOptions) (*shipper.ReceiveResult, error) {
	sh, err := e.open(id)
	if err != nil {
		return nil, err
	}
	return sh.Receive(context.Background(), out, opts)
}

// same checks that the restored file at got equals what f describes, and
// that it is as sparse as that content (allocated within 5% + 64 KiB).
func (e *v3env) same(f v3test.File, bs int64, got string) {
	e.t.Helper()
	want := filepath.Join(e.dir, "want-"+strings.ReplaceAll(f.Path, "/", "_"))
	if err := v3test.Expand(want, f, bs); err != nil {
		e.t.Fatal(err)
	}
	a, err := os.ReadFile(want)
	if err != nil {
		e.t.Fatal(err)
	}
	b, err := os.ReadFile(got)
	if err != nil {
		e.t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		e.t.Fatalf("%s differs from the source (%d vs %d bytes)", got, len(b), len(a))
	}
	if wa, ga := allocated(e.t, want), allocated(e.t, got); ga > wa+wa/20+64<<10 {
		e.t.Errorf("%s: %d bytes allocated, the source %d", got, ga, wa)
	}
}

func allocated(t *testing.T, p string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// leftovers returns the temporary files under dir.
func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.Contains(fi.Name(), ".coldship-") && !strings.HasPrefix(fi.Name(), ".coldship-restore-") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func v3Files(bs int64) []v3test.File {
	return []v3test.File{
		{Path: "vm", Dir: true, Mode: 0o750},
		{Path: "vm/disk.img", Size: 40*bs + 100, Mode: 0o600, Content: v3test.Pattern(1, "d000000000000000")},
		{Path: "vm/dense.img", Size: 3 * bs, Content: v3test.Pattern(2, "d")},
		{Path: "vm/empty", Size: 0},
		{Path: "vm/zeros", Size: 5 * bs},
		{Path: "vm/sub", Dir: true},
		{Path: "vm/sub/tiny", Size: 1, Content: v3test.Pattern(3, "d")},
		{Path: "vm/sub/odd", Size: 2*bs + 4097, Content: v3test.Pattern(4, "0d0dd")},
	}
}

func TestReceiveV3RoundTrip(t *testing.T) {
	const bs = 64 << 10
	for _, tc := range []struct {
		name string
		opts v3test.Options
	}{
		{"plain", v3test.Options{BlockSize: bs}},
		{"compressed, small segments, three slots", v3test.Options{BlockSize: bs, Compress: true, SegmentSize: 3 * bs, Slots: 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newV3Env(t)
			files := v3Files(bs)
			id := e.write(files, tc.opts)
			out := filepath.Join(e.dir, "out")
			res, err := e.receive(id, out, shipper.ReceiveOptions{Jobs: 2, Streams: 2})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Files) != len(files) {
				t.Errorf("restored %d paths, want %d", len(res.Files), len(files))
			}
			for _, f := range files {
				p := filepath.Join(out, f.Path)
				fi, err := os.Stat(p)
				if err != nil {
					t.Fatal(err)
				}
				want := f.Mode
				if want == 0 {
					want = map[bool]os.FileMode{false: 0o644, true: 0o755}[f.Dir]
				}
				if fi.Mode().Perm() != want {
					t.Errorf("%s: mode %v, want %v", f.Path, fi.Mode().Perm(), want)
				}
				if !f.Dir {
					e.same(f, bs, p)
				}
			}
			if l := leftovers(t, out); len(l) != 0 {
				t.Errorf("temporary files left: %v", l)
			}
			sh, err := e.open(id)
			if err != nil {
				t.Fatal(err)
			}
			if err := sh.Verify(context.Background(), 2, 2, nil); err != nil {
				t.Fatalf("verify: %v", err)
			}
		})
	}
}

func TestReceiveV3Damage(t *testing.T) {
	const bs = 64 << 10
	e := newV3Env(t)
	id := e.write(v3Files(bs), v3test.Options{BlockSize: bs, SegmentSize: 4 * bs})
	seg := filepath.Join(e.dest, id, "segments", "00000002")
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	os.WriteFile(seg, b, 0o644)
	out := filepath.Join(e.dir, "out")
	_, err = e.receive(id, out, shipper.ReceiveOptions{})
	if !isIntegrity(err) {
		t.Fatalf("receive of a damaged segment: %v, want an integrity error", err)
	}
	if entries, _ := os.ReadDir(out); len(entries) != 0 {
		t.Errorf("a failed receive left %v", entries)
	}
	sh, err := e.open(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Verify(context.Background(), 2, 2, nil); !isIntegrity(err) {
		t.Fatalf("verify of a damaged segment: %v", err)
	}
	if err := shipper.VerifyInventory(context.Background(), e.tr, id, 0, nil); !isIntegrity(err) {
		t.Fatalf("key-less verify of a damaged segment: %v", err)
	}
}

func isIntegrity(err error) bool {
	return errors.Is(err, archive.ErrIntegrity) || errors.Is(err, cipher.ErrIntegrity)
}

// droppy fails every read of a segment after its first after bytes, as a
// dropped connection does, while fails > 0 (then it behaves).
type droppy struct {
	shipper.Transport
	after int64
	fails atomic.Int32
}

func (f *droppy) Open(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	rc, err := f.Transport.Open(ctx, name, offset, length)
	if err != nil || !strings.Contains(name, "/segments/") || f.fails.Load() <= 0 {
		return rc, err
	}
	return &cutReader{ReadCloser: rc, left: f.after, f: f}, nil
}

type cutReader struct {
	io.ReadCloser
	left int64
	f    *droppy
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		c.f.fails.Add(-1)
		return 0, errors.New("connection reset by peer")
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.ReadCloser.Read(p)
	c.left -= int64(n)
	return n, err
}

func TestReceiveV3ResumesAndRetries(t *testing.T) {
	const bs = 64 << 10
	e := newV3Env(t)
	files := v3Files(bs)
	id := e.write(files, v3test.Options{BlockSize: bs, SegmentSize: 8 * bs})
	out := filepath.Join(e.dir, "out")
	ctx := context.Background()

	// A connection lost half-way, no retries: the receive fails, nothing is
	// at a final name, and what it wrote stays recorded.
	cut := &droppy{Transport: e.tr, after: 4 * bs}
	cut.fails.Store(1 << 30)
	sh, err := shipper.OpenShipment(ctx, cut, id, []age.Identity{e.ident})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sh.Receive(ctx, out, shipper.ReceiveOptions{Streams: 1, Jobs: 1}); err == nil || isIntegrity(err) {
		t.Fatalf("receive over a dropped connection: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, "vm", "disk.img")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed receive left a file at its final name (%v)", err)
	}
	if len(leftovers(t, out)) == 0 {
		t.Fatal("the failed receive kept nothing to resume from")
	}
	// The same receive again: resumes, reports what it reused.
	res, err := e.receive(id, out, shipper.ReceiveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Reused <= 0 {
		t.Errorf("the resumed receive reused %d bytes", res.Reused)
	}
	for _, f := range files {
		if !f.Dir {
			e.same(f, bs, filepath.Join(out, f.Path))
		}
	}
	if l := leftovers(t, out); len(l) != 0 {
		t.Errorf("temporary files left: %v", l)
	}

	// Within one run: the lost connection is retried, each retry resuming.
	out2 := filepath.Join(e.dir, "out2")
	cut = &droppy{Transport: e.tr, after: 4 * bs}
	cut.fails.Store(1)
	sh, _ = shipper.OpenShipment(ctx, cut, id, []age.Identity{e.ident})
	res, err = sh.Receive(ctx, out2, shipper.ReceiveOptions{Streams: 1, Jobs: 1, Retries: 3, RetryDelay: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Attempts != 2 || res.Reused != 0 {
		t.Errorf("attempts %d, reused %d: want 2 attempts, and nothing counted as reused from this run", res.Attempts, res.Reused)
	}
	e.same(files[1], bs, filepath.Join(out2, files[1].Path))
}

func TestReceiveV3NoSuchShipment(t *testing.T) {
	e := newV3Env(t)
	e.write(v3Files(64<<10), v3test.Options{BlockSize: 64 << 10})
	_, err := e.open("20261130T000000Z-0deadbee")
	if err == nil || !strings.Contains(err.Error(), "no shipment 20261130T000000Z-0deadbee at") || isIntegrity(err) {
		t.Fatalf("a shipment that is not there: %v", err)
	}
	if err := shipper.VerifyInventory(context.Background(), e.tr, "20261130T000000Z-0deadbee", 0, nil); err == nil || isIntegrity(err) {
		t.Fatalf("key-less verify of a shipment that is not there: %v", err)
	}
}

// TestReceiveV3SwappedKey replaces a key object with another key wrapped
// for the same recipient and makes the inventory agree: the manifest's
// list of key objects catches it before it is used.
func TestReceiveV3SwappedKey(t *testing.T) {
	const bs = 64 << 10
	e := newV3Env(t)
	id := e.write(v3Files(bs), v3test.Options{BlockSize: bs, SegmentSize: 2 * bs, Slots: 2})
	k, _ := cipher.NewKey()
	wrapped, err := k.Wrap(e.ident.Recipient())
	if err != nil {
		t.Fatal(err)
	}
	if err := v3test.ReplaceObject(e.dest, id, "keys/0000", wrapped); err != nil {
		t.Fatal(err)
	}
	if err := shipper.VerifyInventory(context.Background(), e.tr, id, 0, nil); err != nil {
		t.Fatalf("the forgery should pass the key-less check: %v", err)
	}
	_, err = e.open(id)
	if !isIntegrity(err) || !strings.Contains(err.Error(), "keys/0000") {
		t.Fatalf("a swapped key object: %v, want an integrity error naming it", err)
	}
}

// TestReceiveV3Forged: a manifest sealed by whoever holds the key, but
// contradicting itself or its table, exits as an integrity failure; one
// that claims more data than the disk holds fails before writing; an
// honest huge sparse file restores sparse with bounded memory. No case
// leaves a temporary file.
func TestReceiveV3Forged(t *testing.T) {
	const bs = 1 << 20
	big := func(size int64) []v3test.File {
		last := (size - 1) / bs
		return []v3test.File{{Path: "big.img", Size: size, Blocks: []int64{0, last / 2, last}, Content: v3test.Pattern(9, "d0")}}
	}
	for _, tc := range []struct {
		name   string
		files  []v3test.File
		tamper func(m *archive.Manifest)
		want   string // "" success; "integrity"; else a substring of a non-integrity error
	}{
		{"8 TiB sparse", big(8 << 40), nil, ""},
		{"more data blocks than the table", big(8 << 40), func(m *archive.Manifest) { m.Files[0].DataBlocks++ }, "integrity"},
		{"other data bytes", big(8 << 40), func(m *archive.Manifest) { m.Files[0].DataBytes -= 4096 }, "integrity"},
		{"blocks past the size", big(8 << 40), func(m *archive.Manifest) { m.Files[0].Size = bs }, "integrity"},
		{"claims 8 TiB of data", big(8 << 40), func(m *archive.Manifest) {
			m.Files[0].DataBlocks, m.Files[0].DataBytes = 8<<20, 8<<40
		}, "needs"},
		{"larger than the file system holds", big(1 << 50), nil, "cannot hold"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newV3Env(t)
			id := e.write(tc.files, v3test.Options{BlockSize: bs, Tamper: tc.tamper})
			out := filepath.Join(e.dir, "out")
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			_, err := e.receive(id, out, shipper.ReceiveOptions{Jobs: 2})
			runtime.ReadMemStats(&after)
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 96<<20 {
				t.Errorf("receive allocated %d MiB", alloc>>20)
			}
			switch {
			case tc.want == "" && err != nil:
				t.Fatal(err)
			case tc.want == "integrity" && !isIntegrity(err):
				t.Fatalf("got %v, want an integrity error", err)
			case tc.want != "" && tc.want != "integrity" && (err == nil || isIntegrity(err) || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error about %q", err, tc.want)
			}
			if l := leftovers(t, e.dir); len(l) != 0 {
				t.Errorf("temporary files left: %v", l)
			}
			if tc.want != "" {
				if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("a failed receive left its output folder (%v)", err)
				}
				return
			}
			p := filepath.Join(out, "big.img")
			if a := allocated(t, p); a > 4<<20 {
				t.Errorf("%d bytes allocated for 3 blocks of data", a)
			}
			f, _ := os.Open(p)
			defer f.Close()
			got, want := make([]byte, bs), make([]byte, bs)
			f.ReadAt(got, (8<<40)-bs)
			tc.files[0].Content((8<<40)/bs-1, want)
			if !bytes.Equal(got, want) {
				t.Error("the last block of the huge file differs")
			}
		})
	}
}

// TestReceiveIntoV3 updates a format 3 restore: only what changed is
// fetched and written, pages that became zero are punched, and the result
// is exact and as sparse as the source.
func TestReceiveIntoV3(t *testing.T) {
	const bs = 64 << 10
	e := newV3Env(t)
	a := v3Files(bs)
	idA := e.write(a, v3test.Options{BlockSize: bs})
	out := filepath.Join(e.dir, "out")
	if _, err := e.receive(idA, out, shipper.ReceiveOptions{}); err != nil {
		t.Fatal(err)
	}
	b := v3Files(bs)
	b[1].Content = v3test.Pattern(1, "d000000000000000")
	changed := b[1].Content
	b[1].Content = func(block int64, buf []byte) bool {
		changed(block, buf)
		switch block {
		case 3:
			buf[100] ^= 0xff // changed
		case 7:
			clear(buf[:4096]) // its only page of data gone: a zero block
		}
		return true
	}
	b[2].Size = 2 * bs                                                                        // shrank
	b = append(b, v3test.File{Path: "vm/new.img", Size: bs, Content: v3test.Pattern(5, "d")}) // new
	b = append(b[:6], b[7:]...)                                                               // vm/sub/tiny gone
	idB := e.write(b, v3test.Options{BlockSize: bs, Compress: true})
	sh, err := e.open(idB)
	if err != nil {
		t.Fatal(err)
	}
	res, err := sh.ReceiveInto(context.Background(), out, shipper.ReceiveOptions{ReadBack: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range b {
		if !f.Dir {
			e.same(f, bs, filepath.Join(out, f.Path))
		}
	}
	if _, err := os.Stat(filepath.Join(out, "vm/sub/tiny")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a file the new shipment does not have is still there (%v)", err)
	}
	if max := int64(4 * bs); res.Written > max {
		t.Errorf("wrote %d bytes: more than the blocks that changed", res.Written)
	}
	if l := leftovers(t, out); len(l) != 0 {
		t.Errorf("temporary files left: %v", l)
	}
}

// TestReceiveInclude restores part of a shipment; its marker says so, and
// a later update restores the rest rather than taking it as present.
func TestReceiveInclude(t *testing.T) {
	const bs = 64 << 10
	e := newV3Env(t)
	files := v3Files(bs)
	id := e.write(files, v3test.Options{BlockSize: bs})
	out := filepath.Join(e.dir, "out")
	res, err := e.receive(id, out, shipper.ReceiveOptions{Include: []string{"vm/sub", "*/dense.img"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Files) != 5 { // vm, vm/dense.img, vm/sub, vm/sub/tiny, vm/sub/odd
		t.Errorf("restored %v", res.Files)
	}
	for _, f := range files {
		_, err := os.Stat(filepath.Join(out, f.Path))
		want := f.Path == "vm" || f.Path == "vm/dense.img" || strings.HasPrefix(f.Path, "vm/sub")
		if want != (err == nil) {
			t.Errorf("%s: restored %v, want %v", f.Path, err == nil, want)
		}
	}
	if _, err := e.receive(id, filepath.Join(e.dir, "x"), shipper.ReceiveOptions{Include: []string{"vm/nothing*"}}); err == nil {
		t.Error("a pattern that matches nothing restored nothing and succeeded")
	}
	sh, _ := e.open(id)
	if _, err := sh.ReceiveInto(context.Background(), out, shipper.ReceiveOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !f.Dir {
			e.same(f, bs, filepath.Join(out, f.Path))
		}
	}
}

// loopDevice attaches a loop device to a new file of size bytes filled
// with fill, and detaches it when the test ends.
func loopDevice(t *testing.T, size int64, fill byte) string {
	t.Helper()
	backing := filepath.Join(t.TempDir(), "backing")
	if err := os.WriteFile(backing, bytes.Repeat([]byte{fill}, int(size)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("losetup: %v: %s", err, out)
		}
		t.Skipf("cannot make a loop device here (losetup: %v: %s)", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

// TestReceiveOutDevice restores a file onto a block device in place:
// zeros are written where the shipment has zeros, what lies past the
// file is left alone, and a device in use is refused.
func TestReceiveOutDevice(t *testing.T) {
	const bs = 64 << 10
	dev := loopDevice(t, 4<<20, 0xaa)
	e := newV3Env(t)
	files := v3Files(bs)
	id := e.write(files, v3test.Options{BlockSize: bs})
	out := filepath.Join(e.dir, "out")

	// Held exclusively by someone else (as a mount holds it): refused.
	holder, err := os.OpenFile(dev, os.O_RDWR|syscall.O_EXCL, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.receive(id, out, shipper.ReceiveOptions{Devices: map[string]string{"vm/disk.img": dev}})
	holder.Close()
	if !errors.Is(err, hooks.ErrBusy) || !strings.Contains(err.Error(), dev) {
		t.Fatalf("a device in use: %v, want a refusal as busy naming it", err)
	}

	res, err := e.receive(id, out, shipper.ReceiveOptions{Devices: map[string]string{"vm/disk.img": dev}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(res.Files, dev) {
		t.Errorf("restored %v, not the device", res.Files)
	}
	f := files[1]
	want := filepath.Join(e.dir, "want")
	v3test.Expand(want, f, bs)
	wb, _ := os.ReadFile(want)
	got := make([]byte, 4<<20)
	d, _ := os.Open(dev)
	io.ReadFull(d, got)
	d.Close()
	if !bytes.Equal(got[:f.Size], wb) {
		t.Error("the device does not hold the file")
	}
	if !bytes.Equal(got[f.Size:], bytes.Repeat([]byte{0xaa}, len(got)-int(f.Size))) {
		t.Error("the device was written past the file's end")
	}
	if _, err := os.Stat(filepath.Join(out, f.Path)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the file restored onto a device is in the output folder too (%v)", err)
	}
	e.same(files[2], bs, filepath.Join(out, files[2].Path))
}
