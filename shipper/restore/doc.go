// Package restore is the one place where coldship writes restored files.
// Every receive path (receive --out, receive --into, receive --live, and
// --out-device) hands it opened, checked blocks; none of them writes a file
// itself. It owns everything between an opened block and a file at its
// final name.
//
// A Writer guarantees:
//
//   - Nothing is at a final name until all of it checks out. Each file is
//     written to a temporary file beside its final name (.NAME.coldship-
//     and 12 hex digits; an update moves the file aside to
//     .NAME.coldship-update), created with O_EXCL. Every file is synced, its
//     whole-file digest is computed from the digests of the blocks it holds
//     (archive.FileDigester, in index order) and compared with the
//     manifest, and so are its data bytes (format 3); a Finalize hook may
//     then adjust it; only when every file of the shipment has passed are
//     they renamed into place, the folders synced, and the restore marker
//     written. A failure leaves every final name as it was.
//   - Symbolic links are never followed inside the output folder: every
//     folder on the way to a file is opened component by component with
//     O_NOFOLLOW, and temporary files are created and reopened with
//     O_NOFOLLOW; a link planted at a temporary name or at a parent makes
//     the restore fail (or, for a temporary name of its own, be removed and
//     replaced), never write through it.
//   - Sparse to the page: only the non-zero 4 KiB pages of a block are
//     written (archive.WalkForm, archive.WalkDense); holes stay holes. Where
//     the file may already hold data (an update, a later live round, a
//     resumed receive), zero runs are punched (FALLOC_FL_PUNCH_HOLE) or,
//     where the file system cannot, written as zeros.
//   - One read-back policy: every block is checked against its digest as
//     it is opened, before it is written; files and folders are synced;
//     with Options.ReadBack, every block written is read again after the
//     sync, with the page cache dropped, and checked against its digest.
//   - Memory does not grow with the image: per-block state lives in a
//     blocks file per restored file (SlotSize bytes per block, pread and
//     pwrite), not in memory.
//   - An interrupted receive is recorded: a fresh receive records its
//     temporary files (and their blocks files) before it creates them, so a
//     later Writer for the same shipment reuses every block already written
//     whose digest checks on disk, and a Writer for anything else removes
//     them. Temporary files that no record names (a receive killed before
//     it recorded them, older versions) are removed too.
//   - Backing chains: a qcow2 overlay whose manifest entry names its
//     backing file (archive.File's Backing) is pointed at where that file
//     was restored, by a relative name within the output folder (a
//     device's path with --out-device), before it lands; an included
//     overlay brings its layers. See backing.go for how updates keep the
//     rewritten header.
//   - Ownership, modes and times: permission bits and mtimes as the
//     manifest has them; numeric owner and group (format 3) when running
//     as root, unless Options.NoSameOwner; otherwise files belong to the
//     user running the receive.
//
// The caller holds no lock: Open takes an exclusive flock on the output
// folder itself for the Writer's lifetime, so that two receives into one
// folder never remove each other's temporary files.
//
// It must never talk to a destination, open a record or know a key.
package restore
