package sftp_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/sftp"
	"github.com/coldship/coldship/shipper/sftp/sftptest"
	"github.com/coldship/coldship/shipper/shippertest"
)

// isolate keeps the user's agent and ~/.ssh out of a test.
func isolate(t *testing.T) {
	t.Setenv("SSH_AUTH_SOCK", "")
	t.Setenv("HOME", t.TempDir())
}

// config returns a Config that reaches srv through its forwarder with the
// authorized key file and srv's known_hosts.
func config(srv *sftptest.Server, dir string, streams int) sftp.Config {
	return sftp.Config{
		User:       srv.User,
		Host:       srv.Host,
		Port:       srv.Port,
		Path:       filepath.Join(srv.Root, dir),
		KeyFiles:   []string{srv.ClientKeyFile},
		KnownHosts: srv.KnownHostsFile,
		SSHConfig:  "none",
		Streams:    streams,
	}
}

func dial(t testing.TB, cfg sftp.Config) *sftp.Transport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := sftp.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func TestConformance(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t)
	var n atomic.Int64
	for _, streams := range []int{1, 2} {
		t.Run(fmt.Sprintf("streams=%d", streams), func(t *testing.T) {
			shippertest.Run(t, func(t *testing.T) shipper.Transport {
				cfg := config(srv, fmt.Sprintf("dest%d", n.Add(1)), streams)
				return dial(t, cfg)
			})
		})
	}
}

func TestUnknownHost(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t)
	for _, tc := range []struct {
		name  string
		setup func(p string)
	}{
		{"empty known_hosts", func(p string) { os.WriteFile(p, nil, 0o600) }},
		{"missing known_hosts", func(p string) {}},
		{"other hosts only", func(p string) {
			_, other := sftptest.NewKeyFile(t, t.TempDir(), "k", nil)
			os.WriteFile(p, []byte(knownhosts.Line([]string{"example.com"}, other.PublicKey())+"\n"), 0o600)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config(srv, "d", 1)
			cfg.KnownHosts = filepath.Join(t.TempDir(), "known_hosts")
			tc.setup(cfg.KnownHosts)
			_, err := sftp.Dial(context.Background(), cfg)
			if !errors.Is(err, shipper.ErrAuth) {
				t.Fatalf("Dial to an unknown host: err = %v, want ErrAuth", err)
			}
			t.Log(err)
			for _, want := range []string{srv.HostKeyFingerprint, "ssh-ed25519", "--accept-new-host-key", "ssh-keyscan"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

func TestAcceptNewHostKey(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t)
	cfg := config(srv, "d", 2)
	cfg.KnownHosts = filepath.Join(t.TempDir(), "sub", "known_hosts") // directory created too
	cfg.AcceptNewHostKey = true
	var stderr bytes.Buffer
	cfg.Stderr = &stderr
	tr := dial(t, cfg)
	if err := tr.Put(context.Background(), "x/y", strings.NewReader("data"), 4); err != nil {
		t.Fatal(err)
	}
	tr.Close()

	data, err := os.ReadFile(cfg.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	want := knownhosts.Line([]string{srv.Addr}, srv.HostKey) + "\n"
	if string(data) != want {
		t.Errorf("known_hosts = %q, want %q (once, although 2 connections were made)", data, want)
	}
	if !strings.Contains(stderr.String(), "Permanently added") || !strings.Contains(stderr.String(), srv.HostKeyFingerprint) {
		t.Errorf("stderr = %q, want a notice with the fingerprint", stderr.String())
	}

	cfg.AcceptNewHostKey = false
	cfg.Stderr = nil
	dial(t, cfg)
}

func TestChangedHostKey(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t)
	_, impostor := sftptest.NewKeyFile(t, t.TempDir(), "k", nil)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecPub, err := ssh.NewPublicKey(&ecKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, line string
		want       string
	}{
		{"changed", knownhosts.Line([]string{srv.Addr}, impostor.PublicKey()), "REMOTE HOST IDENTIFICATION HAS CHANGED"},
		// Only the recorded key type is asked for, so a server without
		// it cannot present another one.
		{"other type", knownhosts.Line([]string{srv.Addr}, ecPub), "presents none of the host key types recorded"},
		{"revoked", "@revoked * " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(srv.HostKey))), "revoked"},
	} {
		for _, accept := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/accept=%v", tc.name, accept), func(t *testing.T) {
				cfg := config(srv, "d", 1)
				cfg.KnownHosts = filepath.Join(t.TempDir(), "known_hosts")
				content := "# comment\n" + tc.line + "\n"
				os.WriteFile(cfg.KnownHosts, []byte(content), 0o600)
				cfg.AcceptNewHostKey = accept
				_, err := sftp.Dial(context.Background(), cfg)
				if !errors.Is(err, shipper.ErrAuth) {
					t.Fatalf("Dial: err = %v, want ErrAuth", err)
				}
				t.Log(err)
				wants := []string{tc.want, cfg.KnownHosts + ":2", srv.HostKeyFingerprint}
				if tc.name == "other type" {
					wants = []string{tc.want, "ecdsa-sha2-nistp256"}
				}
				for _, want := range wants {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not mention %q", err, want)
					}
				}
				if data, _ := os.ReadFile(cfg.KnownHosts); string(data) != content {
					t.Errorf("known_hosts was modified: %q", data)
				}
			})
		}
	}
}

