package sftp

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/coldship/coldship/shipper"
)

// passphraseAttempts is how often AskPass is asked for one key, as OpenSSH's
// NumberOfPasswordPrompts.
const passphraseAttempts = 3

// keyFile is a private key file. An encrypted one is decrypted the first
// time the server accepts its public key, and then kept for re-dials so the
// user is asked at most once.
type keyFile struct {
	path string
	pub  ssh.PublicKey // nil for an encrypted key without a readable public half

	mu      sync.Mutex
	pem     []byte     // the encrypted key, until decrypted
	signer  ssh.Signer // set once usable
	skipped string     // why the key is unusable, once known
}

// authenticator authenticates every connection of one Transport: agent keys
// first, then unencrypted key files, then encrypted ones, each encrypted key
// only asked for when reached.
type authenticator struct {
	d       *destination
	askPass func(prompt string) ([]byte, error)
	keys    []*keyFile
	notes   []string // key files skipped while loading
}

// newAuthenticator reads the key files. A key file named with --ssh-key
// that cannot be used is an error; one from ssh_config or the defaults is
// skipped, and named in the error if no key is accepted.
func newAuthenticator(d *destination, askPass func(string) ([]byte, error)) (*authenticator, error) {
	a := &authenticator{d: d, askPass: askPass}
	for _, p := range d.keyFiles {
		k, err := readKeyFile(p)
		switch {
		case err == nil:
			a.keys = append(a.keys, k)
		case d.keySource == keysFlag:
			return nil, err
		case d.keySource == keysDefault && errors.Is(err, os.ErrNotExist):
		default:
			a.notes = append(a.notes, err.Error())
		}
	}
	return a, nil
}

// ErrNotKey marks a key file that holds no SSH private key coldship can
// read.
var ErrNotKey = errors.New("not an SSH private key")

// CheckKeyFile reads the private key file p as Dial reads a file of
// Config.KeyFiles, so that a caller can refuse one that cannot be used
// before it connects. Its error wraps fs.ErrNotExist or ErrNotKey where
// they apply. An encrypted key passes: its passphrase is asked for only
// when a server would accept it.
func CheckKeyFile(p string) error {
	_, err := readKeyFile(p)
	return err
}

func readKeyFile(p string) (*keyFile, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("ssh key %w", err)
	}
	k := &keyFile{path: p}
	signer, err := ssh.ParsePrivateKey(data)
	var missing *ssh.PassphraseMissingError
	switch {
	case err == nil:
		k.signer, k.pub = signer, signer.PublicKey()
	case errors.As(err, &missing):
		k.pem, k.pub = data, missing.PublicKey
		if k.pub == nil {
			k.pub = readPublicHalf(p + ".pub")
		}
	default:
		// The parser's message is not shown: it could quote the file.
		return nil, fmt.Errorf("ssh key %s: %w", p, ErrNotKey)
	}
	return k, nil
}

func readPublicHalf(p string) ssh.PublicKey {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil {
		return nil
	}
	return pub
}

// session is the authentication state of one connection attempt.
type session struct {
	a       *authenticator
	methods []ssh.AuthMethod
	next    int
	tried   []string // what was offered, for the error message
	started bool     // the server asked us to authenticate
	err     error    // set when every method was refused
	closeFn func()
}

// begin prepares the authentication of one connection. The agent socket is
// opened per connection and closed by session.close.
func (a *authenticator) begin() *session {
	s := &session{a: a, closeFn: func() {}}

	var agentSigners []ssh.Signer
	if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
		if c, err := net.Dial("unix", sock); err == nil {
			s.closeFn = func() { c.Close() }
			agentSigners, _ = agent.NewClient(c).Signers()
		}
	}
	if a.d.identitiesOnly {
		agentSigners = slices.DeleteFunc(agentSigners, func(sg ssh.Signer) bool {
			return !slices.ContainsFunc(a.keys, func(k *keyFile) bool {
				return k.pub != nil && samePublicKey(k.pub, sg.PublicKey())
			})
		})
	}
	inAgent := func(pub ssh.PublicKey) bool {
		return pub != nil && slices.ContainsFunc(agentSigners, func(sg ssh.Signer) bool {
			return samePublicKey(sg.PublicKey(), pub)
		})
	}

	first := slices.Clone(agentSigners)
	if len(agentSigners) > 0 {
		s.tried = append(s.tried, fmt.Sprintf("%d key(s) from ssh-agent", len(agentSigners)))
	}
	var encrypted []*keyFile
	for _, k := range a.keys {
		if inAgent(k.pub) {
			continue // the agent signs for it without a passphrase
		}
		k.mu.Lock()
		signer := k.signer
		k.mu.Unlock()
		if signer != nil {
			first = append(first, signer)
			s.tried = append(s.tried, k.path)
		} else {
			encrypted = append(encrypted, k)
		}
	}
	if len(first) > 0 {
		s.methods = append(s.methods, ssh.PublicKeys(first...))
	}
	for _, k := range encrypted {
		if k.pub != nil {
			// Offer the public key first; the passphrase is asked only if
			// the server would accept the key.
			s.methods = append(s.methods, ssh.PublicKeys(&lazySigner{k: k, a: a}))
		} else {
			s.methods = append(s.methods, ssh.PublicKeysCallback(func() ([]ssh.Signer, error) {
				sg, err := a.decrypt(k)
				if err != nil {
					return nil, err
				}
				return []ssh.Signer{sg}, nil
			}))
		}
		s.tried = append(s.tried, k.path)
	}
	return s
}

