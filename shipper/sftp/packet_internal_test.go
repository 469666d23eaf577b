package sftp

import (
	"bytes"
	"context"
	"crypto/rand"
	"path/filepath"
	"testing"

	"github.com/coldship/coldship/shipper/sftp/sftptest"
	"github.com/coldship/coldship/shipper/shippertest"
)

// TestOpenSSHPackets checks that OpenSSH's sftp-server gets the large read
// and write requests, and that an object of several of them, not a
// multiple of their size, goes up and comes back whole.
func TestOpenSSHPackets(t *testing.T) {
	srv := sftptest.StartSSHD(t)
	ctx := context.Background()
	tr, err := Dial(ctx, Config{
		User: srv.User, Host: srv.Host, Port: srv.Port, Path: filepath.Join(srv.Root, "packets"),
		KeyFiles: []string{srv.ClientKeyFile}, KnownHosts: srv.KnownHostsFile, SSHConfig: "none", Streams: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c, err := tr.streams[0].get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.packet != openSSHPacket || c.requests() != inFlightPerFile/openSSHPacket {
		t.Errorf("OpenSSH's sftp-server: %d-byte requests, %d in flight; want %d, %d", c.packet, c.requests(), openSSHPacket, inFlightPerFile/openSSHPacket)
	}
	data := make([]byte, 5*openSSHPacket+12345)
	rand.Read(data)
	for _, size := range []int64{int64(len(data)), -1} {
		if err := tr.Put(ctx, "obj", bytes.NewReader(data), size); err != nil {
			t.Fatalf("Put (size %d): %v", size, err)
		}
		if got := shippertest.Get(t, tr, "obj", 0, -1); !bytes.Equal(got, data) {
			t.Errorf("read back %d bytes, want the %d put", len(got), len(data))
		}
	}
}