func TestWrongUserKey(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t)
	cfg := config(srv, "d", 1)
	cfg.KeyFiles[0], _ = sftptest.NewKeyFile(t, t.TempDir(), "id_ed25519", nil)
	_, err := sftp.Dial(context.Background(), cfg)
	if !errors.Is(err, shipper.ErrAuth) {
		t.Fatalf("Dial with an unauthorized key: err = %v, want ErrAuth", err)
	}
	t.Log(err)
	if !strings.Contains(err.Error(), cfg.KeyFiles[0]) {
		t.Errorf("error %q does not name the key file offered", err)
	}

	cfg.KeyFiles[0] = filepath.Join(t.TempDir(), "missing")
	if _, err := sftp.Dial(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("Dial with a missing --ssh-key: err = %v", err)
	}
}

func TestEncryptedKey(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t)
	pass := []byte("correct horse")
	keyFile, signer := sftptest.NewKeyFile(t, t.TempDir(), "id_ed25519", pass)
	srv.Authorize(signer.PublicKey())

	t.Run("prompted once", func(t *testing.T) {
		cfg := config(srv, "d", 3)
		cfg.KeyFiles = []string{keyFile}
		var prompts []string
		var mu sync.Mutex
		cfg.AskPass = func(prompt string) ([]byte, error) {
			mu.Lock()
			defer mu.Unlock()
			prompts = append(prompts, prompt)
			if len(prompts) == 1 {
				return []byte("wrong"), nil
			}
			return bytes.Clone(pass), nil
		}
		tr := dial(t, cfg)
		if err := tr.Put(context.Background(), "a", strings.NewReader("x"), 1); err != nil {
			t.Fatal(err)
		}
		if len(prompts) != 2 || !strings.Contains(prompts[0], keyFile) {
			t.Errorf("prompts = %q, want two (one wrong passphrase) naming %s", prompts, keyFile)
		}
	})
	// ssh_config's ConnectTimeout bounds the key exchange, not the person
	// typing the passphrase (as with OpenSSH).
	t.Run("slow typist, short ConnectTimeout", func(t *testing.T) {
		cfg := config(srv, "d", 1)
		cfg.KeyFiles = []string{keyFile}
		cfg.SSHConfig = sftp.WriteSSHConfig(t, "Host *\n  ConnectTimeout 1\n")
		cfg.AskPass = func(string) ([]byte, error) {
			time.Sleep(2500 * time.Millisecond)
			return bytes.Clone(pass), nil
		}
		tr := dial(t, cfg)
		if err := tr.Put(context.Background(), "b", strings.NewReader("x"), 1); err != nil {
			t.Fatal(err)
		}
	})
	// Time running out while the passphrase is typed is not the server
	// refusing the key (which would send the operator to authorized_keys).
	t.Run("passphrase too late", func(t *testing.T) {
		cfg := config(srv, "d", 1)
		cfg.KeyFiles = []string{keyFile}
		cfg.AskPass = func(string) ([]byte, error) {
			time.Sleep(4 * time.Second)
			return bytes.Clone(pass), nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		tr, err := sftp.Dial(ctx, cfg)
		if err == nil {
			tr.Close()
			t.Fatal("Dial succeeded after its deadline")
		}
		if errors.Is(err, shipper.ErrAuth) || strings.Contains(err.Error(), "did not accept") {
			t.Errorf("a deadline during authentication reported as a refused key: %v", err)
		}
	})
	t.Run("no terminal", func(t *testing.T) {
		cfg := config(srv, "d", 1)
		cfg.KeyFiles = []string{keyFile}
		_, err := sftp.Dial(context.Background(), cfg)
		if !errors.Is(err, shipper.ErrAuth) || !strings.Contains(err.Error(), "passphrase") {
			t.Errorf("Dial with an encrypted key and no AskPass: err = %v, want ErrAuth naming the passphrase", err)
		}
	})
	t.Run("not asked for a key the server refuses", func(t *testing.T) {
		other, _ := sftptest.NewKeyFile(t, t.TempDir(), "id_other", pass)
		cfg := config(srv, "d", 1)
		cfg.KeyFiles = []string{other, srv.ClientKeyFile}
		cfg.AskPass = func(string) ([]byte, error) {
			t.Error("AskPass called for a key the server does not accept")
			return nil, errors.New("no")
		}
		dial(t, cfg)
	})
}

