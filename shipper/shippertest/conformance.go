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
	"slices"
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
		{"ListFolders", testListFolders},
		{"ListSkipping", testListSkipping},
		{"Delete", testDelete},
		{"Concurrent", testConcurrent},
		{"InvalidNames", testInvalidNames},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTransport(t)
			t.Cleanup(func() { tr.Close() })
			tc.fn(t, tr)
		})
	}
	t.Run("PutNew", func(t *testing.T) { runPutNew(t, newTransport) })
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
		{int64(len(data)), -1}, // at the end: nothing (how a read continued past a head learns the object ends there)
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
	objs := map[string]int{"a1/header": 10, "a1/segments/00000001": 20, "a1/segments/00000002": 0, "a2/header": 30, "b/x": 1, "top": 3}
	for n, sz := range objs {
		put(t, tr, n, randomBytes(sz, 1), int64(sz))
	}
	cases := map[string][]string{
		"":            {"a1/header", "a1/segments/00000001", "a1/segments/00000002", "a2/header", "b/x", "top"},
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
	// fn's error ends the listing and is returned as it is, from the root
	// (where some transports list folders at once) and from a folder; fn
	// is not called again once it failed.
	errStop := errors.New("stop")
	for _, prefix := range []string{"", "a1/"} {
		var mu sync.Mutex
		calls := 0
		err := tr.List(context.Background(), prefix, func(shipper.ObjectInfo) error {
			mu.Lock()
			defer mu.Unlock()
			calls++
			return errStop
		})
		if !errors.Is(err, errStop) || calls != 1 {
			t.Errorf("List(%q) returned %v after %d calls, want fn's error after 1", prefix, err, calls)
		}
	}
}

// testListFolders: a transport that lists folders names each folder at
// the root once, however deep what it holds, and no object at the root;
// fn's error ends the listing and is returned as it is. A wrapper of a
// transport that does not fails with errors.ErrUnsupported first.
func testListFolders(t *testing.T, tr shipper.Transport) {
	fl, ok := tr.(shipper.FolderLister)
	if !ok {
		t.Logf("%T does not list folders", tr)
		return
	}
	for _, n := range []string{"top", "a/manifest", "a/header", "a/segments/00000001", "b/header", "b/segments/x/deep", "c/d/e"} {
		put(t, tr, n, randomBytes(len(n), 2), int64(len(n)))
	}
	var got []string
	err := fl.ListFolders(context.Background(), func(name string) error { got = append(got, name); return nil })
	switch {
	case errors.Is(err, errors.ErrUnsupported) && got == nil:
		t.Logf("%T wraps a transport that does not list folders", tr)
		return
	case err != nil:
		t.Fatal(err)
	}
	sort.Strings(got)
	if want := []string{"a", "b", "c"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("ListFolders = %q, want %q", got, want)
	}
	errStop := errors.New("stop")
	calls := 0
	err = fl.ListFolders(context.Background(), func(string) error { calls++; return errStop })
	if !errors.Is(err, errStop) || calls != 1 {
		t.Errorf("ListFolders returned %v after %d calls, want fn's error after 1", err, calls)
	}
}

// testListSkipping: a transport that lists while skipping folders lists
// what List lists but the objects under those folders, at any depth; fn's
// error ends the listing. A wrapper of a transport that does not fails
// with errors.ErrUnsupported first.
func testListSkipping(t *testing.T, tr shipper.Transport) {
	sl, ok := tr.(shipper.SkippingLister)
	if !ok {
		t.Logf("%T does not list while skipping folders", tr)
		return
	}
	for _, n := range []string{"top", "a/header", "a/keys/0000", "a/segments/00000001", "a/segments/x/deep", "a/bases/b/keys/0000", "ab/x", "b/segments/00000001"} {
		put(t, tr, n, randomBytes(len(n), 3), int64(len(n)))
	}
	cases := []struct {
		prefix string
		skip   []string
		want   []string
	}{
		{"a/", []string{"a/segments"}, []string{"a/bases/b/keys/0000", "a/header", "a/keys/0000"}},
		{"a/", []string{"a/segments", "a/bases/b"}, []string{"a/header", "a/keys/0000"}},
		{"", []string{"a/segments", "b"}, []string{"a/bases/b/keys/0000", "a/header", "a/keys/0000", "ab/x", "top"}},
		{"a", []string{"a"}, []string{"ab/x"}},
		{"a/segments/", []string{"a/segments/x"}, []string{"a/segments/00000001"}},
	}
	for _, c := range cases {
		var got []string
		err := sl.ListSkipping(context.Background(), c.prefix, func(f string) bool { return slices.Contains(c.skip, f) },
			func(oi shipper.ObjectInfo) error {
				got = append(got, oi.Name)
				if oi.Size != int64(len(oi.Name)) {
					t.Errorf("ListSkipping: %s has size %d, want %d", oi.Name, oi.Size, len(oi.Name))
				}
				return nil
			})
		if errors.Is(err, errors.ErrUnsupported) && got == nil {
			t.Logf("%T wraps a transport that does not list while skipping folders", tr)
			return
		}
		sort.Strings(got)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("ListSkipping(%q, skip %q) = %q, %v; want %q", c.prefix, c.skip, got, err, c.want)
		}
	}
	errStop := errors.New("stop")
	if err := sl.ListSkipping(context.Background(), "", func(string) bool { return false }, func(shipper.ObjectInfo) error { return errStop }); !errors.Is(err, errStop) {
		t.Errorf("ListSkipping returned %v, want fn's error", err)
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

// runPutNew checks shipper.ExclusiveCreator: PutNew creates an object only
// where none exists, never changes an existing one, and of racing calls for
// one name at most one wins. A transport without PutNew skips it.
func runPutNew(t *testing.T, newTransport func(t *testing.T) shipper.Transport) {
	tests := []struct {
		name string
		fn   func(t *testing.T, tr shipper.Transport, ec shipper.ExclusiveCreator)
	}{
		{"CreatesAndRefuses", testPutNewRefuses},
		{"ExistingFromPut", testPutNewOverPut},
		{"Race", testPutNewRace},
		{"FailedLeavesNothing", testPutNewFailed},
		{"InvalidNames", testPutNewInvalidNames},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTransport(t)
			t.Cleanup(func() { tr.Close() })
			ec, ok := tr.(shipper.ExclusiveCreator)
			if !ok {
				t.Skipf("%T does not implement shipper.ExclusiveCreator", tr)
			}
			tc.fn(t, tr, ec)
		})
	}
}

