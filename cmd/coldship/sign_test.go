package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/local"
)

// sshKeygen makes an OpenSSH key of type kind with ssh-keygen (empty
// passphrase: unencrypted) and returns the private key's path and the
// public key line.
func sshKeygen(t *testing.T, kind, passphrase string) (string, string) {
	t.Helper()
	keygen := requireTool(t, "ssh-keygen")
	file := filepath.Join(t.TempDir(), "id_"+kind)
	args := []string{"-q", "-t", kind, "-N", passphrase, "-C", "site-a", "-f", file}
	if kind == "rsa" {
		args = append(args, "-b", "2048")
	}
	if out, err := exec.Command(keygen, args...).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(file + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return file, strings.TrimSpace(string(pub))
}

// checkSignedWithOpenSSH checks shipment id at dest with OpenSSH and
// coreutils alone, as the README tells an operator to.
func checkSignedWithOpenSSH(t *testing.T, dest, id, allowedSigners string) {
	t.Helper()
	dir := filepath.Join(dest, id)
	signed, err := os.Open(filepath.Join(dir, archive.SignedObject))
	if err != nil {
		t.Fatal(err)
	}
	defer signed.Close()
	cmd := exec.Command(requireTool(t, "ssh-keygen"), "-Y", "verify", "-f", allowedSigners, "-I", "site-a", "-n", "coldship",
		"-s", filepath.Join(dir, archive.SignatureObject))
	cmd.Stdin = signed
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), `Good "coldship" signature for site-a`) {
		t.Fatalf("ssh-keygen -Y verify of %s: %v\n%s", id, err, out)
	}
	cmd = exec.Command(requireTool(t, "sha256sum"), "-c", "--strict", archive.SignedObject)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "keys/0000: OK") {
		t.Fatalf("sha256sum -c %s: %v\n%s", id, err, out)
	}
}

func writeAllowedSigners(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "allowed_signers")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func statementOf(t *testing.T, dest, id string) *archive.Statement {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dest, id, archive.SignedObject))
	if err != nil {
		t.Fatal(err)
	}
	st, err := archive.ParseStatement(b)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestSendSigned signs with keys made by ssh-keygen and checks the
// shipments with ssh-keygen -Y verify and sha256sum -c, and with coldship.
func TestSendSigned(t *testing.T) {
	for _, kind := range []string{"ed25519", "ecdsa", "rsa"} {
		t.Run(kind, func(t *testing.T) {
			key, pub := sshKeygen(t, kind, "")
			_, otherPub := sshKeygen(t, "ed25519", "")
			_, rcpt := keypair(t)
			dir := t.TempDir()
			src := filepath.Join(dir, "disk.img")
			makeImage(t, src, 512<<10, region{0, 256 << 10, "random"})
			dest := filepath.Join(dir, "dest")
			allowedFile := writeAllowedSigners(t, `site-a namespaces="coldship" `+pub)

			first := strings.TrimSpace(mustRun(t, "send", src, "--to", dest, "-r", rcpt, "-q", "--sign-key", key).stdout)
			// The environment variable names the key too.
			t.Setenv(signKeyEnv, key)
			r := mustRun(t, "send", src, "--to", dest, "-r", rcpt)
			second := strings.TrimSpace(r.stdout)
			if !strings.Contains(r.stderr, "signed "+second+" with") || !strings.Contains(r.stderr, "(previous "+first+")") {
				t.Errorf("stderr does not say it signed:\n%s", r.stderr)
			}
			for _, id := range []string{first, second} {
				checkSignedWithOpenSSH(t, dest, id, allowedFile)
			}
			s1, s2 := statementOf(t, dest, first), statementOf(t, dest, second)
			signed1, _ := os.ReadFile(filepath.Join(dest, first, archive.SignedObject))
			if s1.Previous != "" || s2.Chain != s1.Chain || s2.Previous != first || s2.PreviousSHA256 != archive.StatementDigest(signed1) {
				t.Fatalf("chain: first %+v, second %+v", s1, s2)
			}

			trusted, err := cipher.ReadAllowedSigners(allowedFile)
			if err != nil {
				t.Fatal(err)
			}
			tr, _ := local.New(dest)
			ti, err := shipper.CheckSignature(context.Background(), tr, second, trusted, time.Now())
			if err != nil || ti.Signer.Principal() != "site-a" {
				t.Fatalf("coldship's check: %v", err)
			}
			// The check means something: another key is refused by both.
			cmd := exec.Command("ssh-keygen", "-Y", "verify", "-f", writeAllowedSigners(t, "site-a "+otherPub), "-I", "site-a",
				"-n", "coldship", "-s", filepath.Join(dest, second, archive.SignatureObject))
			cmd.Stdin = bytes.NewReader(mustReadFile(t, filepath.Join(dest, second, archive.SignedObject)))
			if err := cmd.Run(); err == nil {
				t.Fatal("ssh-keygen accepted the signature for another key")
			}
		})
	}
}

func mustReadFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// startAgent starts a real ssh-agent on a socket of its own and returns
// its socket and process.
func startAgent(t *testing.T) (string, *os.Process) {
	t.Helper()
	agent := requireTool(t, "ssh-agent")
	sock := filepath.Join(t.TempDir(), "agent.sock")
	cmd := exec.Command(agent, "-D", "-a", sock)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			return sock, cmd.Process
		}
		if i == 500 {
			t.Fatal("ssh-agent did not make its socket")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSendSignedWithAgent signs with keys that only ssh-agent holds, named
// by their public keys, as ssh-keygen -Y sign does.
func TestSendSignedWithAgent(t *testing.T) {
	sock, agentProc := startAgent(t)
	t.Setenv("SSH_AUTH_SOCK", sock)
	_, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 256<<10, region{0, 128 << 10, "random"})
	dest := filepath.Join(dir, "dest")
	var pubs []string
	for _, kind := range []string{"ed25519", "rsa"} {
		key, pub := sshKeygen(t, kind, "")
		if out, err := exec.Command(requireTool(t, "ssh-add"), "-q", key).CombinedOutput(); err != nil {
			t.Fatalf("ssh-add: %v\n%s", err, out)
		}
		os.Remove(key) // only the agent has it now
		pubs = append(pubs, pub)
		id := strings.TrimSpace(mustRun(t, "send", src, "--to", dest, "-r", rcpt, "-q", "--sign-key", key+".pub").stdout)
		checkSignedWithOpenSSH(t, dest, id, writeAllowedSigners(t, "site-a "+pub))
	}

	// A public key whose private key the agent does not hold: exit 2,
	// nothing shipped.
	_, pub := sshKeygen(t, "ed25519", "")
	pubFile := writeAllowedSigners(t, pub) // any file holding the line
	before := countShipments(t, dest)
	r := run(t, "send", src, "--to", dest, "-r", rcpt, "-q", "--sign-key", pubFile)
	if r.code != exitUsage || !strings.Contains(r.stderr, "ssh-agent does not hold its private key") || countShipments(t, dest) != before {
		t.Fatalf("key not in the agent: exit %d\n%s", r.code, r.stderr)
	}

	// The agent dies during the send: the shipment is complete but
	// unsigned, and the command fails naming it.
	pubFile = writeAllowedSigners(t, pubs[0])
	r = run(t, "send", src, "--to", dest, "-r", rcpt, "-q", "--sign-key", pubFile,
		"--hook", fmt.Sprintf("pre-send=kill %d", agentProc.Pid))
	if r.code == 0 || !strings.Contains(r.stderr, "is complete at") || !strings.Contains(r.stderr, "but not signed") {
		t.Fatalf("signing failure: exit %d\n%s", r.code, r.stderr)
	}
	ships, _ := shipper.List(context.Background(), mustLocal(t, dest))
	last := ships[len(ships)-1]
	if !last.Complete || !strings.Contains(r.stderr, last.ID) {
		t.Fatalf("the shipment %s is not complete or not named:\n%s", last.ID, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dest, last.ID, archive.SignatureObject)); err == nil {
		t.Fatal("a signature was written")
	}
}

