// Package sftp is the Transport for an SFTP destination reached over SSH:
// `coldship send --to sftp://user@host/path`.
//
// It owns the SSH side of a shipment's journey: resolving the destination
// through ssh_config the way OpenSSH does (jump hosts and proxy commands
// included), authenticating with the agent or key files, checking every
// server's host key against known_hosts, and keeping enough SFTP channels
// busy, several to an SSH connection, that a long fat link is not limited
// by one channel's flow-control window.
//
// It must never accept an unknown or changed host key silently (an unknown
// key is added only when the user asked for it with AcceptNewHostKey, a
// changed key is always refused), never put a passphrase or private key in
// an error or a message, and never make an object visible under its final
// name before all of its bytes are stored: every Put goes to a dot-prefixed
// temporary that is synced and then renamed (PutNew: hard-linked, so that
// an existing object is never replaced).
package sftp
