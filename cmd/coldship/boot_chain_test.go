package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/coldship/coldship/internal/guest"
)

// TestBootRestoredOverlay ships a guest whose disk is a qcow2 overlay on a
// base image, naming only the overlay: coldship must follow the chain, and
// the restored overlay must boot through its restored base, seeing the
// overlay's new data, although the base's source path no longer exists.
func TestBootRestoredOverlay(t *testing.T) {
	h := guest.Require(t)
	ctx := context.Background()
	dir := t.TempDir()
	token, oldData := newGuestData(t, 1<<20)
	_, newData := newGuestData(t, 1<<20)

	scratch := filepath.Join(dir, "scratch")
	siteA := filepath.Join(dir, "site-a")
	base := filepath.Join(siteA, "images", "base.qcow2")
	overlay := filepath.Join(siteA, "vm", "overlay.qcow2")
	for _, d := range []string{scratch, filepath.Dir(base), filepath.Dir(overlay)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	oldRaw, newRaw := filepath.Join(scratch, "old.raw"), filepath.Join(scratch, "new.raw")
	for _, g := range []struct {
		path string
		data []byte
	}{{oldRaw, oldData}, {newRaw, newData}} {
		if err := h.Build(ctx, g.path, guest.Spec{Token: token, Data: g.data}); err != nil {
			t.Fatal(err)
		}
	}
	// The base holds the old data; the overlay, referring to the base by
	// its absolute path as libvirt does, only the clusters that changed
	// (the guest builds deterministically, so those are /data's).
	if err := h.Qcow2(ctx, oldRaw, base); err != nil {
		t.Fatal(err)
	}
	if err := h.Overlay(ctx, base, oldRaw, newRaw, overlay); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command(h.QEMUImg, "compare", "-f", "raw", "-F", "qcow2", newRaw, overlay).CombinedOutput(); err != nil {
		t.Fatalf("the overlay does not read as the new guest: %v\n%s", err, b)
	}
	if b, err := exec.Command(h.QEMUImg, "compare", "-f", "raw", "-F", "qcow2", oldRaw, overlay).CombinedOutput(); err == nil {
		t.Fatalf("the overlay reads as the old guest: its data did not change\n%s", b)
	}
	bi, _ := os.Stat(base)
	oi, _ := os.Stat(overlay)
	t.Logf("base %d KiB, overlay %d KiB", bi.Size()>>10, oi.Size()>>10)
	os.RemoveAll(scratch)

	bootRestored(t, h, dir, siteA, overlay, "qcow2", token, guest.Digest(newData))
}