func putNew(ec shipper.ExclusiveCreator, name string, data []byte, size int64) error {
	return ec.PutNew(context.Background(), name, bytes.NewReader(data), size)
}

func testPutNewRefuses(t *testing.T, tr shipper.Transport, ec shipper.ExclusiveCreator) {
	for i, n := range []int{0, 1, 4096, 8<<20 + 5} {
		for _, known := range []bool{true, false} {
			name := fmt.Sprintf("k/keys/%04d-%v", n, known)
			first, second := randomBytes(n, uint64(i)), randomBytes(n+1, uint64(i)+100)
			size, size2 := int64(n), int64(n+1)
			if !known {
				size, size2 = -1, -1
			}
			if err := putNew(ec, name, first, size); err != nil {
				t.Fatalf("PutNew(%q, %d bytes): %v", name, n, err)
			}
			if oi, err := tr.Stat(context.Background(), name); err != nil || oi.Size != int64(n) {
				t.Errorf("Stat(%q) after PutNew = %+v, %v; want size %d", name, oi, err, n)
			}
			err := putNew(ec, name, second, size2)
			if !errors.Is(err, shipper.ErrObjectExists) {
				t.Errorf("second PutNew(%q): err = %v, want ErrObjectExists", name, err)
			}
			if got := Get(t, tr, name, 0, -1); !bytes.Equal(got, first) {
				t.Errorf("%q: after the second PutNew it holds %d bytes, not the first %d", name, len(got), n)
			}
		}
	}
	// Once deleted, the name can be created again.
	if err := tr.Delete(context.Background(), "k/keys/0001-true"); err != nil {
		t.Fatal(err)
	}
	if err := putNew(ec, "k/keys/0001-true", []byte("again"), 5); err != nil {
		t.Errorf("PutNew after Delete: %v", err)
	}
	if n := len(listAll(t, tr, "k/")); n != 8 {
		t.Errorf("List shows %d objects, want 8", n)
	}
}

func testPutNewOverPut(t *testing.T, tr shipper.Transport, ec shipper.ExclusiveCreator) {
	put(t, tr, "k/keys/0000", []byte("written by Put"), -1)
	if err := putNew(ec, "k/keys/0000", []byte("new"), 3); !errors.Is(err, shipper.ErrObjectExists) {
		t.Errorf("PutNew over an object put by Put: err = %v, want ErrObjectExists", err)
	}
	if got := Get(t, tr, "k/keys/0000", 0, -1); string(got) != "written by Put" {
		t.Errorf("object holds %q, want what Put wrote", got)
	}
}

func testPutNewRace(t *testing.T, tr shipper.Transport, ec shipper.ExclusiveCreator) {
	const racers = 8
	var wg sync.WaitGroup
	errs := make([]error, racers)
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = putNew(ec, "k/keys/0000", randomBytes(300<<10, uint64(i)), 300<<10)
		}()
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("racers %d and %d both created the object", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, shipper.ErrObjectExists):
			t.Errorf("racer %d: %v, want ErrObjectExists", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no racer created the object")
	}
	if got := Get(t, tr, "k/keys/0000", 0, -1); !bytes.Equal(got, randomBytes(300<<10, uint64(winner))) {
		t.Errorf("the object does not hold the winner's content")
	}
	if n := len(listAll(t, tr, "")); n != 1 {
		t.Errorf("List shows %d objects after the race, want 1", n)
	}
}

func testPutNewFailed(t *testing.T, tr shipper.Transport, ec shipper.ExclusiveCreator) {
	data := randomBytes(100000, 9)
	if err := putNew(ec, "k/keys/0000", data, int64(len(data))+1); err == nil {
		t.Fatal("PutNew with fewer bytes than size succeeded")
	}
	assertAbsent(t, tr, "k/keys/0000")
	if err := putNew(ec, "k/keys/0000", data, int64(len(data))); err != nil {
		t.Errorf("PutNew after a failed one: %v", err)
	}
}

func testPutNewInvalidNames(t *testing.T, tr shipper.Transport, ec shipper.ExclusiveCreator) {
	for _, name := range []string{"", "/abs", "a/../b", ".hidden"} {
		if err := putNew(ec, name, nil, 0); err == nil {
			t.Errorf("PutNew(%q) succeeded, want an invalid name error", name)
		}
	}
}
