package cipher

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"filippo.io/age/armor"
	"golang.org/x/crypto/ssh"
)

// identityFileLimit bounds what ParseIdentityFile reads, as age does.
const identityFileLimit = 16 << 20

// ParseIdentityFile reads an identity file: an age identity file (lines of
// AGE-SECRET-KEY-1... or AGE-SECRET-KEY-PQ-1..., with '#' comments and blank
// lines ignored) or an OpenSSH or PEM ssh-ed25519 or ssh-rsa private key.
//
// For a passphrase-protected SSH key, askPass is called with a prompt the
// first time the key matches a wrapped key, and never otherwise. A nil
// askPass means there is no terminal to ask on, and such a key is an error.
func ParseIdentityFile(name string, askPass func(prompt string) ([]byte, error)) ([]age.Identity, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("read identity file %s: %w", name, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, identityFileLimit+1))
	if err != nil {
		return nil, fmt.Errorf("read identity file %s: %w", name, err)
	}
	if len(data) > identityFileLimit {
		return nil, fmt.Errorf("read identity file %s: larger than %d bytes", name, identityFileLimit)
	}
	trimmed := bytes.TrimSpace(data)
	if bytes.HasPrefix(trimmed, []byte("age-encryption.org/")) || bytes.HasPrefix(trimmed, []byte(armor.Header)) {
		return nil, fmt.Errorf("identity file %s is itself age-encrypted, which is not supported: decrypt it first", name)
	}
	if bytes.HasPrefix(trimmed, []byte("-----BEGIN")) {
		return parseSSHIdentity(name, data, askPass)
	}
	return parseAgeIdentities(name, data)
}

// parseAgeIdentities parses the lines of an age identity file, as
// age.ParseIdentities does, but with errors that say which line, and what
// it holds if it is a public key, never its content.
func parseAgeIdentities(name string, data []byte) ([]age.Identity, error) {
	var ids []age.Identity
	for i, b := range bytes.Split(data, []byte("\n")) {
		line := string(bytes.TrimSpace(b))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		id, err := parseIdentity(line)
		if err != nil {
			return nil, fmt.Errorf("identity file %s line %d: %v", name, i+1, err)
		}
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("identity file %s: no identities", name)
	}
	return ids, nil
}

func parseIdentity(line string) (age.Identity, error) {
	var id age.Identity
	var err error
	switch {
	case strings.HasPrefix(line, "AGE-SECRET-KEY-PQ-1"):
		id, err = age.ParseHybridIdentity(line)
	case strings.HasPrefix(line, "AGE-SECRET-KEY-1"):
		id, err = age.ParseX25519Identity(line)
	case strings.HasPrefix(line, "age1"):
		return nil, errors.New("this is an age public key (age1...), not an identity: give the file of its private key (AGE-SECRET-KEY-1...)")
	case isSSHPublicKey(line):
		return nil, errors.New("this is an SSH public key, not an identity: give its private key (id_ed25519, not id_ed25519.pub)")
	default:
		// age's own messages, which never quote the line, don't say more.
		return nil, errors.New("unknown identity type: want AGE-SECRET-KEY-1... lines, or an OpenSSH private key")
	}
	if err != nil {
		return nil, err
	}
	return id, nil
}

// isSSHPublicKey reports whether line is an SSH public key line, as in a
// .pub or authorized_keys file.
func isSSHPublicKey(line string) bool {
	_, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	return err == nil
}

func parseSSHIdentity(name string, pemBytes []byte, askPass func(string) ([]byte, error)) ([]age.Identity, error) {
	id, err := agessh.ParseIdentity(pemBytes)
	var missing *ssh.PassphraseMissingError
	switch {
	case err == nil:
		return []age.Identity{id}, nil
	case !errors.As(err, &missing):
		return nil, fmt.Errorf("SSH identity file %s: %v", name, err)
	case askPass == nil:
		return nil, fmt.Errorf("SSH identity file %s is passphrase-protected and there is no terminal to ask for the passphrase: "+
			"run interactively, or use a copy of the key without a passphrase (ssh-keygen -p) or an age identity", name)
	}
	pub := missing.PublicKey
	if pub == nil {
		// Legacy PEM keys don't carry their public key; ssh-keygen leaves it
		// next to them.
		line, err := os.ReadFile(name + ".pub")
		if err != nil {
			return nil, fmt.Errorf("SSH identity file %s is passphrase-protected and does not include its public key, which is needed in %s.pub: %w", name, name, err)
		}
		if pub, _, _, _, err = ssh.ParseAuthorizedKey(line); err != nil {
			return nil, fmt.Errorf("public key file %s.pub: %v", name, err)
		}
	}
	// Fail now, not at Unwrap, on a key type age can't use.
	if _, err := agessh.NewEncryptedSSHIdentity(pub, pemBytes, nil); err != nil {
		return nil, fmt.Errorf("SSH identity file %s: %v", name, err)
	}
	return []age.Identity{&encryptedSSHIdentity{
		name:    name,
		pubKey:  pub,
		pem:     pemBytes,
		askPass: askPass,
	}}, nil
}

