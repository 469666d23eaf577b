// Package crashtest is coldship's crash-consistency driver. It runs the
// built coldship binary's send and receive against a destination, stops
// them at seeded points chosen by the bytes the process has moved (the
// rchar and wchar of /proc/PID/io, which count file and socket reads and
// writes alike), never by sleeping, then runs the same command again and
// checks what the two runs leave: the result restores bit for bit, nothing
// is at a final name before success, no temporary file, unfinished upload
// or unreferenced object is left, and the rerun sends again at most about
// one segment per stream of what the killed run had completed.
//
// It also damages what a rerun trusts (the resume journal in the state
// directory, with or without its MAC recomputed; segments already at the
// destination; a receive's blocks files) and checks that coldship never
// exits 0 with a shipment that does not restore.
//
// The driver reads the documented formats (docs/FORMAT.md: the resume
// journal, the inventory, the restore marker and the resume record of a
// receive) with code of its own, not coldship's, so that a change to
// either side that breaks the documented format shows. It talks to the
// destination beside coldship (a folder on disk for local and SFTP
// destinations, an S3 client for S3), never through coldship's transports.
//
// It only signals processes it started, through their os.Process.
package crashtest
