package archive

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestSourceLinkToFolder: a SOURCE that is a symbolic link to a folder is
// followed and ships under the link's name, as a link to a file does;
// inside a folder a link or a FIFO is refused, named in words.
func TestSourceLinkToFolder(t *testing.T) {
	dir := t.TempDir()
	vm := filepath.Join(dir, "vms", "web01")
	os.MkdirAll(vm, 0o750)
	os.WriteFile(filepath.Join(vm, "disk.img"), []byte("data"), 0o600)
	link := filepath.Join(dir, "current")
	if err := os.Symlink(vm, link); err != nil {
		t.Fatal(err)
	}
	srcs, err := CollectSources([]string{link})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range srcs {
		names = append(names, s.Name)
	}
	if got := strings.Join(names, " "); got != "current current/disk.img" {
		t.Errorf("a link to a folder ships %q, want the folder under the link's name", got)
	}

	os.Symlink("disk.img", filepath.Join(vm, "alias.img"))
	if _, err := CollectSources([]string{vm}); err == nil || !strings.Contains(err.Error(), "a symbolic link is not supported") {
		t.Errorf("a link inside a folder: %v", err)
	}
	os.Remove(filepath.Join(vm, "alias.img"))
	if err := syscall.Mkfifo(filepath.Join(vm, "pipe"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := CollectSources([]string{vm}); err == nil || !strings.Contains(err.Error(), "a named pipe (FIFO) is not supported") {
		t.Errorf("a FIFO inside a folder: %v", err)
	}
}
