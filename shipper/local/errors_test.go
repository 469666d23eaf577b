package local

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coldship/coldship/shipper"
)

// TestErrorsNameThePathOnce checks that an error names the object's path
// once ("open D/x: no such file or directory", not "open D/x: open D/x:
// ..."), and is still classified.
func TestErrorsNameThePathOnce(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	tr, err := New(filepath.Join(root, "dest"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "dest", "ship", "keys"))
	p := filepath.Join(root, "dest", "ship", "segments", "00000004")
	inTheWay := filepath.Join(root, "dest", "ship", "keys") // a file where a folder should be
	for _, tc := range []struct {
		op   string
		err  error
		path string
		want error
	}{
		{"Open", func() error { _, err := tr.Open(ctx, "ship/segments/00000004", 0, -1); return err }(), p, shipper.ErrNotFound},
		{"Stat", func() error { _, err := tr.Stat(ctx, "ship/segments/00000004"); return err }(), p, shipper.ErrNotFound},
		{"Put", tr.Put(ctx, "ship/keys/0000", strings.NewReader("k"), 1), inTheWay, shipper.ErrPermanent},
	} {
		if !errors.Is(tc.err, tc.want) || strings.Count(tc.err.Error(), tc.path) != 1 {
			t.Errorf("%s: %v; want %v naming %s once", tc.op, tc.err, tc.want, tc.path)
		}
	}
}
