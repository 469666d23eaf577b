// Package hooks runs the commands that surround a shipment (pre-send,
// post-send, pre-receive, post-receive, pre-switchover, on-failure), makes
// the powered-off safety checks before an image is read, and drives
// libvirt through virsh at both ends of a migration.
//
// It must never read or write shipment data: it only decides whether a
// phase may go on, and finds or defines what is shipped.
//
// # Hooks
//
// A phase runs, in this order, and stops at the first failure:
//
//   - the --hook PHASE=COMMAND flags of that phase, in the order given, each
//     with /bin/sh -c COMMAND;
//   - DIR/PHASE, if it is an executable regular file (--hooks-dir DIR);
//   - the entries of DIR/PHASE.d/ in lexical (byte) order, like run-parts:
//     names starting with "." or ending in "~" are ignored; any other entry
//     that is not an executable regular file is skipped with a note on
//     stderr, so that a hook missing its x bit does not go unnoticed.
//
// Files run directly, so they need a #! line. A hook gets coldship's
// environment without COLDSHIP_PASSPHRASE (neither hooks nor virsh see
// that secret), plus COLDSHIP_PHASE, COLDSHIP_SHIPMENT, COLDSHIP_DEST,
// COLDSHIP_OUT (receive), COLDSHIP_FILES (one path a line) and
// COLDSHIP_ERROR (on-failure); a variable with nothing to say is unset.
// Its standard input is /dev/null; its standard output and error go to
// coldship's stderr, each line prefixed "[PHASE] ". It runs in a process
// group of its own, which is killed (SIGKILL) when the hook outlives
// --hook-timeout or coldship is interrupted.
//
// # Powered-off safety
//
// CheckNotInUse refuses an image that another process holds an fcntl lock
// on (QEMU locks the images of a running VM) or has open for writing, and
// a block device that is mounted or claimed (an O_EXCL open fails);
// CheckNotWritten lets readers of a shared backing file be;
// CheckDeviceFree refuses a restore target device that anything uses.
// Every such refusal matches ErrBusy (exit status 6). (An image that
// changes while it is read is caught by the send pipeline: archive.Stamp.)
//
// # libvirt
//
// Libvirt runs virsh (Debian's libvirt-clients): it finds a domain's
// file and block disks, their <backingStore> chains and its NVRAM file in
// its persistent definition, waits for a shutdown, and defines and starts
// the domain at the destination once RewriteDisks has pointed its
// definition at where the images landed.
// Commands that depend on each other run in one virsh invocation, which
// libvirt's test driver (state per connection) needs.
package hooks
