package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/shipper"
)

// signKeyEnv names send's signing key for unattended runs. The generic
// COLDSHIP_<FLAG> mechanism supersedes it once merged; until then this
// constant is read in one place, signingKey.
const signKeyEnv = "COLDSHIP_SIGN_KEY"

// maxKeyFile bounds what is read of a --sign-key file.
const maxKeyFile = 1 << 20

// sendSigner is the key `send --sign-key` signs shipments with: a private
// key read from its file, or a key held by ssh-agent.
type sendSigner struct {
	file   string
	signer ssh.Signer
	agent  io.Closer // the connection to ssh-agent, if the key is there
}

// signingKey loads --sign-key FILE (or $COLDSHIP_SIGN_KEY): nil if
// neither is given. FILE is an OpenSSH private key (ed25519, ecdsa, rsa),
// whose passphrase is asked for only on a terminal, or, as with
// `ssh-keygen -Y sign`, a public key whose private key ssh-agent holds.
// Every failure is a usage error (exit 2) except a wrong passphrase
// (exit 4), so that a cron job fails before anything is shipped. The
// connection to ssh-agent is closed when ctx is done.
func (s *streams) signingKey(ctx context.Context, file string) (*sendSigner, error) {
	if file == "" {
		file = os.Getenv(signKeyEnv)
	}
	if file == "" {
		return nil, nil
	}
	data, err := readKeyFile(file)
	if err != nil {
		return nil, usagef("--sign-key: %v", err)
	}
	defer clear(data)
	if pub, _, _, _, err := ssh.ParseAuthorizedKey(data); err == nil {
		return agentSigner(ctx, file, pub)
	}
	s.warnReadableByAll("--sign-key file", file)
	signer, err := ssh.ParsePrivateKey(data)
	var missing *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &missing):
		if !s.stdinIsTerminal() {
			return nil, usagef("--sign-key %s is passphrase-protected and there is no terminal to ask for the passphrase: "+
				"add it to ssh-agent (ssh-add) and give its public key (%s.pub) instead", file, file)
		}
		pass, perr := s.prompt(fmt.Sprintf("Enter passphrase for signing key %s: ", file))
		if perr != nil {
			return nil, perr
		}
		defer clear(pass)
		signer, err = ssh.ParsePrivateKeyWithPassphrase(data, pass)
		if errors.Is(err, x509.IncorrectPasswordError) {
			return nil, fmt.Errorf("--sign-key %s: wrong passphrase: %w", file, cipher.ErrNoIdentity)
		}
	}
	if err != nil {
		return nil, usagef("--sign-key %s: not an OpenSSH private key, nor a public key: %v", file, err)
	}
	return &sendSigner{file: file, signer: signer}, nil
}

func readKeyFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(b) > maxKeyFile {
		return nil, fmt.Errorf("%s: larger than %d bytes: not a key", name, maxKeyFile)
	}
	return b, nil
}

// agentSigner finds the key of public key pub (read from file) in
// ssh-agent. The connection is closed when ctx is done: an agent that
// does not answer (a forwarded one whose link hung) must not keep an
// interrupted send from ending.
func agentSigner(ctx context.Context, file string, pub ssh.PublicKey) (*sendSigner, error) {
	if _, ok := pub.(*ssh.Certificate); ok {
		return nil, usagef("--sign-key %s is a certificate: give the key's own public key", file)
	}
	sock := os.Getenv("SSH_AUTH_SOCK")
	if sock == "" {
		return nil, usagef("--sign-key %s is a public key, so its private key must be in ssh-agent, but SSH_AUTH_SOCK is not set", file)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		return nil, usagef("--sign-key %s is a public key, but ssh-agent cannot be reached: %v", file, err)
	}
	conn := &agentConn{Conn: c, stop: context.AfterFunc(ctx, func() { c.Close() })}
	signers, err := agent.NewClient(conn).Signers()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("--sign-key %s: ssh-agent: %w", file, err)
	}
	for _, sg := range signers {
		if bytes.Equal(sg.PublicKey().Marshal(), pub.Marshal()) {
			return &sendSigner{file: file, signer: sg, agent: conn}, nil
		}
	}
	conn.Close()
	return nil, usagef("--sign-key %s: ssh-agent does not hold its private key (%s %s): ssh-add it",
		file, pub.Type(), ssh.FingerprintSHA256(pub))
}

// agentConn is a connection to ssh-agent that context.AfterFunc closes
// when the run's context is done.
type agentConn struct {
	net.Conn
	stop func() bool
}

func (c *agentConn) Close() error {
	c.stop()
	return c.Conn.Close()
}

// Close closes the connection to ssh-agent, if any. A nil signer is fine.
func (k *sendSigner) Close() {
	if k != nil && k.agent != nil {
		k.agent.Close()
	}
}

// sign signs the complete shipment id at tr, whose inventory the send put
// with SHA-256 inventory, as the next of the chain of these sources to
// dest under label (kept in stateDir), and records it there.
func (k *sendSigner) sign(ctx context.Context, tr shipper.Transport, id string, inventory archive.Digest, stateDir, dest string,
	sources []archive.Source, label string, log func(string, ...any)) error {
	chain, err := shipper.OpenChainState(stateDir, dest, sources, label)
	if err != nil {
		return err
	}
	link, err := chain.Link(ctx, tr, id, log)
	if err != nil {
		return err
	}
	sum, err := shipper.SignShipment(ctx, tr, id, inventory, k.signer, link)
	if err != nil {
		return err
	}
	// The shipment is signed: a state that cannot be saved costs only the
	// link of the next one, which then follows this one's predecessor.
	if err := chain.Record(id, sum); err != nil {
		log("warning: %v", err)
	}
	prev := link.Previous
	if prev == "" {
		prev = "none: a new chain"
	}
	log("signed %s with %s key %s (previous %s)", id, k.signer.PublicKey().Type(), ssh.FingerprintSHA256(k.signer.PublicKey()), prev)
	return nil
}
