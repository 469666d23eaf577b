package cipher

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"filippo.io/age"
	"filippo.io/age/armor"
)

// ErrNoIdentity means none of the identities or passphrases given can unwrap
// the key: the wrong key file or passphrase. The command maps it to exit
// status 4.
var ErrNoIdentity = errors.New("no identity matches")

// Wrap encrypts the key to recipients as a small binary age file whose
// payload is the 32 key bytes. Every recipient can unwrap it on its own.
func (k *Key) Wrap(recipients ...age.Recipient) ([]byte, error) {
	if err := CheckRecipients(recipients); err != nil {
		return nil, fmt.Errorf("wrap key: %w", err)
	}
	var buf bytes.Buffer
	w, err := age.Encrypt(&buf, recipients...)
	if err != nil {
		return nil, fmt.Errorf("wrap key: %w", err)
	}
	if _, err := w.Write(k.b[:]); err != nil {
		return nil, fmt.Errorf("wrap key: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("wrap key: %w", err)
	}
	return buf.Bytes(), nil
}

// CheckRecipients reports whether recipients can wrap a key together. age
// requires a passphrase to be the only recipient, and post-quantum
// recipients not to be mixed with classic ones, which would defeat them.
// Wrap calls it; callers that combine recipients from several flags can
// call it early for a clearer error.
func CheckRecipients(recipients []age.Recipient) error {
	if len(recipients) == 0 {
		return errors.New("no recipients")
	}
	var scrypt, hybrid int
	for _, r := range recipients {
		switch r.(type) {
		case nil:
			return errors.New("nil recipient")
		case *age.ScryptRecipient:
			scrypt++
		case *age.HybridRecipient:
			hybrid++
		}
	}
	if scrypt > 0 && len(recipients) > 1 {
		return errors.New("a passphrase must be the only recipient; it can't be combined with keys or another passphrase")
	}
	if hybrid > 0 && hybrid < len(recipients) {
		return errors.New("post-quantum recipients (age1pq1...) can't be mixed with other recipient types")
	}
	return nil
}

// UnwrapKey decrypts a key wrapped by Wrap (binary or ASCII-armored) with
// the first of identities that matches. If none matches, or a passphrase is
// wrong, the error wraps ErrNoIdentity; if wrapped is malformed or its
// payload is not a key, the error wraps ErrIntegrity. Errors from asking
// for an SSH key passphrase are returned as they are.
func UnwrapKey(wrapped []byte, identities ...age.Identity) (*Key, error) {
	if len(identities) == 0 {
		return nil, fmt.Errorf("unwrap key: no identities given: %w", ErrNoIdentity)
	}
	var src io.Reader = bytes.NewReader(wrapped)
	if bytes.HasPrefix(bytes.TrimSpace(wrapped), []byte(armor.Header)) {
		src = armor.NewReader(src)
	}
	r, err := age.Decrypt(src, identities...)
	var noMatch *age.NoIdentityMatchError
	var askErr *askPassError
	var wrongPass *wrongPassphraseError
	switch {
	case errors.As(err, &wrongPass):
		return nil, fmt.Errorf("unwrap key: %w: %v", ErrNoIdentity, wrongPass)
	case errors.As(err, &noMatch) && wrongPassphrase(noMatch.StanzaTypes, identities):
		return nil, fmt.Errorf("unwrap key: %w: wrong passphrase", ErrNoIdentity)
	case errors.As(err, &noMatch):
		return nil, fmt.Errorf("unwrap key: %w (key is wrapped to: %s)",
			ErrNoIdentity, strings.Join(noMatch.StanzaTypes, ", "))
	case errors.As(err, &askErr):
		return nil, fmt.Errorf("unwrap key: %w", askErr.err)
	case err != nil:
		return nil, fmt.Errorf("unwrap key: %w: %v", ErrIntegrity, err)
	}
	payload, err := io.ReadAll(io.LimitReader(r, int64(len(Key{}.b))+1))
	defer clear(payload)
	if err != nil {
		return nil, fmt.Errorf("unwrap key: %w: %v", ErrIntegrity, err)
	}
	if len(payload) != len(Key{}.b) {
		return nil, fmt.Errorf("unwrap key: %w: payload is not a %d-byte key", ErrIntegrity, len(Key{}.b))
	}
	return keyOf(payload), nil
}

// wrongPassphrase says whether a key wrapped to stanzaTypes that none of
// identities could unwrap was wrapped to a passphrase that was given:
// then the passphrase is wrong, which says more than "no identity
// matches". age allows a passphrase only as the only recipient.
func wrongPassphrase(stanzaTypes []string, identities []age.Identity) bool {
	if len(stanzaTypes) != 1 || stanzaTypes[0] != "scrypt" {
		return false
	}
	for _, id := range identities {
		if _, ok := id.(*age.ScryptIdentity); ok {
			return true
		}
	}
	return false
}
