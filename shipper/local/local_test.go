package local_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/local"
	"github.com/coldship/coldship/shipper/shippertest"
)

func TestConformance(t *testing.T) {
	shippertest.Run(t, func(t *testing.T) shipper.Transport {
		tr, err := local.New(t.TempDir() + "/dest")
		if err != nil {
			t.Fatal(err)
		}
		return tr
	})
}

// TestConformanceSymlinkedRoot: a destination that is a symlink to a
// folder (/backup -> /mnt/nas/backup) works as the folder does; its
// listing followed no link and found nothing.
func TestConformanceSymlinkedRoot(t *testing.T) {
	shippertest.Run(t, func(t *testing.T) shipper.Transport {
		dir := t.TempDir()
		if err := os.Mkdir(filepath.Join(dir, "real"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(dir, "real"), filepath.Join(dir, "dest")); err != nil {
			t.Fatal(err)
		}
		tr, err := local.New(filepath.Join(dir, "dest"))
		if err != nil {
			t.Fatal(err)
		}
		return tr
	})
}
