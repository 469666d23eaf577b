package sftp_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/sftp"
	"github.com/coldship/coldship/shipper/sftp/sftptest"
)

// fsyncs counts the syncs sshd's SFTP server logged of the temporaries of
// object base.
func fsyncs(srv *sftptest.Server, base string) int {
	re := regexp.MustCompile(`fsync "[^"]*/\.` + regexp.QuoteMeta(base) + `\.tmp-[0-9a-f]{12}"`)
	return len(re.FindAllString(srv.RequestLog(), -1))
}

// TestEarlySync checks, in the real SFTP server's own log, that a long
// transfer over many streams asks the server to write its data out while
// it goes (so that the syncs at the end of a shipment find little left),
// and that with few streams (at most 4) a segment gets its one sync at
// the end only.
func TestEarlySync(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t, sftptest.LogRequests())
	ctx := context.Background()
	data := randomBytes(24 << 20)
	for _, tc := range []struct {
		streams  int
		min, max int
	}{
		{32, 3, 7}, // every 4 MiB: up to 5 on the way, then the put's own
		{4, 1, 1},  // few streams: the put's own only
	} {
		tr := dial(t, config(srv, "early", tc.streams))
		name := fmt.Sprintf("s/segments/%08d", tc.streams)
		if err := tr.Put(ctx, name, bytes.NewReader(data), -1); err != nil {
			t.Fatalf("Put: %v", err)
		}
		got, err := os.ReadFile(filepath.Join(srv.Root, "early", name))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d streams: the object read back differs (%v)", tc.streams, err)
		}
		// The early syncs run beside the put: the last may be logged
		// just after it returns.
		base := filepath.Base(name)
		n := fsyncs(srv, base)
		for deadline := time.Now().Add(5 * time.Second); n < tc.min && time.Now().Before(deadline); n = fsyncs(srv, base) {
			time.Sleep(20 * time.Millisecond)
		}
		if n < tc.min || n > tc.max {
			t.Errorf("%d streams: the server synced the temporary of a 24 MiB put %d times, want %d to %d\n%s",
				tc.streams, n, tc.min, tc.max, srv.RequestLog())
		}
	}
}

// TestPutGated checks that an object put with PutGated is written and
// synced at once but appears under its name only once ready returns nil,
// and that a failed ready leaves nothing behind and comes back as it was.
func TestPutGated(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t, sftptest.LogRequests())
	tr := dial(t, config(srv, "gated", 2))
	ctx := context.Background()
	dir := filepath.Join(srv.Root, "gated", "s")
	data := randomBytes(3000)

	release := make(chan struct{})
	called := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- tr.PutGated(ctx, "s/manifest", bytes.NewReader(data), int64(len(data)), func() error {
			close(called)
			<-release
			return nil
		})
	}()
	select {
	case <-called:
	case err := <-done:
		t.Fatalf("PutGated returned before asking whether it may publish: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("PutGated never asked whether it may publish")
	}
	if _, err := tr.Stat(ctx, "s/manifest"); !errors.Is(err, shipper.ErrNotFound) {
		t.Errorf("Stat before ready returned: %v, want not found", err)
	}
	if n := fsyncs(srv, "manifest"); n != 1 {
		t.Errorf("when ready was called the server had synced the temporary %d times, want 1", n)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("PutGated: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "manifest")); err != nil || !bytes.Equal(got, data) {
		t.Errorf("the object read back differs (%v)", err)
	}

	errLate := errors.New("the inventory did not land")
	err := tr.PutGated(ctx, "s/other", bytes.NewReader(data), int64(len(data)), func() error { return errLate })
	if err != errLate {
		t.Errorf("PutGated with a failing ready returned %v, want ready's error as it is", err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != "manifest" {
			t.Errorf("a failed PutGated left %s", e.Name())
		}
	}
	// The session is still good.
	rc, err := tr.Open(ctx, "s/manifest", 0, -1)
	if err != nil {
		t.Fatalf("Open after a failed PutGated: %v", err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, data) {
		t.Error("read back after a failed PutGated differs")
	}
}

var _ shipper.GatedPutter = (*sftp.Transport)(nil)