func TestSSHConfig(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t)
	dir := t.TempDir()
	sshConfig := filepath.Join(dir, "config")
	os.WriteFile(sshConfig, []byte(fmt.Sprintf(`
Host backup-target
    HostName %s
    Port %d
    User %s
    IdentityFile %s
    UserKnownHostsFile %s

Host *
    IdentityFile %s
`, srv.Host, srv.Port, srv.User, srv.ClientKeyFile, srv.KnownHostsFile, filepath.Join(dir, "id_missing"))), 0o600)

	cfg, err := sftp.ParseURL("sftp://backup-target" + srv.Root + "/viaconfig")
	if err != nil {
		t.Fatal(err)
	}
	cfg.SSHConfig = sshConfig
	cfg.Streams = 1
	tr := dial(t, cfg)
	if err := tr.Put(context.Background(), "s/m", strings.NewReader("hello"), -1); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(srv.Root, "viaconfig", "s", "m")); err != nil || string(got) != "hello" {
		t.Errorf("object on the server = %q, %v", got, err)
	}
	if s := tr.String(); s != "sftp://"+srv.User+"@backup-target:"+fmt.Sprint(srv.Port)+srv.Root+"/viaconfig" {
		t.Errorf("String() = %q", s)
	}

	cfg.SSHConfig = filepath.Join(dir, "nonexistent")
	if _, err := sftp.Dial(context.Background(), cfg); err == nil {
		t.Error("Dial with a missing explicit ssh_config succeeded")
	}
}

func TestAgent(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t)

	keyring := agent.NewKeyring()
	data, err := os.ReadFile(srv.ClientKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := ssh.ParseRawPrivateKey(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := keyring.Add(agent.AddedKey{PrivateKey: priv}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var served atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			served.Add(1)
			go func() {
				defer c.Close()
				agent.ServeAgent(keyring, c)
			}()
		}
	}()
	t.Setenv("SSH_AUTH_SOCK", sock)

	cfg := config(srv, "d", 2)
	cfg.KeyFiles = nil // and HOME has no ~/.ssh
	tr := dial(t, cfg)
	if _, err := tr.Stat(context.Background(), "nothing"); !errors.Is(err, shipper.ErrNotFound) {
		t.Errorf("Stat over an agent-authenticated connection: %v", err)
	}
	// The second stream connects in the background.
	for deadline := time.Now().Add(20 * time.Second); served.Load() < 2 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if served.Load() < 2 {
		t.Errorf("agent served %d connections, want one per stream", served.Load())
	}
}

// cutReader calls cut once after n bytes.
type cutReader struct {
	r    io.Reader
	n    int64
	cut  func()
	done bool
}

func (c *cutReader) Read(p []byte) (int, error) {
	if !c.done && c.n <= 0 {
		c.done = true
		c.cut()
		time.Sleep(50 * time.Millisecond) // let the failure reach the client
	}
	m, err := c.r.Read(p)
	c.n -= int64(m)
	return m, err
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestConnectionCutDuringPut(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t)
	ctx := context.Background()
	for _, size := range []int64{-1, 32 << 20} {
		t.Run(fmt.Sprintf("size=%d", size), func(t *testing.T) {
			dir := fmt.Sprintf("cut%d", size)
			tr := dial(t, config(srv, dir, 1))
			data := randomBytes(32 << 20)
			r := &cutReader{r: bytes.NewReader(data), n: 8 << 20, cut: srv.CutConnections}
			err := tr.Put(ctx, "s/segments/00000001", r, size)
			if err == nil {
				t.Fatal("Put succeeded although its connection was cut")
			}
			t.Log(err)
			if errors.Is(err, shipper.ErrPermanent) || errors.Is(err, shipper.ErrAuth) {
				t.Errorf("Put over a cut connection: %v, want a transient error", err)
			}
			accepted := srv.Forwarder().Accepted()
			if _, err := tr.Stat(ctx, "s/segments/00000001"); !errors.Is(err, shipper.ErrNotFound) {
				t.Errorf("Stat after the failed Put: %v, want ErrNotFound", err)
			}
			if srv.Forwarder().Accepted() != accepted+1 {
				t.Errorf("Stat did not re-dial (%d connections accepted before, %d after)", accepted, srv.Forwarder().Accepted())
			}
			tr.List(ctx, "", func(oi shipper.ObjectInfo) error {
				t.Errorf("List shows %q after the failed Put", oi.Name)
				return nil
			})

			if err := tr.Put(ctx, "s/segments/00000001", bytes.NewReader(data), size); err != nil {
				t.Fatalf("Put after the cut: %v", err)
			}
			if got := shippertest.Get(t, tr, "s/segments/00000001", 0, -1); !bytes.Equal(got, data) {
				t.Fatalf("read back %d bytes, want the %d put", len(got), len(data))
			}
			entries, _ := os.ReadDir(filepath.Join(srv.Root, dir, "s", "segments"))
			for _, e := range entries {
				if e.Name() != "00000001" {
					t.Errorf("the server still holds %s after the connection came back", e.Name())
				}
			}
		})
	}
}

