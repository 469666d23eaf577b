// Package archive owns the shipment format: the object names and layout of
// a shipment, its plaintext header and inventory, its sealed manifest, how
// files are cut into blocks (data, hole, zero), how a block is sealed and
// bound to its place, and the digests that prove a restore exact.
// docs/FORMAT.md specifies every byte.
//
// It also knows what it ships: sources (files, directories, block devices
// read as raw images of their size) and disk image headers, which it parses
// itself (qcow2, vmdk descriptors; image.go, qcow2.go) to follow backing
// chains as QEMU does (chain.go) and to rewrite a qcow2's backing file
// reference in place (RewriteBacking). It treats every header as hostile:
// bounded reads, every offset checked.
//
// It seals and opens only through package cipher and never talks to a
// destination: moving objects is package shipper's job.
package archive
