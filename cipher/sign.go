package cipher

import (
	"bytes"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/hiddeco/sshsig"
	"golang.org/x/crypto/ssh"
)

// SignatureNamespace is the SSHSIG namespace of every coldship signature
// (`ssh-keygen -Y sign -n coldship`): a signature made for git or for file
// signing never passes for a shipment's, nor the other way round.
const SignatureNamespace = "coldship"

// signatureHash is what ssh-keygen -Y sign uses by default.
const signatureHash = sshsig.HashSHA512

// maxArmoredSignature bounds an armored signature. The largest OpenSSH
// signature (RSA-16384 with its public key) armors to under 6 KiB.
const maxArmoredSignature = 64 << 10

// Errors of signature checks, for callers that branch on them; the command
// maps all three to exit status 4.
var (
	// ErrUnsigned means there is no signature at all.
	ErrUnsigned = errors.New("not signed")
	// ErrBadSignature means a signature is malformed, made for another
	// namespace, or does not verify over the message.
	ErrBadSignature = errors.New("bad signature")
	// ErrUntrustedSigner means a signature verifies, but with a key the
	// allowed signers do not trust for coldship at this time.
	ErrUntrustedSigner = errors.New("signer is not trusted")
)

// Sign returns the armored SSH signature (OpenSSH's SSHSIG format,
// namespace "coldship", SHA-512) of message by signer: what
// `ssh-keygen -Y sign -n coldship` writes, which `ssh-keygen -Y verify`
// checks. signer may be a key held in ssh-agent. An RSA key signs with
// rsa-sha2-512. The signature is checked as a receiver checks it: one
// that does not verify (an agent that signs with SHA-1 or with another
// key) is an error, not a signed shipment every receiver refuses.
func Sign(signer ssh.Signer, message []byte) ([]byte, error) {
	sig, err := sshsig.Sign(bytes.NewReader(message), signer, signatureHash, SignatureNamespace)
	if err != nil {
		return nil, fmt.Errorf("sign with %s key %s: %w", signer.PublicKey().Type(), ssh.FingerprintSHA256(signer.PublicKey()), err)
	}
	armored := sshsig.Armor(sig)
	if _, err := parseSignature(message, armored); err != nil {
		return nil, fmt.Errorf("sign with %s key %s: the signature it made does not verify: %v",
			signer.PublicKey().Type(), ssh.FingerprintSHA256(signer.PublicKey()), err)
	}
	return armored, nil
}

// parseSignature decodes an armored signature strictly: one PEM block of
// type "SSH SIGNATURE" without headers, nothing around it but white space,
// of namespace coldship, and verifying over message with the public key it
// carries. Which key that is, and whether it is trusted, is for the caller.
// Errors wrap ErrUnsigned or ErrBadSignature.
func parseSignature(message, armored []byte) (*sshsig.Signature, error) {
	trimmed := bytes.TrimSpace(armored)
	switch {
	case len(trimmed) == 0:
		return nil, ErrUnsigned
	case len(armored) > maxArmoredSignature:
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrBadSignature, maxArmoredSignature)
	case !bytes.HasPrefix(trimmed, []byte("-----BEGIN "+sshsig.PEMType+"-----")):
		return nil, fmt.Errorf("%w: not an armored SSH signature", ErrBadSignature)
	}
	block, rest := pem.Decode(trimmed)
	if block == nil || block.Type != sshsig.PEMType || len(block.Headers) > 0 || len(rest) > 0 {
		return nil, fmt.Errorf("%w: malformed armor", ErrBadSignature)
	}
	sig, err := sshsig.ParseSignature(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	if sig.Namespace != SignatureNamespace {
		return nil, fmt.Errorf("%w: made for namespace %q, not %q", ErrBadSignature, printable(sig.Namespace), SignatureNamespace)
	}
	// sshsig refuses SHA-1 RSA signatures of plain RSA keys; do the same
	// for RSA certificates, whose type it does not recognise as RSA.
	if c, ok := sig.PublicKey.(*ssh.Certificate); ok && c.Key.Type() == ssh.KeyAlgoRSA &&
		sig.Signature.Format != ssh.KeyAlgoRSASHA256 && sig.Signature.Format != ssh.KeyAlgoRSASHA512 {
		return nil, fmt.Errorf("%w: RSA signature algorithm %q", ErrBadSignature, printable(sig.Signature.Format))
	}
	if err := sshsig.Verify(bytes.NewReader(message), sig, sig.PublicKey, sig.HashAlgorithm, SignatureNamespace); err != nil {
		return nil, fmt.Errorf("%w: does not verify with its %s key %s", ErrBadSignature, sig.PublicKey.Type(), ssh.FingerprintSHA256(sig.PublicKey))
	}
	return sig, nil
}

// printable keeps untrusted strings short and free of control characters
// in messages.
func printable(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}
