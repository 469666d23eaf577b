package shipper

import (
	"context"
	"fmt"
	"slices"
	"strings"
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
