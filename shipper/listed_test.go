package shipper_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/internal/vmtest"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/local"
)

// TestSendSourceChangedSinceListed: an overlay rebased onto another
// backing file (qemu-img rebase -u) after the send listed its chain and
// read its header would ship pointing at the wrong base once restored:
// the send fails as a changed source, naming it, and the destination
// holds no shipment.
func TestSendSourceChangedSinceListed(t *testing.T) {
	dir := t.TempDir()
	base1, base2, top := filepath.Join(dir, "base1.qcow2"), filepath.Join(dir, "base2.qcow2"), filepath.Join(dir, "top.qcow2")
	vmtest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", base1, "4M")
	vmtest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", base2, "4M")
	vmtest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base1, "-F", "qcow2", top)
	sources, err := archive.CollectSources([]string{top})
	if err != nil {
		t.Fatal(err)
	}
	if sources, err = archive.AddBackingChains(sources); err != nil {
		t.Fatal(err)
	}
	if len(sources) != 2 {
		t.Fatalf("sources %v, want the overlay and its base", sources)
	}
	vmtest.Run(t, "qemu-img", "rebase", "-u", "-f", "qcow2", "-b", base2, "-F", "qcow2", top)

	dest := filepath.Join(dir, "dest")
	tr, _ := local.New(dest)
	_, rcpt := newIdentity(t)
	_, err = shipper.Send(context.Background(), tr, sources, shipper.SendOptions{
		Recipients: []age.Recipient{rcpt}, BlockSize: 64 << 10, Jobs: 2, Streams: 1,
	})
	if !errors.Is(err, shipper.ErrSourceChanged) || !strings.Contains(err.Error(), top) {
		t.Fatalf("send: %v, want %s changed", err, top)
	}
	if left, _ := os.ReadDir(dest); len(left) != 0 {
		t.Errorf("left at the destination: %v", left)
	}
}
