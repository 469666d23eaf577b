// Package s3 is the Transport for an S3 bucket and prefix: the destination
// of `coldship send --to s3://bucket/prefix` on AWS or any S3-compatible
// store (MinIO, Ceph RGW, Versity S3 Gateway, ...).
//
// It owns the mapping of object names to keys under the prefix, multipart
// uploads with per-part CRC32C checksums, the buffer pool that bounds the
// memory of all uploads of one Transport, ranged reads, and the
// classification of S3 errors into shipper.ErrNotFound, shipper.ErrPermanent
// and shipper.ErrAuth.
//
// It must never take credentials from the command line or print them:
// credentials come only from the standard chain (environment, the shared
// AWS credentials and config files, instance or web identity roles). It
// never retries whole objects itself; that is the job of the retry wrapper
// in package shipper (the S3 client retries single requests).
package s3
