package shipper

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
)

// listOnly lists its names, as a transport that cannot skip folders.
type listOnly struct {
	Transport
	names []string
}

func (l listOnly) List(_ context.Context, prefix string, fn func(ObjectInfo) error) error {
	for _, n := range l.names {
		if strings.HasPrefix(n, prefix) {
			if err := fn(ObjectInfo{Name: n}); err != nil {
				return err
			}
		}
	}
	return nil
}

// TestListSkippingFallback: over a transport that only lists, listSkipping
// leaves out what is under the folders skipped, at any depth, and nothing
// else (a name that merely starts like a skipped folder stays).
func TestListSkippingFallback(t *testing.T) {
	tr := listOnly{names: []string{"id/header", "id/keys/0000", "id/segments/00000001", "id/segments/x/deep", "id/segmentsx", "id2/segments/00000001"}}
	var got []string
	err := listSkipping(context.Background(), tr, "id", func(f string) bool { return f == "id/segments" }, func(oi ObjectInfo) error {
		got = append(got, oi.Name)
		return nil
	})
	want := []string{"id/header", "id/keys/0000", "id/segmentsx", "id2/segments/00000001"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("listSkipping = %q, %v; want %q", got, err, want)
	}
	objects, err := listSigned(context.Background(), tr, "id")
	if err != nil || fmt.Sprint(objects) != "map[header:0 keys/0000:0 segmentsx:0]" {
		t.Errorf("listSigned = %v, %v", objects, err)
	}
}

// sizedObjects is a map of objects that records the folders listed and
// the objects looked up; a name ending in "/" is a folder.
type sizedObjects struct {
	Transport
	objects map[string]int64
	mu      sync.Mutex
	listed  []string
	stats   []string
}

func (s *sizedObjects) List(_ context.Context, prefix string, fn func(ObjectInfo) error) error {
	s.mu.Lock()
	s.listed = append(s.listed, prefix)
	s.mu.Unlock()
	for n, size := range s.objects {
		if strings.HasPrefix(n, prefix) && !strings.HasSuffix(n, "/") {
			if err := fn(ObjectInfo{Name: n, Size: size}); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *sizedObjects) Stat(_ context.Context, name string) (ObjectInfo, error) {
	s.mu.Lock()
	s.stats = append(s.stats, name)
	s.mu.Unlock()
	if _, ok := s.objects[name+"/"]; ok {
		return ObjectInfo{}, fmt.Errorf("stat %s: %w", name, ErrNotRegular)
	}
	size, ok := s.objects[name]
	if !ok {
		return ObjectInfo{}, fmt.Errorf("stat %s: %w", name, ErrNotFound)
	}
	return ObjectInfo{Name: name, Size: size}, nil
}

// TestObjectSizes: the sizes of the objects asked for are found, and those
// missing (or a folder in an object's place) are absent; a shipment's few
// objects are looked up one by one (one round trip for all, not a listing
// of its folder and then of each folder below), and a folder of more than
// lookupsPerFolder of them is listed on its own, never its parent.
func TestObjectSizes(t *testing.T) {
	for _, segs := range []int{3, lookupsPerFolder + 1} {
		tr := &sizedObjects{objects: map[string]int64{"id/header": 10, "id/keys/0000": 20, "id/keys/0001/": 0, "id/other": 5}}
		names := []string{"id/header", "id/keys/0000", "id/keys/0001", "id/missing"}
		want := map[string]int64{"id/header": 10, "id/keys/0000": 20}
		for i := 1; i <= segs; i++ {
			n := fmt.Sprintf("id/segments/%08d", i)
			names = append(names, n)
			if i != 2 {
				tr.objects[n] = int64(i)
				want[n] = int64(i)
			}
		}
		got, err := objectSizes(context.Background(), tr, names)
		if err != nil || !maps.Equal(got, want) {
			t.Errorf("%d segments: objectSizes = %v, %v; want %v", segs, got, err, want)
		}
		wantListed, wantStats := []string(nil), len(names)
		if segs > lookupsPerFolder {
			wantListed, wantStats = []string{"id/segments/"}, len(names)-segs
		}
		if !slices.Equal(tr.listed, wantListed) || len(tr.stats) != wantStats {
			t.Errorf("%d segments: listed %q and looked up %d objects; want %q listed and %d looked up", segs, tr.listed, len(tr.stats), wantListed, wantStats)
		}
	}
}
