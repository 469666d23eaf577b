package sftp_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/coldship/coldship/shipper/sftp"
	"github.com/coldship/coldship/shipper/sftp/sftptest"
)

// TestChannelsThroughToxiproxy reaches a real sshd through toxiproxy
// adding 10 ms each way: the Transport measures the round trip, opens
// several SFTP channels on each SSH connection (which sshd's own log
// shows), and what goes up on all of them at once comes back bit-exact.
func TestChannelsThroughToxiproxy(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t, sftptest.Verbose())
	tp := sftptest.StartToxiproxy(t)
	addr := tp.Proxy("sshd", srv.SSHDAddr, 10*time.Millisecond)
	knownHosts := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(knownHosts, []byte(knownhosts.Line([]string{addr}, srv.HostKey)+"\n"), 0o600)
	var port int
	fmt.Sscanf(addr, "127.0.0.1:%d", &port)
	tr := dial(t, sftp.Config{
		User: srv.User, Host: "127.0.0.1", Port: port, Path: filepath.Join(srv.Root, "wan"),
		KeyFiles: []string{srv.ClientKeyFile}, KnownHosts: knownHosts, SSHConfig: "none",
	})
	st := tr.LinkStats()
	if st.RTT < 20*time.Millisecond || st.RTT > 200*time.Millisecond {
		t.Errorf("measured a round trip of %v through 20 ms of latency", st.RTT)
	}
	n := tr.Streams()
	if n < sftp.AutoStreams(20*time.Millisecond) {
		t.Errorf("%d streams at %v, want at least %d", n, st.RTT, sftp.AutoStreams(20*time.Millisecond))
	}

	// One object per stream, all at once: every channel carries one.
	ctx := context.Background()
	objects := make([][]byte, n)
	var wg sync.WaitGroup
	for i := range objects {
		objects[i] = randomBytes(2<<20 + i*4097)
		wg.Go(func() {
			name := fmt.Sprintf("s/segments/%08d", i+1)
			if err := tr.Put(ctx, name, bytes.NewReader(objects[i]), -1); err != nil {
				t.Errorf("Put %s: %v", name, err)
			}
		})
	}
	wg.Wait()
	for i := range objects {
		wg.Go(func() {
			name := fmt.Sprintf("s/segments/%08d", i+1)
			rc, err := tr.Open(ctx, name, 0, -1)
			if err != nil {
				t.Errorf("Open %s: %v", name, err)
				return
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			if err != nil || !bytes.Equal(got, objects[i]) {
				t.Errorf("%s: read back %d bytes (%v), want the %d put", name, len(got), err, len(objects[i]))
			}
		})
	}
	wg.Wait()

	st = tr.LinkStats()
	if st.Channels != n || st.Connections >= st.Channels {
		t.Errorf("LinkStats = %+v, want %d channels over fewer connections", st, n)
	}
	// What the server saw: SFTP sessions per SSH connection.
	perConn := srv.SessionsPerConnection()
	total, most := 0, 0
	for _, k := range perConn {
		total += k
		most = max(most, k)
	}
	if len(perConn) != st.Connections || total != n || most < 2 {
		t.Errorf("sshd saw %v sessions per connection (by client port), want %d sessions over %d connections, several on one", perConn, n, st.Connections)
	}
	t.Logf("round trip %v, %d channels over %d connections; sshd: %v", st.RTT, st.Channels, st.Connections, perConn)
}
