// Package cipher owns coldship's cryptography: the record layer that seals
// every block and stream of a shipment, and the wrapping of the shipment key
// to the recipients who may open it.
//
// The record layer is c2sp.org/chunked-encryption instantiated as
// Cobblestone-256 (HKDF-SHA-512 and AES-256-GCM, with key commitment). Its
// wire format lives in cipher/internal/cobblestone; callers see only [Key]
// and its Seal, Open, NewWriter and NewReader methods, whose context argument
// binds each record to where it belongs so records can't be swapped.
//
// A shipment [Key] is 32 random bytes. It is stored only wrapped: as a small
// age file (filippo.io/age) encrypted to X25519, post-quantum hybrid, SSH
// (ssh-ed25519, ssh-rsa) or passphrase recipients, whose payload is the key.
//
// Shipments may also be signed: [Sign] makes an OpenSSH SSH signature
// (SSHSIG, github.com/hiddeco/sshsig, namespace "coldship") with any
// x/crypto/ssh signer, ssh-agent keys included, and [AllowedSigners]
// (OpenSSH's allowed_signers file) says whether a signature is by a key the
// receiver trusts. Both interoperate with `ssh-keygen -Y sign|verify`.
//
// Errors callers branch on: [ErrIntegrity] for data that was tampered with,
// corrupted or truncated, [ErrNoIdentity] when none of the given
// identities or passphrases can unwrap a key, and [ErrUnsigned],
// [ErrBadSignature] and [ErrUntrustedSigner] for signatures.
//
// The package imports nothing of coldship's. It must never write a key or
// identity to disk, never log, and never put secret material (keys,
// passphrases, identity lines) in an error message or a String or Format
// result.
package cipher
