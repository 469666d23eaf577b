// Package archive owns the shipment format: the object names and layout of
// a shipment, its plaintext header and inventory, its sealed manifest, how
// files are cut into blocks (data, hole, zero), how a block is sealed and
// bound to its place, and the digests that prove a restore exact.
// docs/FORMAT.md specifies every byte.
//
// It seals and opens only through package cipher and never talks to a
// destination: moving objects is package shipper's job.
package archive
