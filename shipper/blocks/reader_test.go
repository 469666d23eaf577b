package blocks

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/shipper/internal/progress"
)

const bs = 64 << 10

// region is content written at an offset of a test file; everything not
// written is a hole.
type region struct {
	off  int64
	data []byte
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// makeFile creates a sparse file of size bytes holding regions, and
// returns its content (nil past 64 MiB).
func makeFile(t testing.TB, path string, size int64, regions ...region) []byte {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	var want []byte
	if size <= 64<<20 {
		want = make([]byte, size)
	}
	for _, r := range regions {
		if _, err := f.WriteAt(r.data, r.off); err != nil {
			t.Fatal(err)
		}
		if want != nil {
			copy(want[r.off:], r.data)
		}
	}
	return want
}

func openFiles(t testing.TB, paths ...string) []File {
	t.Helper()
	var files []File
	for _, p := range paths {
		if p == "" {
			files = append(files, File{Path: "dir"}) // a directory: skipped
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		st, err := archive.StampOf(f)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, File{F: f, Path: p, Stamp: st})
	}
	return files
}

// item is what a test expects of an item: file, index, count, kind.
type item struct {
	file        int
	index, cnt  int64
	kind        Kind
	data, holes int64 // data bytes, hole bytes inside a read block (0 for runs)
}

func (i item) String() string {
	return fmt.Sprintf("f%d[%d+%d]%s/data %d/hole %d", i.file, i.index, i.cnt, [...]string{"hole", "zero", "data"}[i.kind], i.data, i.holes)
}

// collect reads files and returns the items, the bytes of every data
// block rebuilt from its form, and the counters.
func collect(t *testing.T, files []File, opts Options[int64]) ([]item, map[[2]int64][]byte, *progress.Counters, error) {
	t.Helper()
	cnt := new(progress.Counters)
	opts.Counters = cnt
	var items []item
	plain := map[[2]int64][]byte{}
	err := Read(context.Background(), files, opts, func(b *Batch[int64]) error {
		defer b.Release()
		for _, blk := range b.Blocks {
			it := item{blk.File, blk.Index, blk.Count, blk.Kind, blk.Data, blk.Len - blk.Read}
			if blk.Kind == Hole {
				it.holes = 0
			}
			items = append(items, it)
			if blk.Kind != Data {
				continue
			}
			if _, err := archive.CheckForm(blk.Form, blk.Len); err != nil {
				t.Errorf("block %d of file %d: %v", blk.Index, blk.File, err)
			}
			if archive.FormDigest(blk.Form, blk.Len) != blk.Digest {
				t.Errorf("block %d of file %d: digest is not the form's", blk.Index, blk.File)
			}
			p := make([]byte, blk.Len)
			archive.WalkForm(blk.Form, blk.Len, func(off int64, b []byte) error { copy(p[off:], b); return nil }, nil)
			plain[[2]int64{int64(blk.File), blk.Index}] = p
		}
		return nil
	})
	return items, plain, cnt, err
}

func TestReadOrderKindsAndContent(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a")
	page := random(4096)
	wantA := makeFile(t, a, 10*bs+1000,
		region{0, random(bs)},                               // 0: data
		region{4 * bs, make([]byte, bs)},                    // 1-3: hole run; 4: zeros written
		region{5 * bs, page},                                // 5: one page at the start, the rest hole
		region{6*bs + 8192, page},                           // 6: a page in the middle
		region{7 * bs, random(100)},                         // 7: 100 bytes, then zeros in the page, then hole
		region{8 * bs, append(page, make([]byte, 4096)...)}, // 8: a data page then a zero page
		region{10 * bs, random(1000)})                       // 9: hole, 10: short last block
	empty := filepath.Join(dir, "empty")
	makeFile(t, empty, 0)
	b := filepath.Join(dir, "b")
	wantB := makeFile(t, b, 3*bs, region{bs, random(bs)})
	files := openFiles(t, "", a, empty, b)
	want := []item{
		{1, 0, 1, Data, bs, 0},
		{1, 1, 3, Hole, 0, 0},
		{1, 4, 1, Zero, 0, 0},
		{1, 5, 1, Data, 4096, bs - 4096},
		{1, 6, 1, Data, 4096, bs - 4096},
		{1, 7, 1, Data, 4096, bs - 4096},
		{1, 8, 1, Data, 4096, bs - 8192},
		{1, 9, 1, Hole, 0, 0},
		{1, 10, 1, Data, 1000, 0},
		{3, 0, 1, Hole, 0, 0},
		{3, 1, 1, Data, bs, 0},
		{3, 2, 1, Hole, 0, 0},
	}
	for _, tc := range []struct {
		jobs   int
		memory int64
	}{{1, 0}, {3, 0}, {8, 5 << 20}, {2, 1}} {
		t.Run(fmt.Sprintf("jobs=%d,memory=%d", tc.jobs, tc.memory), func(t *testing.T) {
			items, plain, cnt, err := collect(t, files, Options[int64]{BlockSize: bs, Jobs: tc.jobs, Memory: tc.memory})
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(items) != fmt.Sprint(want) {
				t.Errorf("items:\n got %v\nwant %v", items, want)
			}
			for k, p := range plain {
				src := wantA
				if k[0] == 3 {
					src = wantB
				}
				if !bytes.Equal(p, src[k[1]*bs:min((k[1]+1)*bs, int64(len(src)))]) {
					t.Errorf("file %d block %d: the form does not give back the block", k[0], k[1])
				}
			}
			total := int64(len(wantA) + len(wantB))
			if cnt.Done.Load() != total || cnt.Read.Load()+cnt.Hole.Load() != total {
				t.Errorf("done %d, read %d + hole %d; want %d in all", cnt.Done.Load(), cnt.Read.Load(), cnt.Hole.Load(), total)
			}
			if z := cnt.Zero.Load(); z != bs+4096 {
				t.Errorf("zero bytes %d, want the written zero block and the zero page of block 8", z)
			}
		})
	}
}

// TestSparseBlocksReadOnlyTheirData reads a file with 4 KiB of data at
// the start of every 64 KiB: only those pages are read.
func TestSparseBlocksReadOnlyTheirData(t *testing.T) {
	const n = 300
	p := filepath.Join(t.TempDir(), "sparse")
	var regions []region
	for i := int64(0); i < n; i++ {
		regions = append(regions, region{i * bs, random(4096)})
	}
	makeFile(t, p, n*bs, regions...)
	items, _, cnt, err := collect(t, openFiles(t, p), Options[int64]{BlockSize: bs, Jobs: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != n {
		t.Fatalf("%d items, want %d", len(items), n)
	}
	if cnt.Read.Load() != n*4096 || cnt.Hole.Load() != n*(bs-4096) || cnt.Zero.Load() != 0 {
		t.Errorf("read %d, hole %d, zero %d; want only the %d data pages read", cnt.Read.Load(), cnt.Hole.Load(), cnt.Zero.Load(), n)
	}
	for _, it := range items {
		if it.kind != Data || it.data != 4096 {
			t.Fatalf("item %v, want a block of one data page", it)
		}
	}
}

// TestLongHoleIsOneRun: a hole of many blocks is one item, not one per
// block.
func TestLongHoleIsOneRun(t *testing.T) {
	p := filepath.Join(t.TempDir(), "hole")
	makeFile(t, p, 1<<40, region{1<<40 - bs, random(bs)}) // 16 million blocks of hole
	items, _, cnt, err := collect(t, openFiles(t, p), Options[int64]{BlockSize: bs, Jobs: 2})
	if err != nil {
		t.Fatal(err)
	}
	want := []item{{0, 0, 1<<40/bs - 1, Hole, 0, 0}, {0, 1<<40/bs - 1, 1, Data, bs, 0}}
	if fmt.Sprint(items) != fmt.Sprint(want) || cnt.Hole.Load() != 1<<40-bs {
		t.Errorf("items %v, want %v", items, want)
	}
}

// TestPriorInOrderAndSealing checks that Prior sees blocks in order, that
// its value travels with the block, and that only the blocks Seal picks
// are sealed, with the headroom asked for.
func TestPriorInOrderAndSealing(t *testing.T) {
	dir := t.TempDir()
	var regions []region
	for i := int64(0); i < 64; i++ {
		if i%5 != 3 {
			regions = append(regions, region{i * bs, random(int(1 + i*1000))})
		}
	}
	p := filepath.Join(dir, "f")
	makeFile(t, p, 64*bs, regions...)
	key, _ := cipher.NewKey()
	codec, err := archive.NewCodec(key, "20261121T233000Z-3f9a1c2e", archive.FormatV3, true, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer codec.Close()
	var last atomic.Int64
	last.Store(-1)
	sealed := 0
	err = Read(context.Background(), openFiles(t, p), Options[int64]{
		BlockSize: bs, Jobs: 4, Memory: 3 << 20, Headroom: 7,
		Prior: func(file int, block int64) (int64, error) {
			if block <= last.Load() {
				t.Errorf("Prior for block %d after %d", block, last.Load())
			}
			last.Store(block)
			return block * 10, nil
		},
		Seal: func(b *Block[int64]) bool { return b.Prior%20 == 0 },
		Sealer: func(b *Block[int64], dst, scratch []byte) ([]byte, bool, error) {
			dst = append(dst, "header!"...)
			return codec.SealForm(dst, scratch, b.Form, uint32(b.File), uint64(b.Index))
		},
	}, func(b *Batch[int64]) error {
		defer b.Release()
		for _, blk := range b.Blocks {
			if blk.Kind == Hole {
				continue
			}
			if blk.Prior != blk.Index*10 {
				t.Errorf("block %d carries prior %d", blk.Index, blk.Prior)
			}
			if (blk.Record != nil) != (blk.Kind == Data && blk.Index%2 == 0) {
				t.Errorf("block %d (%v): sealed %v", blk.Index, blk.Kind, blk.Record != nil)
			}
			if blk.Record == nil {
				continue
			}
			sealed++
			if !bytes.HasPrefix(blk.Record, []byte("header!")) {
				t.Fatalf("block %d: record without its header", blk.Index)
			}
			dst := make([]byte, archive.MaxFormLen(bs))
			form, _, err := codec.OpenForm(dst, make([]byte, 0, 2*bs), blk.Record[7:], 0, uint64(blk.Index), blk.Compressed, blk.Len, blk.Digest)
			if err != nil || !bytes.Equal(form, blk.Form) {
				t.Errorf("block %d: record does not open to its form: %v", blk.Index, err)
			}
		}
		return nil
	})
	if err != nil || sealed == 0 {
		t.Fatalf("read: %v, %d sealed", err, sealed)
	}
}

// TestSourceChanged: a file written, or cut short, while it is read fails
// the read.
func TestSourceChanged(t *testing.T) {
	for name, change := range map[string]func(f *os.File){
		"written":   func(f *os.File) { f.WriteAt([]byte("new"), 5) },
		"truncated": func(f *os.File) { f.Truncate(bs) },
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "f")
			makeFile(t, p, 40*bs, region{0, random(40 * bs)})
			w, _ := os.OpenFile(p, os.O_WRONLY, 0)
			defer w.Close()
			_, _, _, err := collect(t, openFiles(t, p), Options[int64]{BlockSize: bs, Jobs: 2, Memory: 1,
				Prior: func(file int, block int64) (int64, error) {
					if block == 20 {
						change(w)
					}
					return 0, nil
				}})
			if !errors.Is(err, ErrSourceChanged) || !strings.Contains(err.Error(), p) {
				t.Errorf("err = %v, want a changed source naming %s", err, p)
			}
		})
	}
}

// TestHugeJobsBounded asks for 100000 jobs: the reader clamps them to its
// memory budget, and allocates accordingly.
func TestHugeJobsBounded(t *testing.T) {
	if j := MaxJobs(bs, 0, true); j < 2 || j > 64 {
		t.Errorf("MaxJobs(64K) = %d", j)
	}
	if j := MaxJobs(64<<20, 0, true); j != 1 {
		t.Errorf("MaxJobs(64M) = %d, want 1", j)
	}
	p := filepath.Join(t.TempDir(), "f")
	makeFile(t, p, 1, region{0, []byte{1}})
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, _, _, err := collect(t, openFiles(t, p), Options[int64]{BlockSize: bs, Jobs: 100000,
		Sealer: func(b *Block[int64], dst, scratch []byte) ([]byte, bool, error) {
			return append(dst, b.Form...), false, nil
		}})
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 2*DefaultMemory {
		t.Errorf("reading one byte with --jobs 100000 allocated %d MiB", got>>20)
	}
}

// TestChangingSources: with Options.Changing (pre-copy rounds) a source
// written while it is read is read as it goes; one cut short still fails.
func TestChangingSources(t *testing.T) {
	for name, tc := range map[string]struct {
		change func(f *os.File)
		fails  bool
	}{
		"written":   {func(f *os.File) { f.WriteAt([]byte("new"), 5) }, false},
		"truncated": {func(f *os.File) { f.Truncate(bs) }, true},
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "f")
			makeFile(t, p, 40*bs, region{0, random(40 * bs)})
			w, _ := os.OpenFile(p, os.O_WRONLY, 0)
			defer w.Close()
			_, _, _, err := collect(t, openFiles(t, p), Options[int64]{BlockSize: bs, Jobs: 2, Memory: 1, Changing: true,
				Prior: func(file int, block int64) (int64, error) {
					if block == 20 {
						tc.change(w)
					}
					return 0, nil
				}})
			if tc.fails != errors.Is(err, ErrSourceChanged) || !tc.fails && err != nil {
				t.Errorf("err = %v, want failure %v", err, tc.fails)
			}
		})
	}
}
