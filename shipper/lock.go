package shipper

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// ErrLocked means another run holds the lock of a destination (or of a
// restore directory) and the wait allowed for it ran out.
var ErrLocked = errors.New("locked by another coldship run")

// RunLock is an exclusive advisory lock (flock) on a file, so that two
// unattended runs for the same destination never overlap: a nightly send
// that runs long does not meet the next one, nor a prune. The kernel
// releases it when the process dies, so a crash never leaves a stale lock.
type RunLock struct {
	f *os.File
}

// DestLockPath names the lock file of destination dest in stateDir.
func DestLockPath(stateDir, dest string) string {
	h := sha256.Sum256([]byte(dest))
	return filepath.Join(stateDir, "locks", hex.EncodeToString(h[:16])+".lock")
}

// AcquireLock takes the lock at path for what (a description such as
// "destination s3://b/p"), waiting up to wait for another holder to let go.
// With wait 0 it fails at once. The error names the holder's pid when known.
func AcquireLock(ctx context.Context, path, what string, wait time.Duration) (*RunLock, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("lock %s: %w", what, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", what, err)
	}
	deadline := time.Now().Add(wait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", what, err)
		}
		if !time.Now().Before(deadline) {
			holder := lockHolder(path)
			f.Close()
			if wait > 0 {
				return nil, fmt.Errorf("%s is in use by another coldship run%s; gave up after --lock-wait %s: %w", what, holder, wait, ErrLocked)
			}
			return nil, fmt.Errorf("%s is in use by another coldship run%s (wait for it with --lock-wait DURATION): %w", what, holder, ErrLocked)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(min(100*time.Millisecond, time.Until(deadline))):
		}
	}
	// Tell a run that finds the lock taken who holds it.
	if err := f.Truncate(0); err == nil {
		fmt.Fprintf(f, "pid %d since %s\n", os.Getpid(), time.Now().UTC().Format(time.RFC3339))
	}
	return &RunLock{f: f}, nil
}

// lockHolder describes the holder recorded in a lock file, as " (pid N
// since T)", or "" when unknown.
func lockHolder(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	s := strings.TrimSpace(string(b))
	if !strings.HasPrefix(s, "pid ") || len(s) > 80 {
		return ""
	}
	return " (" + s + ")"
}

// Release lets the lock go. The lock file stays: removing it would race
// with a run that has it open.
func (l *RunLock) Release() {
	if l == nil || l.f == nil {
		return
	}
	l.f.Truncate(0)
	syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	l.f.Close()
	l.f = nil
}