func (s *session) close() { s.closeFn() }

// callback picks the next authentication method; when none is left it
// fails with an error that says what was tried.
func (s *session) callback(ctx *ssh.ClientAuthContext) (ssh.AuthMethod, error) {
	s.started = true
	if !slices.Contains(ctx.AllowedMethods, "publickey") {
		s.err = fmt.Errorf("%s does not accept public key authentication for user %s (it allows: %s); coldship authenticates with keys only: %w",
			s.a.d.alias, s.a.d.user, strings.Join(ctx.AllowedMethods, ", "), shipper.ErrAuth)
		return nil, s.err
	}
	if s.next < len(s.methods) {
		s.next++
		return s.methods[s.next-1], nil
	}
	s.err = s.failure()
	return nil, s.err
}

func (s *session) failure() error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s did not accept any key for user %s", s.a.d.addr(), s.a.d.user)
	if len(s.tried) > 0 {
		fmt.Fprintf(&b, " (offered %s)", strings.Join(s.tried, ", "))
	} else {
		b.WriteString(" (no ssh-agent and no key file: give one with --ssh-key)")
	}
	notes := slices.Clone(s.a.notes)
	for _, k := range s.a.keys {
		k.mu.Lock()
		if k.skipped != "" {
			notes = append(notes, k.path+": "+k.skipped)
		}
		k.mu.Unlock()
	}
	if len(notes) > 0 {
		fmt.Fprintf(&b, "; skipped %s", strings.Join(notes, "; "))
	}
	return fmt.Errorf("%s: %w", b.String(), shipper.ErrAuth)
}

// decrypt asks for k's passphrase and returns its signer.
func (a *authenticator) decrypt(k *keyFile) (ssh.Signer, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.signer != nil {
		return k.signer, nil
	}
	if k.skipped != "" {
		return nil, errors.New(k.skipped)
	}
	if a.askPass == nil {
		k.skipped = "encrypted, and there is no terminal to ask for its passphrase (add the key to ssh-agent)"
		return nil, errors.New(k.skipped)
	}
	for range passphraseAttempts {
		pass, err := a.askPass(fmt.Sprintf("Enter passphrase for key '%s': ", k.path))
		if err != nil {
			k.skipped = "no passphrase given"
			return nil, errors.New(k.skipped)
		}
		signer, err := ssh.ParsePrivateKeyWithPassphrase(k.pem, pass)
		clear(pass)
		if err == nil {
			k.signer, k.pem = signer, nil
			return signer, nil
		}
		if !errors.Is(err, x509.IncorrectPasswordError) {
			k.skipped = "cannot be decrypted"
			return nil, errors.New(k.skipped)
		}
	}
	k.skipped = "wrong passphrase"
	return nil, errors.New(k.skipped)
}

// lazySigner offers an encrypted key's public half and decrypts the key
// only when a signature is needed.
type lazySigner struct {
	k *keyFile
	a *authenticator
}

func (l *lazySigner) PublicKey() ssh.PublicKey { return l.k.pub }

func (l *lazySigner) Sign(rand io.Reader, data []byte) (*ssh.Signature, error) {
	sg, err := l.a.decrypt(l.k)
	if err != nil {
		return nil, err
	}
	return sg.Sign(rand, data)
}

func (l *lazySigner) SignWithAlgorithm(rand io.Reader, data []byte, algorithm string) (*ssh.Signature, error) {
	sg, err := l.a.decrypt(l.k)
	if err != nil {
		return nil, err
	}
	as, ok := sg.(ssh.AlgorithmSigner)
	if !ok {
		return nil, fmt.Errorf("ssh key %s cannot sign with %s", l.k.path, algorithm)
	}
	return as.SignWithAlgorithm(rand, data, algorithm)
}

func samePublicKey(a, b ssh.PublicKey) bool {
	return bytes.Equal(a.Marshal(), b.Marshal())
}