// dialNoticed starts sshd and dials it with streams streams, the
// transport's notices going to the buffer it returns.
func dialNoticed(t *testing.T, streams int) (*sftptest.Server, *sftp.Transport, *shippertest.Buffer) {
	t.Helper()
	isolate(t)
	srv := sftptest.StartSSHD(t)
	cfg := config(srv, "d", streams)
	stderr := new(shippertest.Buffer)
	cfg.Stderr = stderr
	return srv, dial(t, cfg), stderr
}

func TestConnectionCutDuringOpen(t *testing.T) {
	srv, tr, stderr := dialNoticed(t, 1)
	ctx := context.Background()
	data := randomBytes(16 << 20)
	if err := tr.Put(ctx, "obj", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	rc, err := tr.Open(ctx, "obj", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rc, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	srv.CutConnections()
	if _, err := io.Copy(io.Discard, rc); err == nil {
		t.Error("reading over a cut connection ended without an error")
	}
	rc.Close()
	rc, err = tr.Open(ctx, "obj", 5, -1)
	if err != nil {
		t.Fatalf("Open after the cut: %v", err)
	}
	defer rc.Close()
	if got, err := io.ReadAll(rc); err != nil || !bytes.Equal(got, data[5:]) {
		t.Errorf("read after the cut: %d bytes, err %v", len(got), err)
	}
	// An operator reading cron's mail learns why the run took longer.
	want := "notice: the connection to " + srv.Addr + " broke; connecting again\n"
	if got := stderr.String(); got != want {
		t.Errorf("stderr = %q, want %q", got, want)
	}
}

// TestConnectionCutNoticedOnce cuts both connections of a pool: each is
// dialled again, and the operator reads one notice of it, not one per
// connection.
func TestConnectionCutNoticedOnce(t *testing.T) {
	srv, tr, stderr := dialNoticed(t, 4)
	ctx := context.Background()
	putAll := func(round string) {
		t.Helper()
		var g errgroup.Group
		for i := range tr.Streams() {
			g.Go(func() error {
				data := randomBytes(4 << 20)
				put := func() error {
					return tr.Put(ctx, fmt.Sprintf("%s-%d", round, i), bytes.NewReader(data), int64(len(data)))
				}
				// A call that meets the cut before the connection's reader
				// noticed it fails, and is tried again after a pause, as
				// the send's retries do (with backoff): the next try may
				// meet another stream whose connection was cut and not
				// yet noticed.
				err := put()
				for try := 1; err != nil && try < 10; try++ {
					time.Sleep(time.Duration(try) * 50 * time.Millisecond)
					err = put()
				}
				return err
			})
		}
		if err := g.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	putAll("before")
	if st := tr.LinkStats(); st.Connections < 2 {
		t.Fatalf("%d connections, want at least 2 to cut", st.Connections)
	}
	srv.CutConnections()
	putAll("after")
	if st := tr.LinkStats(); st.Connections < 2 {
		t.Fatalf("%d connections after the cut, want every one dialled again", st.Connections)
	}
	want := "notice: the connection to " + srv.Addr + " broke; connecting again\n"
	if got := stderr.String(); got != want {
		t.Errorf("stderr = %q, want %q once", got, want)
	}
}

// TestServerAliveFromSSHConfig loses every byte on the link without
// closing it (a NAT that forgot the connection): ssh_config's
// ServerAliveInterval 2 and ServerAliveCountMax 3 find the connection dead
// within about 8 s and the call fails, where coldship's default (15 s, 3)
// would leave it waiting 15 to 60 s, past the call's 25 s deadline. (The
// margins leave room for a loaded machine.)
func TestServerAliveFromSSHConfig(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t)
	cfg := config(srv, "d", 1)
	cfg.SSHConfig = sftp.WriteSSHConfig(t, "Host *\n  ServerAliveInterval 2\n  ServerAliveCountMax 3\n")
	tr := dial(t, cfg)
	if err := tr.Put(context.Background(), "a", strings.NewReader("1"), 1); err != nil {
		t.Fatal(err)
	}
	srv.Forwarder().Blackhole(true)
	defer srv.Forwarder().Blackhole(false)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	_, err := tr.Stat(ctx, "a")
	if err == nil {
		t.Fatal("Stat over a link that loses everything succeeded")
	}
	if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("the dead connection was not found within 25 s: %v", err)
	}
}

// TestConnectTimeoutFromSSHConfig dials over a link that loses every
// byte: ssh_config's ConnectTimeout 2 gives up within 2 s, where
// coldship's default (30 s) would wait for the caller's 20 s.
func TestConnectTimeoutFromSSHConfig(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t)
	cfg := config(srv, "d", 1)
	cfg.SSHConfig = sftp.WriteSSHConfig(t, "Host *\n  ConnectTimeout 2\n")
	srv.Forwarder().Blackhole(true)
	defer srv.Forwarder().Blackhole(false)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tr, err := sftp.Dial(ctx, cfg)
	if err == nil {
		tr.Close()
		t.Fatal("Dial over a link that loses everything succeeded")
	}
	// Well before the caller's deadline (the default's deadline is the
	// caller's, reached at 20 s).
	if dl, _ := ctx.Deadline(); time.Until(dl) < 10*time.Second {
		t.Errorf("Dial did not give up within ConnectTimeout: %v", err)
	}
}

