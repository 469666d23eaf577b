package cipher

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"filippo.io/age"
	"filippo.io/age/agessh"
)

// ParseRecipient parses a recipient as age users write them: an age public
// key ("age1..." X25519 or "age1pq1..." post-quantum hybrid) or an SSH
// public key line ("ssh-ed25519 ..." or "ssh-rsa ...", as in a .pub file).
func ParseRecipient(s string) (age.Recipient, error) {
	s = strings.TrimSpace(s)
	var r age.Recipient
	var err error
	switch {
	case strings.HasPrefix(s, "age1pq1"):
		r, err = age.ParseHybridRecipient(s)
	case strings.HasPrefix(s, "age1"):
		r, err = age.ParseX25519Recipient(s)
	case strings.HasPrefix(s, "ssh-"):
		r, err = agessh.ParseRecipient(s)
	case strings.HasPrefix(strings.ToUpper(s), "AGE-SECRET-KEY-"), strings.HasPrefix(s, "-----BEGIN"):
		// Never echo it: it looks like a secret key.
		return nil, errors.New("this is a private key, not a recipient: give its public key (age1... or ssh-...)")
	default:
		return nil, errors.New("unknown recipient type: want an age1, ssh-ed25519 or ssh-rsa public key")
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

// ParseRecipientsFile reads a recipients file like age -R does: one
// recipient per line in any form ParseRecipient accepts, ignoring blank
// lines and lines starting with '#'. Errors name the file and the line.
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