func mustLocal(t *testing.T, dir string) shipper.Transport {
	tr, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func countShipments(t *testing.T, dest string) int {
	t.Helper()
	ships, err := shipper.List(context.Background(), mustLocal(t, dest))
	if err != nil {
		t.Fatal(err)
	}
	return len(ships)
}

func TestSendSignKeyErrors(t *testing.T) {
	_, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 128<<10, region{0, 64 << 10, "random"})
	dest := filepath.Join(dir, "dest")
	encrypted, _ := sshKeygen(t, "ed25519", "correct horse")
	_, pub := sshKeygen(t, "ed25519", "")
	pubFile := writeAllowedSigners(t, pub)
	garbage := writeAllowedSigners(t, "not a key")
	t.Setenv("SSH_AUTH_SOCK", "")
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"missing file":         {[]string{"--sign-key", filepath.Join(dir, "nope")}, "no such file"},
		"encrypted, no tty":    {[]string{"--sign-key", encrypted}, "no terminal to ask for the passphrase"},
		"not a key":            {[]string{"--sign-key", garbage}, "not an OpenSSH private key"},
		"public key, no agent": {[]string{"--sign-key", pubFile}, "SSH_AUTH_SOCK is not set"},
		"live":                 {[]string{"--sign-key", encrypted, "--live"}, "a live send stores no shipment"},
	} {
		t.Run(name, func(t *testing.T) {
			r := run(t, append([]string{"send", src, "--to", dest, "-r", rcpt, "-q"}, tc.args...)...)
			if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("exit %d, want %d saying %q:\n%s", r.code, exitUsage, tc.want, r.stderr)
			}
			if strings.Contains(r.stderr, "correct horse") {
				t.Fatal("the passphrase is in a message")
			}
			if n := countShipments(t, dest); n != 0 {
				t.Fatalf("%d shipments made", n)
			}
		})
	}
}

// TestSendSignKeyPassphrasePrompt types the passphrase of an encrypted key
// on a real terminal (a pseudo-terminal).
func TestSendSignKeyPassphrasePrompt(t *testing.T) {
	_, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 128<<10, region{0, 64 << 10, "random"})
	dest := filepath.Join(dir, "dest")
	key, pub := sshKeygen(t, "ecdsa", "correct horse")
	for _, tc := range []struct {
		pass string
		code int
	}{{"wrong", exitAuth}, {"correct horse", exitOK}} {
		ptmx, pts := openPTY(t)
		ptmx.Write([]byte(tc.pass + "\n"))
		var out, errb bytes.Buffer
		root := newRootCmd(pts, &out, &errb)
		root.SetArgs([]string{"send", src, "--to", dest, "-r", rcpt, "-q", "--sign-key", key})
		err := root.ExecuteContext(context.Background())
		if code := exitCode(err); code != tc.code {
			t.Fatalf("passphrase %q: exit %d (%v), want %d\n%s", tc.pass, code, err, tc.code, errb.String())
		}
		if !strings.Contains(errb.String(), "Enter passphrase for signing key "+key) {
			t.Fatalf("no prompt on the terminal:\n%s", errb.String())
		}
		if tc.code == exitOK {
			checkSignedWithOpenSSH(t, dest, strings.TrimSpace(out.String()), writeAllowedSigners(t, "site-a "+pub))
		} else if n := countShipments(t, dest); n != 0 {
			t.Fatalf("a wrong passphrase shipped %d shipments", n)
		}
	}
}

// openPTY opens a pseudo-terminal pair.
func openPTY(t *testing.T) (ptmx, pts *os.File) {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	t.Cleanup(func() { ptmx.Close() })
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pts.Close() })
	return ptmx, pts
}