func TestServerRestart(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t)
	ctx := context.Background()
	tr := dial(t, config(srv, "d", 2))
	if err := tr.Put(ctx, "a", strings.NewReader("1"), 1); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	_, err := tr.Stat(ctx, "a")
	if err == nil {
		t.Fatal("Stat succeeded while sshd was down")
	}
	if errors.Is(err, shipper.ErrPermanent) || errors.Is(err, shipper.ErrAuth) || errors.Is(err, shipper.ErrNotFound) {
		t.Errorf("Stat while sshd is down: %v, want a transient error", err)
	}
	srv.Restart()
	for i := range 2 { // both streams re-dial
		if oi, err := tr.Stat(ctx, "a"); err != nil || oi.Size != 1 {
			t.Errorf("Stat %d after restart: %v, %v", i, oi, err)
		}
	}
	if err := tr.Put(ctx, "b", strings.NewReader("2"), 1); err != nil {
		t.Errorf("Put after restart: %v", err)
	}
}

func TestCancelledRedial(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t)
	tr := dial(t, config(srv, "d", 1))
	srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := tr.Stat(ctx, "a"); err == nil {
		t.Fatal("Stat succeeded while sshd was down")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Stat with a 100ms context took %v", d)
	}
}

func TestPermissionDenied(t *testing.T) {
	isolate(t)
	ctx := context.Background()
	t.Run("read-only server", func(t *testing.T) {
		srv := sftptest.StartSSHD(t, sftptest.ReadOnly())
		tr := dial(t, config(srv, "", 1))
		err := tr.Put(ctx, "s/obj", strings.NewReader("data"), 4)
		if !errors.Is(err, shipper.ErrPermanent) || !strings.Contains(err.Error(), "s/obj") {
			t.Errorf("Put to a read-only server: %v, want ErrPermanent naming the object", err)
		}
		t.Log(err)
	})
	// A directory of mode 0555, a read-only or full file system:
	// TestPermanentErrors.
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want sftp.Config
		err  bool
	}{
		{url: "sftp://host/backups", want: sftp.Config{Host: "host", Path: "/backups"}},
		{url: "sftp://alice@host:2222/srv/x/", want: sftp.Config{User: "alice", Host: "host", Port: 2222, Path: "/srv/x"}},
		{url: "sftp://[::1]:22/x", want: sftp.Config{Host: "::1", Port: 22, Path: "/x"}},
		{url: "sftp://bob@[2001:db8::1]/x", want: sftp.Config{User: "bob", Host: "2001:db8::1", Path: "/x"}},
		{url: "sftp://host/~/backups", want: sftp.Config{Host: "host", Path: "backups"}},
		{url: "sftp://host/~", want: sftp.Config{Host: "host", Path: ""}},
		{url: "sftp://host", want: sftp.Config{Host: "host"}},
		{url: "SFTP://Host/x", want: sftp.Config{Host: "Host", Path: "/x"}},
		{url: "sftp://user:secret@host/x", err: true},
		{url: "s3://bucket/x", err: true},
		{url: "sftp:///x", err: true},
		{url: "sftp://host:0/x", err: true},
		{url: "sftp://host:99999/x", err: true},
		{url: "sftp://host/x?y=1", err: true},
		{url: "/local/path", err: true},
	} {
		got, err := sftp.ParseURL(tc.url)
		if tc.err {
			if err == nil {
				t.Errorf("ParseURL(%q) = %+v, want an error", tc.url, got)
			} else if strings.Contains(err.Error(), "secret") {
				t.Errorf("ParseURL(%q) error reveals the password: %v", tc.url, err)
			}
			continue
		}
		type fields struct {
			user, host string
			port       int
			path       string
		}
		if err != nil || (fields{got.User, got.Host, got.Port, got.Path} != fields{tc.want.User, tc.want.Host, tc.want.Port, tc.want.Path}) {
			t.Errorf("ParseURL(%q) = %+v, %v; want %+v", tc.url, got, err, tc.want)
		}
	}
}

