package cipher

import (
	"errors"
	"os"
	"strings"
	"testing"

	"filippo.io/age"
)

// TestParseIdentityFilePublicKey gives ParseIdentityFile a public key where
// the private key belongs: the error says so, with the file and line.
func TestParseIdentityFilePublicKey(t *testing.T) {
	ed := sshIdentity(t, "ed25519", nil, nil)
	x := x25519Identity(t)
	secret, _, _ := GenerateIdentity()
	for name, tc := range map[string]struct {
		content string
		want    string
	}{
		"ssh .pub":     {ed.recipient, "line 1: this is an SSH public key, not an identity: give its private key"},
		"age1":         {"# public key\n\n" + x.recipient + "\n", "line 3: this is an age public key (age1...), not an identity"},
		"after a key":  {secret + "\n" + x.recipient + "\n", "line 2: this is an age public key"},
		"unknown":      {"# mine\nhunter2\n", "line 2: unknown identity type"},
		"empty":        {"# nothing\n", "no identities"},
		"garbled last": {secret + "\n" + secret[:30] + "x" + secret[31:] + "\n", "line 2: malformed secret key"},
	} {
		file := writeFile(t, "identity", tc.content)
		_, err := ParseIdentityFile(file, nil)
		if err == nil || !strings.Contains(err.Error(), "identity file "+file) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming %s and saying %q", name, err, file, tc.want)
			continue
		}
		if strings.Contains(err.Error(), secret[16:]) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: error shows a secret: %v", name, err)
		}
	}

	// Comments, blank lines and spaces around a key are fine, as are
	// several keys.
	y := x25519Identity(t)
	file := writeFile(t, "identity", "# two keys\r\n  "+secret+"  \r\n\n"+strings.TrimSpace(readFile(t, y.file))+"\n")
	ids, err := ParseIdentityFile(file, nil)
	if err != nil || len(ids) != 2 {
		t.Fatalf("two identities: %d, %v", len(ids), err)
	}
	wrapUnwrap(t, newKey(t), []age.Recipient{parseRecipient(t, y.recipient)}, ids...)
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestWrongPassphraseSaysSo: a passphrase that does not unwrap a key
// wrapped to a passphrase is a wrong passphrase; an identity that does not
// is still "no identity matches", with what the key is wrapped to.
func TestWrongPassphraseSaysSo(t *testing.T) {
	k := newKey(t)
	r, _ := PassphraseRecipient([]byte("correct horse battery staple"))
	wrapped, err := k.Wrap(lowScrypt(t, r))
	if err != nil {
		t.Fatal(err)
	}
	bad, _ := PassphraseIdentity([]byte("wrong horse"))
	x := x25519Identity(t)
	for name, tc := range map[string]struct {
		ids  []age.Identity
		want string
	}{
		"passphrase":          {[]age.Identity{bad}, "unwrap key: no identity matches: wrong passphrase"},
		"identity and phrase": {append(x.ids, bad), "unwrap key: no identity matches: wrong passphrase"},
		"identity":            {x.ids, "unwrap key: no identity matches (key is wrapped to: scrypt)"},
	} {
		_, err := UnwrapKey(wrapped, tc.ids...)
		if !errors.Is(err, ErrNoIdentity) || err.Error() != tc.want {
			t.Errorf("%s: %v, want %q matching ErrNoIdentity", name, err, tc.want)
		}
	}

	// An identity that does not match a key wrapped to it is not a wrong
	// passphrase, even with a passphrase given.
	y := x25519Identity(t)
	wrapped, _ = k.Wrap(parseRecipient(t, y.recipient))
	if _, err := UnwrapKey(wrapped, append(x.ids, bad)...); err == nil || strings.Contains(err.Error(), "passphrase") {
		t.Errorf("key wrapped to X25519: %v", err)
	}
}