// PassphraseIdentity returns an age scrypt identity for pass. A wrong
// passphrase makes UnwrapKey fail with ErrNoIdentity.
func PassphraseIdentity(pass []byte) (age.Identity, error) {
	id, err := age.NewScryptIdentity(string(pass))
	if err != nil {
		return nil, fmt.Errorf("passphrase identity: %w", err)
	}
	return id, nil
}

// GenerateIdentity returns a new age X25519 identity ("AGE-SECRET-KEY-1...")
// and its recipient ("age1..."). It writes nothing: storing the identity is
// the caller's business.
func GenerateIdentity() (identity string, recipient string, err error) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return "", "", fmt.Errorf("generate identity: %w", err)
	}
	return id.String(), id.Recipient().String(), nil
}

// encryptedSSHIdentity is a passphrase-protected SSH key. Unlike
// agessh.EncryptedSSHIdentity, which it builds on, it treats a wrong
// passphrase as a non-matching identity, so that UnwrapKey reports
// ErrNoIdentity, and it derives the key from the passphrase only once.
type encryptedSSHIdentity struct {
	name    string
	pubKey  ssh.PublicKey
	pem     []byte
	askPass func(prompt string) ([]byte, error)

	mu        sync.Mutex
	decrypted age.Identity // set once the passphrase worked
}

// askPassError carries an error from askPass through age.Decrypt, so that
// UnwrapKey can tell it from a malformed wrapped key.
type askPassError struct{ err error }

func (e *askPassError) Error() string { return e.err.Error() }
func (e *askPassError) Unwrap() error { return e.err }

// wrongPassphraseError makes age treat a wrong SSH key passphrase like a
// key that does not match, and lets UnwrapKey say which it was.
type wrongPassphraseError struct{ name string }

func (e *wrongPassphraseError) Error() string { return "wrong passphrase for SSH key " + e.name }
func (e *wrongPassphraseError) Unwrap() error { return age.ErrIncorrectIdentity }

var errProbe = errors.New("probe")

func (i *encryptedSSHIdentity) Unwrap(stanzas []*age.Stanza) ([]byte, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.decrypted != nil {
		return i.decrypted.Unwrap(stanzas)
	}

	// Let agessh decide whether any stanza is for this key: it asks for the
	// passphrase only when one is.
	matched := false
	probe, err := agessh.NewEncryptedSSHIdentity(i.pubKey, i.pem, func() ([]byte, error) {
		matched = true
		return nil, errProbe
	})
	if err != nil {
		return nil, err
	}
	if _, err := probe.Unwrap(stanzas); !matched {
		if err == nil {
			panic("cipher: internal error: SSH identity matched without a passphrase")
		}
		return nil, err
	}

	pass, err := i.askPass(fmt.Sprintf("Enter passphrase for SSH key %s: ", i.name))
	if err != nil {
		return nil, &askPassError{fmt.Errorf("passphrase for SSH key %s: %w", i.name, err)}
	}
	defer clear(pass)
	k, err := ssh.ParseRawPrivateKeyWithPassphrase(i.pem, pass)
	if errors.Is(err, x509.IncorrectPasswordError) {
		return nil, &wrongPassphraseError{i.name}
	} else if err != nil {
		return nil, fmt.Errorf("SSH identity file %s: %v", i.name, err)
	}
	var id age.Identity
	var pub any
	switch k := k.(type) {
	case *ed25519.PrivateKey:
		id, err = agessh.NewEd25519Identity(*k)
		pub = k.Public()
	case ed25519.PrivateKey:
		id, err = agessh.NewEd25519Identity(k)
		pub = k.Public()
	case *rsa.PrivateKey:
		id, err = agessh.NewRSAIdentity(k)
		pub = k.Public()
	default:
		return nil, fmt.Errorf("SSH identity file %s: unsupported key type %T", i.name, k)
	}
	if err != nil {
		return nil, fmt.Errorf("SSH identity file %s: %v", i.name, err)
	}
	if sshPub, err := ssh.NewPublicKey(pub); err != nil || !bytes.Equal(sshPub.Marshal(), i.pubKey.Marshal()) {
		return nil, fmt.Errorf("SSH identity file %s: private key does not match its public key", i.name)
	}
	i.decrypted = id
	return id.Unwrap(stanzas)
}