func TestAutoStreamsRule(t *testing.T) {
	floor := sftp.MinAutoStreams()
	if floor < 2 || floor > 4 || (runtime.NumCPU() >= 2 && runtime.NumCPU() <= 4 && floor != runtime.NumCPU()) {
		t.Errorf("MinAutoStreams() = %d with %d CPUs", floor, runtime.NumCPU())
	}
	// The bandwidth-delay product of what this machine feeds, in channels
	// of 1400 KiB per round trip.
	perSecond := 256 << 20 * runtime.NumCPU()
	channels := func(rtt time.Duration) int {
		return int((int64(perSecond)*rtt.Microseconds()/1e6 + 1400<<10 - 1) / (1400 << 10))
	}
	for _, tc := range []struct {
		rtt  time.Duration
		want int
	}{
		{0, floor}, {100 * time.Microsecond, floor}, {2 * time.Millisecond, floor},
		{20 * time.Millisecond, max(floor, channels(20*time.Millisecond))},
		{50 * time.Millisecond, min(max(floor, channels(50*time.Millisecond)), sftp.MaxAutoStreams)},
		{100 * time.Millisecond, min(channels(100*time.Millisecond), sftp.MaxAutoStreams)},
		{time.Second, sftp.MaxAutoStreams},
	} {
		if got := sftp.AutoStreams(tc.rtt); got != tc.want {
			t.Errorf("AutoStreams(%v) = %d, want %d", tc.rtt, got, tc.want)
		}
	}
	if runtime.NumCPU() == 2 {
		// The README's numbers: 2 CPUs, 50, 100 and 200 ms.
		for rtt, want := range map[time.Duration]int{50 * time.Millisecond: 19, 100 * time.Millisecond: 32, 200 * time.Millisecond: 32} {
			if got := sftp.AutoStreams(rtt); got != want {
				t.Errorf("AutoStreams(%v) on 2 CPUs = %d, want %d", rtt, got, want)
			}
		}
	}
}

func TestPlan(t *testing.T) {
	floor := sftp.MinAutoStreams()
	for _, tc := range []struct {
		streams int
		want    []int
	}{
		{1, []int{1}},
		{2, []int{1, 1}},
		{floor, repeat(1, floor)},
		{10, repeat(10/floor, floor)},
		{21, []int{7, 7, 7}},
		{37, []int{10, 9, 9, 9}},
		{40, []int{10, 10, 10, 10}},
		{64, []int{10, 9, 9, 9, 9, 9, 9}},
	} {
		if tc.streams == 10 && 10%floor != 0 {
			continue
		}
		if tc.streams == 21 && floor > 3 {
			continue
		}
		got := sftp.Plan(0, tc.streams, false)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("Plan(%d streams) = %v, want %v", tc.streams, got, tc.want)
		}
	}
	// Automatic: the streams AutoStreams says, never more than OpenSSH's
	// MaxSessions on one connection.
	for _, rtt := range []time.Duration{0, 30 * time.Millisecond, 100 * time.Millisecond, time.Second} {
		total := 0
		for _, n := range sftp.Plan(rtt, 0, false) {
			if n < 1 || n > 10 {
				t.Errorf("Plan(%v) puts %d channels on one connection", rtt, n)
			}
			total += n
		}
		if total != sftp.AutoStreams(rtt) {
			t.Errorf("Plan(%v) has %d streams, AutoStreams says %d", rtt, total, sftp.AutoStreams(rtt))
		}
	}
}

func repeat(v, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = v
	}
	return out
}