// stallingAgent is an ssh-agent that lists its keys but, asked to sign,
// interrupts the run (as SIGTERM does) and does not answer until
// released: a forwarded agent whose link hung. stalled is set if it had
// to give up waiting.
type stallingAgent struct {
	agent.Agent
	interrupt func()
	released  chan struct{}
	stalled   atomic.Bool
}

func (a *stallingAgent) Sign(ssh.PublicKey, []byte) (*ssh.Signature, error) {
	a.interrupt()
	select {
	case <-a.released:
	case <-time.After(time.Minute): // only bounds a test that fails
		a.stalled.Store(true)
	}
	return nil, errors.New("no answer")
}

// TestSendSignInterruptedAgent: an interrupted send whose ssh-agent does
// not answer ends (exit 130) and signs nothing, instead of waiting for
// the agent for ever (systemd's stop, a cron job's kill).
func TestSendSignInterruptedAgent(t *testing.T) {
	key, pub := sshKeygen(t, "ed25519", "")
	b, _ := os.ReadFile(key)
	raw, err := ssh.ParseRawPrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	keyring := agent.NewKeyring()
	if err := keyring.Add(agent.AddedKey{PrivateKey: raw}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	stall := &stallingAgent{Agent: keyring, interrupt: func() { cancel(errInterrupted) }, released: make(chan struct{})}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); agent.ServeAgent(stall, c) }()
		}
	}()
	_, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 256<<10, region{0, 128 << 10, "random"})
	dest := filepath.Join(dir, "dest")
	pubFile := writeAllowedSigners(t, pub)
	r := runCtx(t, ctx, map[string]string{"SSH_AUTH_SOCK": sock}, "send", src, "--to", dest, "-r", rcpt, "-q", "--sign-key", pubFile)
	close(stall.released)
	if stall.stalled.Load() {
		t.Fatalf("the interrupted send waited for the agent's answer (exit %d)\n%s", r.code, r.stderr)
	}
	if r.code != exitInterrupted {
		t.Fatalf("exit %d, want %d\n%s", r.code, exitInterrupted, r.stderr)
	}
	ships, _ := shipper.List(context.Background(), mustLocal(t, dest))
	for _, si := range ships {
		if _, err := os.Stat(filepath.Join(dest, si.ID, archive.SignatureObject)); err == nil {
			t.Fatalf("%s was signed", si.ID)
		}
	}
}

// TestSendSignedPerLabel: two VMs whose images have the same file name,
// sent to one destination under their own --name, each sign in a chain of
// their own: each statement names the VM's own last shipment as its
// previous, not the other VM's.
func TestSendSignedPerLabel(t *testing.T) {
	key, _ := sshKeygen(t, "ed25519", "")
	_, rcpt := keypair(t)
	dir := t.TempDir()
	dest := filepath.Join(dir, "dest")
	send := func(vm string) string {
		src := filepath.Join(dir, vm, "disk.img")
		if _, err := os.Stat(src); err != nil {
			os.MkdirAll(filepath.Dir(src), 0o755)
			makeImage(t, src, 256<<10, region{0, 128 << 10, "random"})
		}
		return strings.TrimSpace(mustRun(t, "send", src, "--to", dest, "-r", rcpt, "-q", "--name", vm, "--sign-key", key).stdout)
	}
	a1, b1, a2, b2 := send("a"), send("b"), send("a"), send("b")
	sa1, sb1, sa2, sb2 := statementOf(t, dest, a1), statementOf(t, dest, b1), statementOf(t, dest, a2), statementOf(t, dest, b2)
	if sa1.Chain == sb1.Chain || sa2.Chain != sa1.Chain || sb2.Chain != sb1.Chain {
		t.Errorf("chains: a %s then %s, b %s then %s; want one for each VM", sa1.Chain, sa2.Chain, sb1.Chain, sb2.Chain)
	}
	if sa2.Previous != a1 || sb2.Previous != b1 {
		t.Errorf("previous of a's second %q (want %s), of b's second %q (want %s)", sa2.Previous, a1, sb2.Previous, b1)
	}
}
