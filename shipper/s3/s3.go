package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/shipper"
)

// Transport stores objects as keys "<prefix>/<name>" of one bucket.
type Transport struct {
	core     minio.Core // Core embeds *minio.Client: both APIs from one client
	http     *http.Transport
	link     *link // measures the round trip
	bucket   string
	prefix   string // "" or ending in '/'
	endpoint string // for messages: scheme://host
	streams  int
	stderr   io.Writer
	parts    *partPool    // part buffers of all Puts
	reads    *partPool    // chunk buffers of all parallel reads
	gets     atomic.Int32 // GET responses being read, of all Opens

	mu       sync.Mutex
	uploads  map[string]int // multipart uploads in flight in this process, by upload ID
	warnOnce sync.Once

	condMu sync.Mutex
	cond   int // condUnknown, condSupported or condIgnored
}

var _ shipper.Transport = (*Transport)(nil)

// New returns a Transport for cfg. It resolves the credentials (without
// contacting the bucket) and fails with an error wrapping shipper.ErrAuth
// when there are none.
func New(ctx context.Context, cfg Config) (*Transport, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3: no bucket")
	}
	host, secure, err := cfg.endpoint()
	if err != nil {
		return nil, err
	}
	ht, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, err
	}
	// Several objects at once, each with Streams requests: keep their
	// connections for reuse rather than reconnect for every part.
	ht.MaxIdleConnsPerHost = 64
	lookup := minio.BucketLookupAuto
	if cfg.PathStyle {
		lookup = minio.BucketLookupPath
	}
	creds := credentialChain(ht)
	lk := newLink(ht)
	client, err := minio.New(host, &minio.Options{
		Creds:        creds,
		Secure:       secure,
		Transport:    lk,
		Region:       cfg.region(),
		BucketLookup: lookup,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 endpoint %s: %w", host, err)
	}
	v, err := creds.GetWithContext(&credentials.CredContext{Client: &http.Client{Transport: ht}, Context: ctx})
	if err != nil || v.SignerType.IsAnonymous() || v.AccessKeyID == "" || v.SecretAccessKey == "" {
		return nil, fmt.Errorf("s3://%s: no complete S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "+
			"or AWS_PROFILE with a profile in ~/.aws/credentials, or run with an instance or web identity role: %w", cfg.Bucket, shipper.ErrAuth)
	}
	streams := cfg.Streams
	if streams <= 0 {
		streams = DefaultStreams
	}
	stderr := cfg.Stderr
	if stderr == nil {
		stderr = io.Discard
	}
	scheme := "https://"
	if !secure {
		scheme = "http://"
	}
	t := &Transport{
		core:     minio.Core{Client: client},
		http:     ht,
		link:     lk,
		bucket:   cfg.Bucket,
		endpoint: scheme + host,
		streams:  streams,
		stderr:   stderr,
		parts:    newPartPool(partSize, poolBudget/partSize),
		reads:    newPartPool(partSize, readBudget/partSize),
		uploads:  map[string]int{},
	}
	if p := strings.Trim(cfg.Prefix, "/"); p != "" {
		t.prefix = p + "/"
	}
	return t, nil
}

// credentialChain is the standard chain: environment, shared files
// (AWS_PROFILE, AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE; without
// HOME, the credentials file of the password database's home), then
// roles.
func credentialChain(ht *http.Transport) *credentials.Credentials {
	providers := []credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.FileAWSCredentials{Filename: sharedCredentialsFile()},
	}
	// Honour the AWS SDKs' switch so that no request goes to the
	// instance metadata address when there is no such service (tests, CI).
	metadataOff := strings.EqualFold(os.Getenv("AWS_EC2_METADATA_DISABLED"), "true")
	roleEnv := os.Getenv("AWS_WEB_IDENTITY_TOKEN_FILE") != "" ||
		os.Getenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") != "" ||
		os.Getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI") != ""
	if !metadataOff || roleEnv {
		providers = append(providers, &credentials.IAM{Client: &http.Client{Transport: ht}})
	}
	return credentials.NewChainCredentials(providers)
}