// TestAutoStreams lets Dial pick the streams from the round trip: few on
// loopback, more through a delay line, several channels to a connection.
func TestAutoStreams(t *testing.T) {
	srv := sftptest.StartSSHD(t)
	tr := dial(t, config(srv, "auto", 0))
	// The streams follow the round trip measured on the first connection
	// (a busy machine can take a few milliseconds to answer on loopback,
	// so no upper bound is asserted on it).
	if n, rtt := tr.Streams(), tr.LinkStats().RTT; n != sftp.AutoStreams(rtt) || n < sftp.MinAutoStreams() {
		t.Errorf("on loopback: %d streams for a measured round trip of %v, want %d", n, rtt, sftp.AutoStreams(rtt))
	}
	srv.Forwarder().SetDelay(10 * time.Millisecond) // 20 ms round trip
	defer srv.Forwarder().SetDelay(0)
	tr = dial(t, config(srv, "auto", 0))
	rtt := tr.LinkStats().RTT
	if rtt < 20*time.Millisecond {
		t.Errorf("at 20 ms RTT: measured %v", rtt)
	}
	if n := tr.Streams(); n != sftp.AutoStreams(rtt) || n < sftp.AutoStreams(20*time.Millisecond) {
		t.Errorf("at 20 ms RTT: %d streams for a measured round trip of %v, want %d (at least %d)", n, rtt, sftp.AutoStreams(rtt), sftp.AutoStreams(20*time.Millisecond))
	}
	if _, err := tr.Stat(context.Background(), "nothing"); !errors.Is(err, shipper.ErrNotFound) {
		t.Errorf("Stat: %v", err)
	}
}

// TestListSkippingReadsNoSkippedFolder: ListSkipping does not open the
// folders it skips (the server's own log shows which it opened), and
// lists what is beside them.
func TestListSkippingReadsNoSkippedFolder(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t, sftptest.LogRequests())
	tr := dial(t, config(srv, "skip", 1))
	ctx := context.Background()
	for _, name := range []string{"id/header", "id/keys/0000", "id/segments/00000001", "id/segments/00000002"} {
		if err := tr.Put(ctx, name, strings.NewReader(name), int64(len(name))); err != nil {
			t.Fatal(err)
		}
	}
	before := srv.RequestLog()
	var got []string
	err := tr.ListSkipping(ctx, "id/", func(f string) bool { return f == "id/segments" }, func(oi shipper.ObjectInfo) error {
		got = append(got, oi.Name)
		return nil
	})
	sort.Strings(got)
	if want := []string{"id/header", "id/keys/0000"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("ListSkipping = %q, %v; want %q", got, err, want)
	}
	log := strings.TrimPrefix(srv.RequestLog(), before)
	if !strings.Contains(log, "opendir") {
		t.Fatalf("the server logged no folder read:\n%s", log)
	}
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "opendir") && strings.Contains(line, "segments") {
			t.Errorf("ListSkipping read the folder it skips: %s", line)
		}
	}
}

// TestListFolders names the folders at the root, in one folder read (the
// server's own log shows no other folder opened), and skips files and
// temporaries; List still finds everything.
func TestListFolders(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t, sftptest.LogRequests())
	tr := dial(t, config(srv, "folders", 1))
	ctx := context.Background()
	for _, name := range []string{"top", "a/manifest", "a/header", "a/segments/00000001", "a/keys/0000", "b/header", "b/segments/x/deep"} {
		if err := tr.Put(ctx, name, strings.NewReader(name), int64(len(name))); err != nil {
			t.Fatal(err)
		}
	}
	os.Mkdir(filepath.Join(srv.Root, "folders", ".hidden"), 0o755)
	before := strings.Count(srv.RequestLog(), "opendir")
	var got []string
	if err := tr.ListFolders(ctx, func(name string) error { got = append(got, name); return nil }); err != nil {
		t.Fatal(err)
	}
	sort.Strings(got)
	if want := []string{"a", "b"}; !slices.Equal(got, want) {
		t.Errorf("ListFolders = %q, want %q", got, want)
	}
	if n := strings.Count(srv.RequestLog(), "opendir") - before; n != 1 {
		t.Errorf("ListFolders read %d folders, want 1\n%s", n, srv.RequestLog())
	}
	errStop := errors.New("stop")
	if err := tr.ListFolders(ctx, func(string) error { return errStop }); !errors.Is(err, errStop) {
		t.Errorf("ListFolders returned %v, want fn's error", err)
	}
	var all []string
	if err := tr.List(ctx, "", func(oi shipper.ObjectInfo) error { all = append(all, oi.Name); return nil }); err != nil || len(all) != 7 {
		t.Errorf("List = %q (%v), want all 7", all, err)
	}
}

