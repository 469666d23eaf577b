package guest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// DefaultSize is the size of a guest's root filesystem unless Spec says
// otherwise: room for busybox (2 MiB), a few MiB of data and ext4's journal.
const DefaultSize = 32 << 20

// Spec is what a guest holds.
type Spec struct {
	Token string // printed after the boot marker; letters, digits, '-' and '_' only
	Data  []byte // the contents of /data, whose digest the guest prints
	Size  int64  // of the root filesystem in bytes; 0 means DefaultSize
}

// Marker is the line the guest's init prints first, before the token.
const Marker = "COLDSHIP-BOOT-OK"

// DigestLabel starts the line that carries the SHA-256 of /data.
const DigestLabel = "COLDSHIP-DATA-SHA256"

// initScript is the guest's /sbin/init. The stock Debian initramfs has
// already moved /dev, /proc, /sys and /run into the root; the mounts are
// there for an initrd that did not. Whatever fails, the machine powers off
// (or, should poweroff fail, init exits, the kernel panics and panic=-1
// with -no-reboot ends QEMU).
const initScript = `#!/bin/busybox sh
export PATH=/bin
[ -e /proc/self ] || busybox mount -t proc proc /proc
[ -e /sys/kernel ] || busybox mount -t sysfs sysfs /sys
echo "%s %s"
set -- $(busybox sha256sum /data) failed
echo "%s $1"
busybox sync
busybox mount -o remount,ro /
busybox poweroff -f
echo o > /proc/sysrq-trigger
`

// epoch is the time stamped on every inode and on the filesystem, so that
// two guests built from specs that differ only in Data differ only in the
// blocks of /data and its inode: an overlay of one on the other is small.
var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// Build writes the guest's root filesystem as a raw ext4 image at path,
// without mounting anything: the tree is laid out in a scratch directory
// beside path and copied in by mkfs.ext4 -d. The same Token and Size give
// the same filesystem UUID, so builds differing only in Data share their
// layout.
func (h Host) Build(ctx context.Context, path string, s Spec) error {
	if !validToken(s.Token) {
		return fmt.Errorf("guest token %q: want letters, digits, '-' or '_'", s.Token)
	}
	size := s.Size
	if size == 0 {
		size = DefaultSize
	}
	tree, err := os.MkdirTemp(filepath.Dir(path), ".guest-tree-")
	if err != nil {
		return fmt.Errorf("build guest %s: %w", path, err)
	}
	defer os.RemoveAll(tree)
	if err := h.layout(tree, s); err != nil {
		return fmt.Errorf("build guest %s: %w", path, err)
	}
	id := fsUUID(s.Token)
	cmd := exec.CommandContext(ctx, h.Mkfs, "-q", "-F", "-t", "ext4", "-b", "4096", "-L", "coldship-guest",
		"-U", id, "-E", "hash_seed="+id+",root_owner=0:0", "-d", tree, path, fmt.Sprintf("%dk", size>>10))
	cmd.Env = append(os.Environ(), fmt.Sprintf("E2FSPROGS_FAKE_TIME=%d", epoch.Unix()))
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(path)
		return fmt.Errorf("mkfs.ext4 %s: %v\n%s", path, err, out)
	}
	if err := h.stampTimes(ctx, path, tree); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// stampTimes sets the change and access times of every inode copied from
// tree to epoch: mkfs.ext4 -d copies each file's ctime, which no one can
// set, and its atime, which reading a folder moves (relatime moves an atime
// that is not after the mtime), so two builds a second apart would differ
// in their inode tables.
func (h Host) stampTimes(ctx context.Context, img, tree string) error {
	var script strings.Builder
	err := filepath.WalkDir(tree, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(tree, p)
		for _, field := range []string{"ctime", "atime"} {
			fmt.Fprintf(&script, "set_inode_field %s %s @%d\n", filepath.Join("/", rel), field, epoch.Unix())
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("stamp inodes of %s: %w", img, err)
	}
	cmd := exec.CommandContext(ctx, h.Debugfs, "-w", "-f", "-", img)
	cmd.Stdin = strings.NewReader(script.String())
	cmd.Env = append(os.Environ(), fmt.Sprintf("E2FSPROGS_FAKE_TIME=%d", epoch.Unix()))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err = cmd.Run()
	// debugfs exits 0 when a command fails: anything but its banner is one.
	msg := strings.TrimSpace(stderr.String())
	if _, after, ok := strings.Cut(msg, "\n"); ok || !strings.HasPrefix(msg, "debugfs ") {
		if ok {
			msg = after
		}
		err = errors.Join(err, errors.New(msg))
	}
	if err != nil {
		return fmt.Errorf("debugfs set times in %s: %w", img, err)
	}
	return nil
}

// layout writes the guest's files under tree.
func (h Host) layout(tree string, s Spec) error {
	for _, d := range []string{"bin", "sbin", "dev", "proc", "sys", "run", "tmp", "root"} {
		if err := os.Mkdir(filepath.Join(tree, d), 0o755); err != nil {
			return err
		}
	}
	bb, err := os.ReadFile(h.Busybox)
	if err != nil {
		return fmt.Errorf("read busybox: %w", err)
	}
	init := fmt.Sprintf(initScript, Marker, s.Token, DigestLabel)
	files := []struct {
		rel  string
		data []byte
		mode os.FileMode
	}{
		{"bin/busybox", bb, 0o755},
		{"sbin/init", []byte(init), 0o755},
		{"data", s.Data, 0o644},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(tree, f.rel), f.data, f.mode); err != nil {
			return err
		}
	}
	return filepath.WalkDir(tree, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Chtimes(p, epoch, epoch)
	})
}

// Digest is the hex SHA-256 of data, as the guest prints it.
func Digest(data []byte) string {
	return fmt.Sprintf("%x", sha256.Sum256(data))
}

// fsUUID derives the filesystem's UUID (and directory hash seed) from the
// token, so that it is the same for every build of one guest.
func fsUUID(token string) string {
	b := sha256.Sum256([]byte("coldship-guest:" + token))
	b[6] = b[6]&0x0f | 0x50 // version 5 style: name-based
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func validToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
