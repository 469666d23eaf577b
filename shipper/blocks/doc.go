// Package blocks is the one block reader of coldship's send paths: the
// stored send, the incremental comparison and the live rounds all read
// their sources through Read, so that what a block is (its form, its
// digest, its record) and how it is read (only the data extents, only the
// pages that hold data, never a hole) is written once.
//
// Read guarantees:
//
//   - Blocks come out in order of (file, block), whatever the number of
//     workers: runs of blocks wholly inside holes (SEEK_DATA/SEEK_HOLE) as
//     one Hole item each, never read; every other block as one Zero or
//     Data item.
//   - Only the data extents inside a block are read, at 4 KiB page
//     granularity, straight into the buffer of its form
//     (archive.FormBuilder); pages that turn out zero are dropped.
//   - Memory is bounded by the window of batches in flight, whose buffers
//     are allocated once: it does not grow with the size of the sources,
//     their number of blocks, or the number of jobs asked for (see
//     MaxJobs).
//   - A source whose stamp (size, mtime, ctime, inode) differs after its
//     last block was read from the stamp it was opened with, or that ends
//     before its size, fails the read with ErrSourceChanged.
//
// The package never writes anything and never imports package shipper;
// what it shares with it (the progress counters) lives below both.
package blocks
