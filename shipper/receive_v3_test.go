package shipper_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"filippo.io/age"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
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
	if err := shipper.VerifyInventory(context.Background(), e.tr, id, nil); !isIntegrity(err) {
		t.Fatalf("key-less verify of a damaged segment: %v", err)
	}
}

func isIntegrity(err error) bool {
	return errors.Is(err, archive.ErrIntegrity) || errors.Is(err, cipher.ErrIntegrity)
}
