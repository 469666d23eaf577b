// Package sftptest runs a real OpenSSH sshd for the tests of the SFTP
// transport: it listens on loopback only, runs as the current user (root
// included) with keys generated in a temporary directory, and is reached
// through an in-process TCP forwarder that can cut live connections or add
// latency.
//
// It needs Debian's openssh-server (which brings openssh-sftp-server).
// Without /usr/sbin/sshd the tests are skipped, or fail when CI=true.
package sftptest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// SSHDPath is the sshd binary the tests run.
const SSHDPath = "/usr/sbin/sshd"

// Server is a running sshd with its keys and files.
type Server struct {
	Host string // 127.0.0.1
	Port int    // the forwarder's port: dial this
	Addr string // Host:Port

	User               string // the current user, who may log in
	Root               string // an empty directory to use as the remote root
	ClientKeyFile      string // unencrypted OpenSSH ed25519 private key, authorized
	ClientKey          ssh.Signer
	KnownHostsFile     string // holds the host key for Addr and SSHDAddr
	HostKeyFile        string
	HostKey            ssh.PublicKey
	HostKeyFingerprint string // ssh.FingerprintSHA256(HostKey)

	// SSHDAddr and SSHDPort are sshd's own address, bypassing the
	// forwarder.
	SSHDAddr string
	SSHDPort int

	t      testing.TB
	dir    string
	config string
	fwd    *Forwarder
	opts   options

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	log    string // sshd's stderr
}

// Option changes how the server is started.
type Option func(*options)

type options struct {
	readOnly     bool
	noOverride   bool
	mounts       []mount
	verbose      bool
	logRequests  bool
	noForwarding bool
}

type mount struct{ rel, opts string }

// ReadOnly serves SFTP in read-only mode (internal-sftp -R): every write is
// refused with SSH_FX_PERMISSION_DENIED, which works even for root.
func ReadOnly() Option { return func(o *options) { o.readOnly = true } }

// NoOverride makes a root sshd obey file modes as an unprivileged user's
// would: it runs without CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and
// CAP_FOWNER, so that a directory of mode 0555 refuses new files.
func NoOverride() Option { return func(o *options) { o.noOverride = true } }

// Mount gives sshd a tmpfs at Root/rel, mounted with the tmpfs options
// opts ("ro", "size=256k") in a mount namespace of sshd's own: the server
// sees a read-only or a small file system there, the test's process the
// empty directory under it. It needs root; without it the test is skipped.
func Mount(rel, opts string) Option {
	return func(o *options) { o.mounts = append(o.mounts, mount{rel, opts}) }
}

// NoForwarding refuses TCP forwarding (AllowTcpForwarding no): a
// direct-tcpip channel is refused as administratively prohibited.
func NoForwarding() Option { return func(o *options) { o.noForwarding = true } }

// Verbose makes sshd log at level DEBUG1 (see Log): it then names every
// session channel it opens, which tests count.
func Verbose() Option { return func(o *options) { o.verbose = true } }

// LogRequests serves SFTP with OpenSSH's sftp-server program rather than
// internal-sftp, logging the requests it serves (open, fsync, rename,
// close with the bytes written: sftp-server -l VERBOSE) where RequestLog
// shows them. (internal-sftp logs only to syslog.)
func LogRequests() Option { return func(o *options) { o.logRequests = true } }

// sftpServers are where distributions install OpenSSH's sftp-server.
var sftpServers = []string{"/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server", "/usr/lib/ssh/sftp-server"}

// RequestLog returns what the SFTP servers logged so far (LogRequests).
func (s *Server) RequestLog() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "sftp-server.log"))
	return string(b)
}

