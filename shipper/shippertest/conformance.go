// Package shippertest holds the conformance suite that every
// shipper.Transport must pass: local, SFTP and S3 run the same tests.
package shippertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/coldship/coldship/shipper"
)

// Run runs the conformance suite. newTransport returns a Transport over an
// empty root; it is called once per subtest.
func Run(t *testing.T, newTransport func(t *testing.T) shipper.Transport) {
	tests := []struct {
		name string
		fn   func(t *testing.T, tr shipper.Transport)
	}{
		{"PutOpenSizes", testPutOpenSizes},
		{"OpenRange", testOpenRange},
		{"Overwrite", testOverwrite},
		{"NotFound", testNotFound},
		{"ShortReaderLeavesNothing", testShortReader},
		{"FailingReaderLeavesNothing", testFailingReader},
		{"CancelledLeavesNothing", testCancelled},
		{"ListPrefix", testListPrefix},
		{"Delete", testDelete},
		{"Concurrent", testConcurrent},
		{"InvalidNames", testInvalidNames},
		{"PutNew", testPutNew},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTransport(t)
			t.Cleanup(func() { tr.Close() })
			tc.fn(t, tr)
		})
	}
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// Get reads n bytes of object name from off (n < 0: to its end), failing
// the test on an error.
func Get(t *testing.T, tr shipper.Transport, name string, off, n int64) []byte {
	t.Helper()
	rc, err := tr.Open(context.Background(), name, off, n)
	if err != nil {
		t.Fatalf("Open(%q, %d, %d): %v", name, off, n, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %q: %v", name, err)
	}
	return b
}

func put(t *testing.T, tr shipper.Transport, name string, data []byte, size int64) {
	t.Helper()
	if err := tr.Put(context.Background(), name, bytes.NewReader(data), size); err != nil {
		t.Fatalf("Put(%q, %d bytes): %v", name, len(data), err)
	}
}

func listAll(t *testing.T, tr shipper.Transport, prefix string) map[string]int64 {
	t.Helper()
	got := map[string]int64{}
	err := tr.List(context.Background(), prefix, func(oi shipper.ObjectInfo) error {
		if _, dup := got[oi.Name]; dup {
			return fmt.Errorf("object %q listed twice", oi.Name)
		}
		got[oi.Name] = oi.Size
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return got
}

func assertAbsent(t *testing.T, tr shipper.Transport, name string) {
	t.Helper()
	if _, err := tr.Stat(context.Background(), name); !errors.Is(err, shipper.ErrNotFound) {
		t.Errorf("Stat(%q) after failed Put: err = %v, want ErrNotFound", name, err)
	}
	for n := range listAll(t, tr, "") {
		t.Errorf("List after failed Put shows %q", n)
	}
}

func testPutOpenSizes(t *testing.T, tr shipper.Transport) {
	for i, n := range []int{0, 1, 4095, 4096, 1<<20 + 3, 5<<20 + 17} {
		for _, known := range []bool{true, false} {
			name := fmt.Sprintf("ship/obj-%d-%v", n, known)
			data := randomBytes(n, uint64(i))
			size := int64(n)
			if !known {
				size = -1
			}
			put(t, tr, name, data, size)
			oi, err := tr.Stat(context.Background(), name)
			if err != nil {
				t.Fatalf("Stat(%q): %v", name, err)
			}
			if oi.Size != int64(n) {
				t.Errorf("Stat(%q).Size = %d, want %d", name, oi.Size, n)
			}
			if got := Get(t, tr, name, 0, -1); !bytes.Equal(got, data) {
				t.Errorf("Open(%q) returned %d bytes that differ from the %d put", name, len(got), n)
			}
		}
	}
}

func testOpenRange(t *testing.T, tr shipper.Transport) {
	data := randomBytes(3<<20+5, 7)
	put(t, tr, "s/seg", data, int64(len(data)))
	cases := []struct{ off, n int64 }{
		{0, 1}, {1, 10}, {1 << 20, 1 << 20}, {int64(len(data)) - 5, 5}, {int64(len(data)) - 5, -1}, {12345, -1},
	}
	for _, c := range cases {
		want := data[c.off:]
		if c.n >= 0 {
			want = want[:c.n]
		}
		if got := Get(t, tr, "s/seg", c.off, c.n); !bytes.Equal(got, want) {
			t.Errorf("Open(off=%d, n=%d): got %d bytes, want %d (or content differs)", c.off, c.n, len(got), len(want))
		}
	}
}

func testOverwrite(t *testing.T, tr shipper.Transport) {
	put(t, tr, "s/manifest", []byte("first version, longer"), -1)
	put(t, tr, "s/manifest", []byte("second"), 6)
	if got := Get(t, tr, "s/manifest", 0, -1); string(got) != "second" {
		t.Errorf("after overwrite got %q, want %q", got, "second")
	}
}

func testNotFound(t *testing.T, tr shipper.Transport) {
	ctx := context.Background()
	if _, err := tr.Stat(ctx, "nope/obj"); !errors.Is(err, shipper.ErrNotFound) {
		t.Errorf("Stat missing: err = %v, want ErrNotFound", err)
	}
	rc, err := tr.Open(ctx, "nope/obj", 0, -1)
	if err == nil {
		// Some stores only report a missing object on the first read.
		_, err = io.ReadAll(rc)
		rc.Close()
	}
	if !errors.Is(err, shipper.ErrNotFound) {
		t.Errorf("Open missing: err = %v, want ErrNotFound", err)
	}
	if got := listAll(t, tr, "nope/"); len(got) != 0 {
		t.Errorf("List of missing prefix = %v, want nothing", got)
	}
}

func testShortReader(t *testing.T, tr shipper.Transport) {
	data := randomBytes(100000, 3)
	err := tr.Put(context.Background(), "s/short", bytes.NewReader(data), int64(len(data))+1)
	if err == nil {
		t.Fatal("Put with fewer bytes than size succeeded")
	}
	assertAbsent(t, tr, "s/short")
}

func testFailingReader(t *testing.T, tr shipper.Transport) {
	data := randomBytes(3<<20, 4)
	boom := errors.New("source read failed")
	r := io.MultiReader(bytes.NewReader(data), iotest.ErrReader(boom))
	for _, size := range []int64{-1, int64(len(data)) + 100} {
		if err := tr.Put(context.Background(), "s/fail", r, size); err == nil {
			t.Fatalf("Put from a failing reader (size %d) succeeded", size)
		}
		assertAbsent(t, tr, "s/fail")
		r = io.MultiReader(bytes.NewReader(data), iotest.ErrReader(boom))
	}
}

// cancelReader cancels the context after the first read.
type cancelReader struct {
	r      io.Reader
	cancel func()
	n      int
}

func (c *cancelReader) Read(p []byte) (int, error) {
	c.n++
	if c.n == 2 {
		c.cancel()
	}
	return c.r.Read(p)
}

func testCancelled(t *testing.T, tr shipper.Transport) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	data := randomBytes(8<<20, 5)
	r := &cancelReader{r: iotest.HalfReader(bytes.NewReader(data)), cancel: cancel}
	if err := tr.Put(ctx, "s/cancelled", r, -1); err == nil {
		t.Fatal("Put succeeded although its context was cancelled")
	}
	assertAbsent(t, tr, "s/cancelled")
}

func testListPrefix(t *testing.T, tr shipper.Transport) {
	objs := map[string]int{"a1/header": 10, "a1/segments/00000001": 20, "a1/segments/00000002": 0, "a2/header": 30, "b/x": 1}
	for n, sz := range objs {
		put(t, tr, n, randomBytes(sz, 1), int64(sz))
	}
	cases := map[string][]string{
		"":            {"a1/header", "a1/segments/00000001", "a1/segments/00000002", "a2/header", "b/x"},
		"a1/":         {"a1/header", "a1/segments/00000001", "a1/segments/00000002"},
		"a1/segments": {"a1/segments/00000001", "a1/segments/00000002"},
		"a":           {"a1/header", "a1/segments/00000001", "a1/segments/00000002", "a2/header"},
		"c/":          nil,
	}
	for prefix, want := range cases {
		got := listAll(t, tr, prefix)
		var names []string
		for n, sz := range got {
			names = append(names, n)
			if sz != int64(objs[n]) {
				t.Errorf("List(%q): %q has size %d, want %d", prefix, n, sz, objs[n])
			}
		}
		sort.Strings(names)
		if fmt.Sprint(names) != fmt.Sprint(want) {
			t.Errorf("List(%q) = %v, want %v", prefix, names, want)
		}
	}
}

func testDelete(t *testing.T, tr shipper.Transport) {
	ctx := context.Background()
	put(t, tr, "d/one", []byte("1"), 1)
	put(t, tr, "d/two", []byte("2"), 1)
	if err := tr.Delete(ctx, "d/one"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := tr.Stat(ctx, "d/one"); !errors.Is(err, shipper.ErrNotFound) {
		t.Errorf("Stat after Delete: err = %v, want ErrNotFound", err)
	}
	if err := tr.Delete(ctx, "d/one"); err != nil {
		t.Errorf("Delete of a missing object: %v", err)
	}
	if got := listAll(t, tr, "d/"); len(got) != 1 {
		t.Errorf("after Delete List = %v, want only d/two", got)
	}
}

func testConcurrent(t *testing.T, tr shipper.Transport) {
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := randomBytes(256<<10+i, uint64(i))
			name := fmt.Sprintf("c/segments/%08d", i)
			if err := tr.Put(context.Background(), name, bytes.NewReader(data), int64(len(data))); err != nil {
				errs <- err
				return
			}
			rc, err := tr.Open(context.Background(), name, 0, -1)
			if err != nil {
				errs <- err
				return
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			if err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(got, data) {
				errs <- fmt.Errorf("%s: content differs", name)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := listAll(t, tr, "c/"); len(got) != 16 {
		t.Errorf("List after 16 concurrent Puts has %d objects", len(got))
	}
}

func testInvalidNames(t *testing.T, tr shipper.Transport) {
	for _, name := range []string{"", "/abs", "a/../b", "a//b", "./a", "a/.tmp", ".hidden"} {
		if err := tr.Put(context.Background(), name, bytes.NewReader(nil), 0); err == nil {
			t.Errorf("Put(%q) succeeded, want an invalid name error", name)
		}
	}
}

// testPutNew checks shipper.ExclusiveCreator where a transport has it: a
// new object is created, an existing one (made by PutNew or Put) is never
// replaced, of racing creators exactly one wins, and a failed PutNew
// leaves nothing behind.
func testPutNew(t *testing.T, tr shipper.Transport) {
	ec, ok := tr.(shipper.ExclusiveCreator)
	if !ok {
		t.Skipf("%T does not implement shipper.ExclusiveCreator", tr)
	}
	ctx := context.Background()
	first := randomBytes(100_000, 21)
	if err := ec.PutNew(ctx, "k/keys/0000", bytes.NewReader(first), int64(len(first))); err != nil {
		t.Fatalf("PutNew of a new object: %v", err)
	}
	for _, size := range []int64{3, -1} {
		err := ec.PutNew(ctx, "k/keys/0000", bytes.NewReader([]byte("new")), size)
		if !errors.Is(err, shipper.ErrObjectExists) {
			t.Errorf("PutNew over an existing object (size %d): err = %v, want ErrObjectExists", size, err)
		}
	}
	if got := Get(t, tr, "k/keys/0000", 0, -1); !bytes.Equal(got, first) {
		t.Errorf("after a refused PutNew the object holds %d bytes, want the first %d", len(got), len(first))
	}
	put(t, tr, "k/keys/0001", []byte("by Put"), -1)
	if err := ec.PutNew(ctx, "k/keys/0001", bytes.NewReader([]byte("x")), 1); !errors.Is(err, shipper.ErrObjectExists) {
		t.Errorf("PutNew over an object made by Put: err = %v, want ErrObjectExists", err)
	}

	boom := errors.New("source read failed")
	err := ec.PutNew(ctx, "k/keys/0002", io.MultiReader(bytes.NewReader(first), iotest.ErrReader(boom)), -1)
	if err == nil || errors.Is(err, shipper.ErrObjectExists) {
		t.Errorf("PutNew from a failing reader: err = %v, want the reader's failure", err)
	}
	if _, err := tr.Stat(ctx, "k/keys/0002"); !errors.Is(err, shipper.ErrNotFound) {
		t.Errorf("Stat after a failed PutNew: err = %v, want ErrNotFound", err)
	}

	const racers = 8
	var wg sync.WaitGroup
	errs := make([]error, racers)
	for i := range racers {
		wg.Go(func() {
			data := randomBytes(64<<10+i, uint64(100+i))
			errs[i] = ec.PutNew(ctx, "k/keys/0003", bytes.NewReader(data), int64(len(data)))
		})
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("racing PutNew: both %d and %d succeeded", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, shipper.ErrObjectExists):
			t.Errorf("racing PutNew %d: err = %v, want ErrObjectExists", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("racing PutNew: none succeeded")
	}
	if got := Get(t, tr, "k/keys/0003", 0, -1); !bytes.Equal(got, randomBytes(64<<10+winner, uint64(100+winner))) {
		t.Errorf("racing PutNew: the object does not hold the winner's %d bytes", 64<<10+winner)
	}
	want := map[string]int64{"k/keys/0000": int64(len(first)), "k/keys/0001": 6, "k/keys/0003": int64(64<<10 + winner)}
	if got := listAll(t, tr, ""); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("List after PutNew = %v, want %v (no temporaries)", got, want)
	}
}
