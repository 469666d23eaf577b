// Package s3 is the Transport for an S3 bucket and prefix: the destination
// of `coldship send --to s3://bucket/prefix` on AWS or any S3-compatible
// store (MinIO, Ceph RGW, Versity S3 Gateway, ...).
//
// It owns the mapping of object names to keys under the prefix, the
// endpoint as the AWS CLI finds it (flag, environment, AWS config file),
// multipart uploads with per-part CRC32C checksums, exclusive creation
// (PutNew: If-None-Match, or a check before and after where the server
// lacks it), the listing and aborting of unfinished uploads, the buffer
// pools that bound the memory of all uploads and reads of one Transport,
// ranged reads, the requests in flight chosen from the measured round
// trip, and the classification of S3 errors into shipper.ErrNotFound,
// ErrPermanent, ErrAuth and ErrObjectExists.
//
// It must never take credentials from the command line or print them:
// credentials come only from the standard chain (environment, the shared
// AWS credentials and config files, instance or web identity roles). It
// never retries whole objects itself; that is the job of the retry wrapper
// in package shipper (the S3 client retries single requests).
package s3