// StartSSHD starts sshd and waits until it accepts connections. It is
// stopped in t.Cleanup.
func StartSSHD(t testing.TB, opts ...Option) *Server {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if _, err := os.Stat(SSHDPath); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("sshd is required in CI: %v (apt-get install openssh-server)", err)
		}
		t.Skipf("no sshd (%v); install openssh-server to run these tests", err)
	}
	if len(o.mounts) > 0 && os.Geteuid() != 0 {
		t.Skip("mounting a file system for sshd needs root")
	}
	if os.Geteuid() == 0 {
		// sshd running as root insists on its privilege separation
		// directory, which the package's init script would create.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatalf("create /run/sshd: %v", err)
		}
	}
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	s := &Server{t: t, dir: dir, User: u.Username, Host: "127.0.0.1", opts: o}
	s.log = filepath.Join(dir, "sshd.log")
	s.Root = filepath.Join(dir, "root")
	if err := os.Mkdir(s.Root, 0o755); err != nil {
		t.Fatal(err)
	}

	hostSigner, hostPEM := newKey(t)
	s.HostKeyFile = filepath.Join(dir, "ssh_host_ed25519_key")
	writeFile(t, s.HostKeyFile, hostPEM, 0o600)
	s.HostKey = hostSigner.PublicKey()
	s.HostKeyFingerprint = ssh.FingerprintSHA256(s.HostKey)

	var clientPEM []byte
	s.ClientKey, clientPEM = newKey(t)
	s.ClientKeyFile = filepath.Join(dir, "id_ed25519")
	writeFile(t, s.ClientKeyFile, clientPEM, 0o600)
	writeFile(t, s.ClientKeyFile+".pub", ssh.MarshalAuthorizedKey(s.ClientKey.PublicKey()), 0o644)
	authorized := filepath.Join(dir, "authorized_keys")
	writeFile(t, authorized, ssh.MarshalAuthorizedKey(s.ClientKey.PublicKey()), 0o600)

	// The port is found free and then handed to sshd, so another process
	// may take it meanwhile: then sshd cannot bind it, and another is
	// tried.
	t.Cleanup(s.stop)
	for attempt := 1; ; attempt++ {
		s.SSHDPort = freePort(t)
		s.SSHDAddr = net.JoinHostPort(s.Host, strconv.Itoa(s.SSHDPort))
		s.writeConfig(authorized)
		err := s.launch()
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "Address already in use") || attempt == 5 {
			t.Fatal(err)
		}
	}

	s.fwd, err = NewForwarder(s.SSHDAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.fwd.Close() })
	s.Addr = s.fwd.Addr()
	s.Port = s.fwd.Port()

	s.KnownHostsFile = filepath.Join(dir, "known_hosts")
	writeFile(t, s.KnownHostsFile, []byte(knownhosts.Line([]string{s.Addr, s.SSHDAddr}, s.HostKey)+"\n"), 0o600)
	return s
}

// writeConfig writes the server's sshd_config: public keys only, the
// keys and folders of s, OpenSSH's defaults for what coldship must live
// with.
func (s *Server) writeConfig(authorized string) {
	// Without PAM, sshd refuses keys for accounts whose password is
	// locked ("!" in /etc/shadow), as CI users often are; PAM lets them in
	// and works unprivileged. As root, PAM's session modules
	// (pam_loginuid) can fail in containers, and root is rarely locked.
	usePAM := "yes"
	if os.Geteuid() == 0 {
		usePAM = "no"
	}
	logLevel := "ERROR"
	if s.opts.verbose {
		logLevel = "DEBUG1"
	}
	subsystem := "internal-sftp"
	if s.opts.logRequests {
		subsystem = s.sftpServer() + " -e -l VERBOSE 2>>" + filepath.Join(s.dir, "sftp-server.log")
	}
	if s.opts.readOnly {
		subsystem += " -R"
	}
	s.config = filepath.Join(s.dir, "sshd_config")
	writeFile(s.t, s.config, []byte(strings.Join([]string{
		"ListenAddress " + s.SSHDAddr,
		"HostKey " + s.HostKeyFile,
		"PidFile " + filepath.Join(s.dir, "sshd.pid"),
		"AuthorizedKeysFile " + authorized,
		"AuthenticationMethods publickey",
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PermitRootLogin prohibit-password",
		"StrictModes no",
		"UsePAM " + usePAM,
		"PrintMotd no",
		"UseDNS no",
		// sshd runs every command and every subsystem but internal-sftp
		// through the user's shell, and a bash started by sshd with
		// SHLVL unset reads the user's ~/.bashrc: on a CI machine that may
		// do anything (pyenv's rehash, with a lock that 32 SFTP sessions
		// queue on for tens of seconds). At SHLVL=1 bash counts itself
		// nested and skips it; other shells ignore it.
		"SetEnv SHLVL=1",
		// MaxSessions stays at OpenSSH's default (10), which coldship
		// must live with (issue 18). MaxStartups is raised because tests
		// run several clients against one server at once; one client
		// alone authenticates at most 8 connections at a time.
		"MaxStartups 64",
		"LogLevel " + logLevel,
		"Subsystem sftp " + subsystem,
		"AllowTcpForwarding " + map[bool]string{false: "yes", true: "no"}[s.opts.noForwarding],
		"",
	}, "\n")), 0o600)
}