// TestAheadLinks checks the connections dialled before the round trip is
// measured: from the handshake's duration, never more than the plan for
// the round trip it suggests would have, and none for one stream.
func TestAheadLinks(t *testing.T) {
	for _, tc := range []struct {
		handshake time.Duration
		streams   int
		tunnelled bool
	}{
		{40 * time.Millisecond, 0, false},
		{650 * time.Millisecond, 0, false},
		{1300 * time.Millisecond, 0, false},
		{10 * time.Second, 0, false},
		{650 * time.Millisecond, 1, false},
		{650 * time.Millisecond, 4, true},
	} {
		got := sftp.AheadLinks(tc.handshake, tc.streams, tc.tunnelled)
		rtt := tc.handshake / 8
		if want := len(sftp.Plan(rtt, tc.streams, tc.tunnelled)) - 1; got != want {
			t.Errorf("AheadLinks(%v, %d, %v) = %d, want %d", tc.handshake, tc.streams, tc.tunnelled, got, want)
		}
		if real := len(sftp.Plan(tc.handshake/6, tc.streams, tc.tunnelled)) - 1; got > real {
			t.Errorf("AheadLinks(%v) = %d: more than the %d of a round trip of a sixth of the handshake", tc.handshake, got, real)
		}
	}
	if n := sftp.AheadLinks(40*time.Millisecond, 0, false); n != len(sftp.Plan(time.Millisecond, 0, false))-1 {
		t.Errorf("on loopback: %d connections ahead, want the loopback plan's %d", n, len(sftp.Plan(time.Millisecond, 0, false))-1)
	}
	if n := sftp.AheadLinks(650*time.Millisecond, 1, false); n != 0 {
		t.Errorf("one stream: %d connections ahead", n)
	}
}

// startFar starts sshd behind its forwarder at a 100 ms round trip, in a
// home of the test's own.
func startFar(t *testing.T) *sftptest.Server {
	isolate(t)
	srv := sftptest.StartSSHD(t)
	srv.Forwarder().SetDelay(50 * time.Millisecond)
	t.Cleanup(func() { srv.Forwarder().SetDelay(0) })
	return srv
}

// TestDialAhead dials through a 100 ms round trip: the other connections
// are on their way when Dial returns (they started once the first had
// authenticated, not once its session had timed the round trip), every
// one is used, and the transport works.
func TestDialAhead(t *testing.T) {
	srv := startFar(t)
	tr := dial(t, config(srv, "ahead", 0))
	if n := srv.Forwarder().Accepted(); n < 2 {
		t.Errorf("when Dial returned, %d connection(s) had reached the server, want the first and those dialled ahead", n)
	}
	plan := len(sftp.Plan(tr.LinkStats().RTT, 0, false))
	data := randomBytes(1 << 20)
	ctx := context.Background()
	if err := tr.Put(ctx, "a/o", bytes.NewReader(data), -1); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); tr.LinkStats().Channels < tr.Streams() && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if st := tr.LinkStats(); st.Connections < plan || srv.Forwarder().Accepted() != st.Connections {
		t.Errorf("LinkStats %+v, %d connections accepted: want the plan's %d, each used", st, srv.Forwarder().Accepted(), plan)
	}
	rc, err := tr.Open(ctx, "a/o", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, data) {
		t.Error("read back differs")
	}
}

// TestPutMakesFolders: Puts side by side into new folders several levels
// deep, under a root whose parents do not exist either, make every folder
// (their creations are sent together, and those a missing parent failed
// are made again) and land every object.
func TestPutMakesFolders(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t)
	tr := dial(t, config(srv, "new/deeper/root", 4))
	names := []string{"s/a/b/o1", "s/a/b/o2", "s/c/o3", "s/c/d/e/o4", "top"}
	ctx := context.Background()
	var g errgroup.Group
	for _, name := range names {
		g.Go(func() error { return tr.Put(ctx, name, bytes.NewReader([]byte(name)), int64(len(name))) })
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		got, err := os.ReadFile(filepath.Join(srv.Root, "new/deeper/root", name))
		if err != nil || string(got) != name {
			t.Errorf("%s: %q, %v", name, got, err)
		}
	}
}

// TestWaitStreams dials through a 100 ms round trip: the sessions beyond
// the first are still being made when Dial returns, and WaitStreams
// returns once the number asked for is up (every one of them here).
func TestWaitStreams(t *testing.T) {
	srv := startFar(t)
	tr := dial(t, config(srv, "wait", 8))
	if st := tr.LinkStats(); st.Channels >= tr.Streams() {
		t.Fatalf("LinkStats %+v as Dial returned: every session was up already, nothing to wait for", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := tr.WaitStreams(ctx, tr.Streams()); err != nil {
		t.Fatal(err)
	}
	if st := tr.LinkStats(); st.Channels != tr.Streams() {
		t.Errorf("LinkStats %+v once WaitStreams(%d) returned", st, tr.Streams())
	}
}
