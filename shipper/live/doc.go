// Package live streams a shipment straight into a receiver (coldship send
// --live): the sender seals the same Cobblestone block records as a stored
// shipment and writes them over the SSH channel that started `coldship
// receive --live` on the destination, or over direct TCP connections, and
// the receiver opens them as they arrive and writes them at their offsets
// into temporary files. No ciphertext is ever at rest. For a VM that is
// still running, pre-copy rounds send everything first and then only the
// blocks that changed, so that the VM is paused only for the last round.
//
// The package owns the protocol (frames, the key handoff, lanes and their
// binding to the session, rounds, heartbeats, the manifest of a session) and both
// engines: Send and Receive. StartRemote runs the receiver over an SSH
// connection. docs/LIVE.md specifies every byte.
//
// The shipment key is fresh for every session and travels only inside the
// SSH channel, and even there only wrapped (age, X25519) for an ephemeral
// key that the receiver made for this session alone. It is never on a
// command line, in an environment variable or on disk. TCP lanes carry
// sealed records and nothing else, and the receiver trusts nothing that
// arrives on them until it opens: every record is bound to its shipment,
// lane, position in the lane and round, so that a record tampered with,
// replayed, reordered, dropped or injected fails with archive.ErrIntegrity
// and nothing is renamed into place.
//
// The package never runs hooks or decides exit statuses: the command does,
// through the callbacks of SendOptions and ReceiveOptions.
package live
