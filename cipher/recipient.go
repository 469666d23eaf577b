package cipher

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"golang.org/x/crypto/ssh"
)

// ParseRecipient parses a recipient as age users write them: an age public
// key ("age1..." X25519 or "age1pq1..." post-quantum hybrid) or an SSH
// public key line ("ssh-ed25519 ..." or "ssh-rsa ...", as in a .pub file or
// an authorized_keys line, options and comment included).
//
// Its errors never contain s, which may be a secret given by mistake (a
// private key, a passphrase), except where age quotes a malformed age1...
// key, which is public.
func ParseRecipient(s string) (age.Recipient, error) {
	s = strings.TrimSpace(s)
	var r age.Recipient
	var err error
	switch {
	case strings.HasPrefix(s, "age1pq1"):
		r, err = age.ParseHybridRecipient(s)
	case strings.HasPrefix(s, "age1"):
		r, err = age.ParseX25519Recipient(s)
	case strings.HasPrefix(strings.ToUpper(s), "AGE-SECRET-KEY-"):
		return nil, errors.New("this is an age private key (AGE-SECRET-KEY-1...), not a recipient: give its public key (age1...)")
	case strings.HasPrefix(s, "-----BEGIN"):
		return nil, errors.New("this is a private key (-----BEGIN ...), not a recipient: give its public key (the ssh-ed25519 or ssh-rsa line of its .pub file)")
	case strings.ContainsAny(s, "\r\n"):
		// ssh.ParseAuthorizedKey would skip the lines it can't parse.
		return nil, errors.New("a recipient is one line: give several with -r each, or in a file with -R")
	default:
		r, err = parseSSHRecipient(s)
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

// parseSSHRecipient parses an authorized_keys line. age encrypts to
// ssh-ed25519 and ssh-rsa keys; other SSH keys are refused by name rather
// than skipped, since whoever listed them expects them to decrypt.
func parseSSHRecipient(line string) (age.Recipient, error) {
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		if looksLikeSSHKey(line) {
			return nil, errors.New("malformed or unsupported SSH public key")
		}
		return nil, errors.New("unknown recipient type: want an age1..., ssh-ed25519 or ssh-rsa public key (a file of them goes with -R)")
	}
	var r age.Recipient
	switch t := pub.Type(); {
	case t == ssh.KeyAlgoED25519:
		r, err = agessh.NewEd25519Recipient(pub)
	case t == ssh.KeyAlgoRSA:
		r, err = agessh.NewRSARecipient(pub)
	case strings.Contains(t, "-cert-"):
		return nil, fmt.Errorf("%s is a certificate, which cannot be a recipient: give the key's own public key", t)
	default:
		return nil, fmt.Errorf("%s keys cannot be recipients (age encrypts to ssh-ed25519 and ssh-rsa keys only)", t)
	}
	if err != nil {
		return nil, fmt.Errorf("%s key: %v", pub.Type(), err)
	}
	return r, nil
}

// looksLikeSSHKey reports whether line holds a word that starts like an
// SSH key type, so that a malformed key is called that rather than an
// unknown recipient type.
func looksLikeSSHKey(line string) bool {
	for _, f := range strings.Fields(line) {
		if strings.HasPrefix(f, "ssh-") || strings.HasPrefix(f, "ecdsa-") || strings.HasPrefix(f, "sk-") {
			return true
		}
	}
	return false
}

// ParseRecipientsFile reads a recipients file like age -R does: one
// recipient per line in any form ParseRecipient accepts, ignoring blank
// lines and lines starting with '#'. An OpenSSH authorized_keys file is
// one, if all its keys are ssh-ed25519 or ssh-rsa. Errors name the file and
// the line, never its content.
func ParseRecipientsFile(name string) ([]age.Recipient, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("read recipients file %s: %w", name, err)
	}
	defer f.Close()
	var rs []age.Recipient
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20) // long ssh-rsa lines
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		r, err := ParseRecipient(line)
		if err != nil {
			return nil, fmt.Errorf("recipients file %s line %d: %v", name, n, err)
		}
		rs = append(rs, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read recipients file %s: %w", name, err)
	}
	if len(rs) == 0 {
		return nil, fmt.Errorf("recipients file %s: no recipients", name)
	}
	return rs, nil
}

// PassphraseRecipient returns an age scrypt recipient for pass. age allows it
// only as the only recipient of a key (see CheckRecipients).
func PassphraseRecipient(pass []byte) (age.Recipient, error) {
	r, err := age.NewScryptRecipient(string(pass))
	if err != nil {
		return nil, fmt.Errorf("passphrase recipient: %w", err)
	}
	return r, nil
}
