package shipper_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/s3"
	"github.com/coldship/coldship/shipper/s3/s3test"
	"github.com/coldship/coldship/shipper/sftp"
	"github.com/coldship/coldship/shipper/sftp/sftptest"
)

// TestResumeRechecksOverTransports damages a segment that an interrupted
// send left at a real SFTP server (OpenSSH) and a real S3 server
// (versitygw): the rerun reads each reused segment back through the
// transport, finds the damaged one, and sends its blocks again.
func TestResumeRechecksOverTransports(t *testing.T) {
	for _, tc := range []struct {
		name string
		open func(t *testing.T) (shipper.Transport, string) // and the directory that holds its objects
	}{
		{"sftp", func(t *testing.T) (shipper.Transport, string) {
			t.Setenv("SSH_AUTH_SOCK", "")
			t.Setenv("HOME", t.TempDir())
			srv := sftptest.StartSSHD(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			tr, err := sftp.Dial(ctx, sftp.Config{User: srv.User, Host: srv.Host, Port: srv.Port, Path: filepath.Join(srv.Root, "dr"),
				KeyFiles: []string{srv.ClientKeyFile}, KnownHosts: srv.KnownHostsFile, SSHConfig: "none", Streams: 2})
			if err != nil {
				t.Fatal(err)
			}
			return tr, filepath.Join(srv.Root, "dr")
		}},
		{"s3", func(t *testing.T) (shipper.Transport, string) {
			srv := s3test.Start(t)
			srv.SetEnv(t)
			tr, err := s3.New(context.Background(), s3.Config{Bucket: srv.Bucket, Prefix: "dr"})
			if err != nil {
				t.Fatal(err)
			}
			return tr, filepath.Join(srv.Dir, srv.Bucket, "dr")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, root := tc.open(t)
			defer tr.Close()
			s := interruptOver(t, tr, 3)
			p := filepath.Join(root, s.ship, "segments", "00000002")
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/3] ^= 0x40
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			cnt := new(shipper.Counters)
			s.opts.Counters = cnt
			s.logs.Reset()
			res, err := shipper.Send(context.Background(), tr, s.sources, s.opts)
			if err != nil {
				t.Fatalf("rerun: %v\n%s", err, s.logs)
			}
			restore(t, tr, res.ID, s.id, s.data)
			journaled := 0
			fmt.Sscanf(s.logs.String(), "resuming shipment "+s.ship+": %d segments", &journaled)
			if !res.Resumed || !strings.Contains(s.logs.String(), "segments/00000002 of shipment "+s.ship+": its content differs") ||
				cnt.SegmentsReused.Load() != int64(journaled-1) {
				t.Errorf("resumed %v, %d segments reused; log:\n%s", res.Resumed, cnt.SegmentsReused.Load(), s.logs)
			}
		})
	}
}