func (t *Transport) String() string {
	s := "s3://" + t.bucket + "/" + strings.TrimSuffix(t.prefix, "/")
	if t.endpoint != "https://s3.amazonaws.com" {
		s += " at " + t.endpoint
	}
	return s
}

// Close releases idle connections.
func (t *Transport) Close() error {
	t.http.CloseIdleConnections()
	return nil
}

// key maps an object name to its S3 key.
func (t *Transport) key(name string) (string, error) {
	if err := shipper.CheckName(name); err != nil {
		return "", err
	}
	return t.prefix + name, nil
}

// where names a key for messages.
func (t *Transport) where(key string) string { return "s3://" + t.bucket + "/" + key }

// Stat returns the object's size.
func (t *Transport) Stat(ctx context.Context, name string) (shipper.ObjectInfo, error) {
	key, err := t.key(name)
	if err != nil {
		return shipper.ObjectInfo{}, err
	}
	oi, err := t.core.StatObject(ctx, t.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return shipper.ObjectInfo{}, t.classify("stat", key, t.explainHead(ctx, key, err))
	}
	return shipper.ObjectInfo{Name: name, Size: oi.Size}, nil
}

// List lists the keys under the prefix; keys that are not valid object
// names (directory markers, dot files) are skipped as local skips them.
// The root is listed folder by folder, listParallel folders at once: keys
// come a page of 1,000 a request, one page after the other, and a
// destination of shipments of 2 TiB (33 pages each) would otherwise be
// listed in the time of all their pages, not of the largest's. fn is
// called from one goroutine at a time.
func (t *Transport) List(ctx context.Context, prefix string, fn func(shipper.ObjectInfo) error) error {
	if prefix != "" {
		return t.listKeys(ctx, prefix, fn)
	}
	var mu sync.Mutex
	var fnErr error
	call := func(oi shipper.ObjectInfo) error {
		mu.Lock()
		defer mu.Unlock()
		if fnErr == nil {
			fnErr = fn(oi)
		}
		return fnErr
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(listParallel)
	rootErr := t.listRoot(gctx, call, func(dir string) {
		g.Go(func() error { return t.listKeys(gctx, dir, call) })
	})
	if rootErr != nil && gctx.Err() == nil { // the root's own failure
		cancel()
		g.Wait()
		if fnErr != nil {
			return fnErr
		}
		return rootErr
	}
	werr := g.Wait()
	switch {
	case fnErr != nil:
		return fnErr
	case werr != nil:
		return werr
	}
	return rootErr
}

// listParallel is how many folders List lists at once.
const listParallel = 16

// listKeys lists the keys under prefix, one page after the other.
func (t *Transport) listKeys(ctx context.Context, prefix string, fn func(shipper.ObjectInfo) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the listing goroutine when fn fails
	opts := minio.ListObjectsOptions{Prefix: t.prefix + prefix, Recursive: true}
	for oi := range t.core.ListObjectsIter(ctx, t.bucket, opts) {
		if oi.Err != nil {
			return t.classify("list", t.prefix+prefix, oi.Err)
		}
		name, ok := strings.CutPrefix(oi.Key, t.prefix)
		if !ok || shipper.CheckName(name) != nil {
			continue
		}
		if err := fn(shipper.ObjectInfo{Name: name, Size: oi.Size}); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// listRoot lists the root with the delimiter '/': its objects go to fn,
// and the name of each folder ("name/") to folder.
func (t *Transport) listRoot(ctx context.Context, fn func(shipper.ObjectInfo) error, folder func(dir string)) error {
	opts := minio.ListObjectsOptions{Prefix: t.prefix, Recursive: false}
	for oi := range t.core.ListObjectsIter(ctx, t.bucket, opts) {
		if oi.Err != nil {
			return t.classify("list", t.prefix, oi.Err)
		}
		name, ok := strings.CutPrefix(oi.Key, t.prefix)
		if !ok {
			continue
		}
		if strings.HasSuffix(name, "/") {
			folder(name)
			continue
		}
		if shipper.CheckName(name) != nil {
			continue
		}
		if err := fn(shipper.ObjectInfo{Name: name, Size: oi.Size}); err != nil {
			return err
		}
	}
	return ctx.Err()
}

var _ shipper.FolderLister = (*Transport)(nil)

// ListFolders names the folders at the prefix (the common prefixes of a
// listing with the delimiter '/'), but those whose names start with '.':
// choosing the latest shipment then lists one key per shipment rather
// than every segment of every shipment (a page of 1,000 keys a request:
// 33 requests for each shipment of 2 TiB).
func (t *Transport) ListFolders(ctx context.Context, fn func(name string) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the listing goroutine when fn fails
	opts := minio.ListObjectsOptions{Prefix: t.prefix, Recursive: false}
	for oi := range t.core.ListObjectsIter(ctx, t.bucket, opts) {
		if oi.Err != nil {
			return t.classify("list", t.prefix, oi.Err)
		}
		rest, _ := strings.CutPrefix(oi.Key, t.prefix)
		name, ok := strings.CutSuffix(rest, "/")
		if !ok || strings.HasPrefix(name, ".") || shipper.CheckName(name) != nil {
			continue // an object at the prefix, or not a name of ours
		}
		if err := fn(name); err != nil {
			return err
		}
	}
	return ctx.Err()
}

var _ shipper.SkippingLister = (*Transport)(nil)

// ListSkipping is List without listing the folders that skip names: a
// listing with the delimiter '/' of each folder but those.
func (t *Transport) ListSkipping(ctx context.Context, prefix string, skip func(string) bool, fn func(shipper.ObjectInfo) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the listing goroutine when fn fails
	dir := prefix[:strings.LastIndex(prefix, "/")+1]
	return t.listFolder(ctx, dir, prefix, skip, fn)
}

// listFolder lists the folder dir ("" or ending in '/') and, one after
// the other, the folders in it that are not skipped and can hold names
// starting with prefix.
func (t *Transport) listFolder(ctx context.Context, dir, prefix string, skip func(string) bool, fn func(shipper.ObjectInfo) error) error {
	var sub []string
	opts := minio.ListObjectsOptions{Prefix: t.prefix + dir, Recursive: false}
	for oi := range t.core.ListObjectsIter(ctx, t.bucket, opts) {
		if oi.Err != nil {
			return t.classify("list", t.prefix+dir, oi.Err)
		}
		name, _ := strings.CutPrefix(oi.Key, t.prefix)
		if folder, ok := strings.CutSuffix(name, "/"); ok {
			if !skip(folder) && (strings.HasPrefix(name, prefix) || strings.HasPrefix(prefix, name)) {
				sub = append(sub, name)
			}
			continue
		}
		if !strings.HasPrefix(name, prefix) || shipper.CheckName(name) != nil {
			continue
		}
		if err := fn(shipper.ObjectInfo{Name: name, Size: oi.Size}); err != nil {
			return err
		}
	}
	for _, d := range sub {
		if err := t.listFolder(ctx, d, prefix, skip, fn); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// Delete removes the object and aborts multipart uploads of its key left by
// a process that died during a Put.
func (t *Transport) Delete(ctx context.Context, name string) error {
	key, err := t.key(name)
	if err != nil {
		return err
	}
	if err := t.core.RemoveObject(ctx, t.bucket, key, minio.RemoveObjectOptions{}); err != nil {
		if err := t.classify("delete", key, err); !errors.Is(err, shipper.ErrNotFound) {
			return err
		}
	}
	return t.abortStale(ctx, key)
}
