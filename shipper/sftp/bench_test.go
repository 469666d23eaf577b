package sftp_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/coldship/coldship/shipper/sftp"
	"github.com/coldship/coldship/shipper/sftp/sftptest"
)

// benchRoot is where benchmark objects go: tmpfs if there is one, so that
// the benchmark measures SSH and SFTP rather than the disk behind fsync.
func benchRoot(b *testing.B, srv *sftptest.Server) string {
	dir, err := os.MkdirTemp("/dev/shm", "coldship-sftp-bench-")
	if err != nil {
		return srv.Root
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// unsized hides the length of a reader, as the send pipeline's io.Pipe does.
type unsized struct{ io.Reader }

// putParallel puts objects copies of data at once and deletes them again.
func putParallel(b *testing.B, tr *sftp.Transport, data []byte, objects int) {
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range objects {
		wg.Go(func() {
			name := fmt.Sprintf("s/segments/%08d", i)
			if err := tr.Put(ctx, name, unsized{bytes.NewReader(data)}, -1); err != nil {
				b.Error(err)
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	for i := range objects {
		tr.Delete(ctx, fmt.Sprintf("s/segments/%08d", i))
	}
	b.StartTimer()
}

// BenchmarkPut puts 256 MiB objects straight to sshd over loopback: one
// object on one connection, then four objects on one and on four
// connections.
func BenchmarkPut(b *testing.B) {
	b.Setenv("SSH_AUTH_SOCK", "")
	srv := sftptest.StartSSHD(b)
	root := benchRoot(b, srv)
	data := randomBytes(256 << 20)
	for _, tc := range []struct{ streams, objects int }{{1, 1}, {1, 4}, {4, 4}} {
		b.Run(fmt.Sprintf("streams=%d/objects=%d", tc.streams, tc.objects), func(b *testing.B) {
			cfg := sftp.Config{
				User: srv.User, Host: srv.Host, Port: srv.SSHDPort, Path: root,
				KeyFiles: []string{srv.ClientKeyFile}, KnownHosts: srv.KnownHostsFile,
				SSHConfig: "none", Streams: tc.streams,
			}
			tr := dial(b, cfg)
			b.SetBytes(int64(len(data) * tc.objects))
			for b.Loop() {
				putParallel(b, tr, data, tc.objects)
			}
		})
	}
}

// BenchmarkStreams puts one 64 MiB object per stream (SFTP channel) at once through
// the forwarder's delay line, which makes every round trip take rtt longer
// without limiting bandwidth: the flow-control windows of SSH are then the
// limit, as on a long fat link. It is the measurement behind
// AutoStreams.
func BenchmarkStreams(b *testing.B) {
	b.Setenv("SSH_AUTH_SOCK", "")
	srv := sftptest.StartSSHD(b)
	root := benchRoot(b, srv)
	data := randomBytes(64 << 20)
	for _, rtt := range []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond} {
		for _, streams := range []int{1, 2, 4, 8, 16} {
			b.Run(fmt.Sprintf("rtt=%v/streams=%d", rtt, streams), func(b *testing.B) {
				srv.Forwarder().SetDelay(rtt / 2)
				defer srv.Forwarder().SetDelay(0)
				cfg := sftp.Config{
					User: srv.User, Host: srv.Host, Port: srv.Port, Path: root,
					KeyFiles: []string{srv.ClientKeyFile}, KnownHosts: srv.KnownHostsFile,
					SSHConfig: "none", Streams: streams,
				}
				tr := dial(b, cfg)
				b.SetBytes(int64(len(data) * streams))
				for b.Loop() {
					putParallel(b, tr, data, streams)
				}
			})
		}
	}
}

// BenchmarkOpen reads a 256 MiB object straight from sshd over loopback.
func BenchmarkOpen(b *testing.B) {
	b.Setenv("SSH_AUTH_SOCK", "")
	srv := sftptest.StartSSHD(b)
	root := benchRoot(b, srv)
	data := randomBytes(256 << 20)
	cfg := sftp.Config{
		User: srv.User, Host: srv.Host, Port: srv.SSHDPort, Path: root,
		KeyFiles: []string{srv.ClientKeyFile}, KnownHosts: srv.KnownHostsFile,
		SSHConfig: "none", Streams: 1,
	}
	tr := dial(b, cfg)
	ctx := context.Background()
	if err := tr.Put(ctx, "obj", bytes.NewReader(data), int64(len(data))); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		rc, err := tr.Open(ctx, "obj", 0, -1)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil || n != int64(len(data)) {
			b.Fatalf("read %d bytes: %v", n, err)
		}
	}
}