// sftpServer returns the path of OpenSSH's sftp-server program.
func (s *Server) sftpServer() string {
	for _, p := range sftpServers {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		s.t.Fatalf("OpenSSH's sftp-server is not installed (looked in %v)", sftpServers)
	}
	s.t.Skipf("OpenSSH's sftp-server is not installed (looked in %v)", sftpServers)
	return ""
}

// Forwarder returns the forwarder in front of sshd.
func (s *Server) Forwarder() *Forwarder { return s.fwd }

// CutConnections closes every live connection through the forwarder, as a
// network failure would. sshd keeps running.
func (s *Server) CutConnections() { s.fwd.CloseAll() }

// Stop stops sshd and cuts the live connections: until Restart, new
// connections are closed as soon as they are accepted.
func (s *Server) Stop() {
	s.t.Helper()
	s.stop()
	s.fwd.CloseAll()
}

// Restart starts sshd again with the same keys and port.
func (s *Server) Restart() {
	s.t.Helper()
	s.stop()
	s.start()
}

func (s *Server) start() {
	s.t.Helper()
	if err := s.launch(); err != nil {
		s.t.Fatal(err)
	}
}

// launch starts sshd and waits until it accepts connections; the error
// holds sshd's log.
func (s *Server) launch() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// A file rather than a pipe: the connections' sshd children inherit
	// it, and exec would wait for them to close a pipe.
	logFile, err := os.OpenFile(s.log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(SSHDPath, "-D", "-e", "-f", s.config)
	cmd.Args = s.wrap(cmd.Args)
	cmd.Path = cmd.Args[0]
	if lp, err := exec.LookPath(cmd.Path); err == nil {
		cmd.Path = lp
	}
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start sshd: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited

	deadline := time.Now().Add(10 * time.Second)
	for {
		if banner(s.SSHDAddr) {
			return nil
		}
		select {
		case <-exited:
			s.cmd = nil
			return fmt.Errorf("sshd exited: %v\n%s", cmd.ProcessState, s.Log())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sshd does not accept connections on %s after 10s\n%s", s.SSHDAddr, s.Log())
		}
	}
}

// wrap puts argv (sshd's command line) under the commands that give it
// its mounts and take away its privileges: unshare and setpriv, from
// util-linux.
func (s *Server) wrap(argv []string) []string {
	if s.opts.noOverride && os.Geteuid() == 0 { // others have no override to lose
		argv = append([]string{"setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"}, argv...)
	}
	if len(s.opts.mounts) == 0 {
		return argv
	}
	// sh mounts each tmpfs ($1 on $2), then execs the rest.
	const script = `set -e
while [ "$1" != -- ]; do mkdir -p "$2"; mount -t tmpfs -o "$1" coldship-test "$2"; shift 2; done
shift
exec "$@"`
	pre := []string{"unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh"}
	for _, m := range s.opts.mounts {
		pre = append(pre, m.opts, filepath.Join(s.Root, m.rel))
	}
	return append(append(pre, "--"), argv...)
}

// banner reports whether an SSH server answers on addr.
func banner(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 4)
	_, err = c.Read(buf)
	return err == nil && string(buf) == "SSH-"
}

func (s *Server) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd = nil
}

// CPU returns the CPU time of sshd and of the connections it has reaped
// (their sessions, and what they ran: a live receiver), for benchmarks.
func (s *Server) CPU() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which ends with ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	var ticks int64
	for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime
		n, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * time.Second / 100
}

// Log returns what sshd wrote so far.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.log)
	return string(b)
}

func newKey(t testing.TB) (ssh.Signer, []byte) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	return signer, pem.EncodeToMemory(block)
}

// NewKeyFile writes a new ed25519 private key to dir and returns its path
// and signer; with a non-empty passphrase the key is encrypted.
func NewKeyFile(t testing.TB, dir, name string, passphrase []byte) (string, ssh.Signer) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	var block *pem.Block
	if len(passphrase) > 0 {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(priv, "", passphrase)
	} else {
		block, err = ssh.MarshalPrivateKey(priv, "")
	}
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	writeFile(t, p, pem.EncodeToMemory(block), 0o600)
	return p, signer
}

// Authorize adds a public key to the server's authorized_keys.
func (s *Server) Authorize(pub ssh.PublicKey) {
	s.t.Helper()
	f, err := os.OpenFile(filepath.Join(s.dir, "authorized_keys"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		s.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(ssh.MarshalAuthorizedKey(pub)); err != nil {
		s.t.Fatal(err)
	}
}

func writeFile(t testing.TB, p string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
