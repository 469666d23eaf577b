// Package shipper moves shipments between a source and a destination.
//
// It owns the Transport interface (the contract every destination
// implements: local directory, SFTP, S3), the send and receive orchestration
// that drives the archive format over a Transport, and the wrappers that add
// retries and concurrency limits around a Transport.
//
// It must never know the details of one destination (those live in
// shipper/local, shipper/sftp and shipper/s3) and never handle plaintext keys
// other than through package cipher.
package shipper
