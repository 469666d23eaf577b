package shipper

import (
	"context"
	"errors"
	"io"
	"strings"
	"time"
)

// ErrNotFound is returned (wrapped) by a Transport when an object does not exist.
var ErrNotFound = errors.New("object not found")

// ErrPermanent marks a transport error that retrying cannot fix: permission
// denied, a full disk, a missing bucket. Transports wrap such errors with it
// so the retry wrapper gives up at once.
var ErrPermanent = errors.New("permanent error")

// ErrAuth marks an authentication failure of the transport itself: an unknown
// or changed host key, a rejected user key, wrong credentials.
var ErrAuth = errors.New("authentication failed")

// ErrNotRegular is returned (wrapped) by Stat and Open when something
// other than an object (a folder) has the name.
var ErrNotRegular = errors.New("not a regular file")

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Name string // slash-separated, relative to the transport's root
	Size int64
}

// Transport stores the objects of shipments under one root (a directory, an
// SFTP path, an S3 bucket and prefix). Names are slash-separated relative
// paths such as "20261121T233000Z-3f9a1c2e/segments/00000001"; a name never
// starts with '/' and never contains "." or ".." elements or empty elements.
//
// Every implementation guarantees:
//
//   - Atomic put: an object appears under its final name only once all of its
//     bytes are durably stored (temporary name, sync, rename, or the store's
//     own atomic commit). A failed or cancelled Put leaves nothing under the
//     final name; it may leave a temporary that a later Put of the same name
//     or Delete removes or overwrites.
//   - Put replaces an existing object of the same name atomically.
//   - Read-after-write: once Put returns nil, Stat, Open and List see the
//     object with its full size.
//   - Not found is reported as an error wrapping ErrNotFound, never as an
//     empty object.
//   - All methods are safe for concurrent use.
//   - Errors name the object (or the destination) they concern: callers
//     add what the object is for, not its name again.
type Transport interface {
	// Put stores r under name. size is the number of bytes r yields, or -1
	// when unknown. Put reads r until io.EOF; it fails if r yields a
	// different number of bytes than a non-negative size.
	Put(ctx context.Context, name string, r io.Reader, size int64) error

	// Open returns a reader of length bytes of the object starting at
	// offset. length -1 means to the end of the object.
	Open(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error)

	// Stat returns the object's size.
	Stat(ctx context.Context, name string) (ObjectInfo, error)

	// List calls fn for every object whose name starts with prefix, in no
	// particular order. Temporaries of unfinished Puts are not listed.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error

	// Delete removes the object. Deleting a missing object is not an error.
	Delete(ctx context.Context, name string) error

	// Close releases connections. It does not delete anything.
	Close() error

	// String names the destination for messages, without secrets.
	String() string
}

// FolderLister is implemented by transports whose listing walks folders
// (SFTP: a folder read is four round trips): ListFolders names the folders
// at the root, in one folder read, so that choosing the latest shipment
// need not read the folder of each (see listByFolder). A wrapper whose
// transport cannot fails with errors.ErrUnsupported, before calling fn.
type FolderLister interface {
	ListFolders(ctx context.Context, fn func(name string) error) error
}

// SkippingLister is implemented by transports whose listing reads folder
// after folder (SFTP: 100 names a round trip; S3: 1,000 keys a request):
// ListSkipping is List but for the objects under the folders that skip
// names (relative to the root, without a trailing slash), which it does
// not read, so that checking a shipment's signature does not list its
// segments (32,768 of them in a shipment of 2 TiB). A wrapper whose
// transport cannot fails with errors.ErrUnsupported, before calling fn.
type SkippingLister interface {
	ListSkipping(ctx context.Context, prefix string, skip func(folder string) bool, fn func(ObjectInfo) error) error
}

// listSkipping is SkippingLister's ListSkipping where tr has it, and List
// without the objects under the folders skipped otherwise.
func listSkipping(ctx context.Context, tr Transport, prefix string, skip func(string) bool, fn func(ObjectInfo) error) error {
	if sl, ok := tr.(SkippingLister); ok {
		if err := sl.ListSkipping(ctx, prefix, skip, fn); !errors.Is(err, errors.ErrUnsupported) {
			return err
		}
	}
	return tr.List(ctx, prefix, func(oi ObjectInfo) error {
		for i := range len(oi.Name) {
			if oi.Name[i] == '/' && skip(oi.Name[:i]) {
				return nil
			}
		}
		return fn(oi)
	})
}

// GatedPutter is implemented by transports whose Put spends round trips
// before the object takes its name (SFTP: create, write, sync, then
// rename): PutGated does all of that at once but gives the object its name
// only once ready has returned nil, so that an object that must land after
// others (a shipment's manifest) costs one round trip after them instead
// of four. If ready fails, nothing appears under name and PutGated returns
// ready's error as it is. ready is called at most once.
type GatedPutter interface {
	PutGated(ctx context.Context, name string, r io.Reader, size int64, ready func() error) error
}

// putGated is GatedPutter's PutGated where tr has it, and ready followed
// by Put otherwise.
func putGated(ctx context.Context, tr Transport, name string, r io.Reader, size int64, ready func() error) error {
	if gp, ok := tr.(GatedPutter); ok {
		return gp.PutGated(ctx, name, r, size, ready)
	}
	if err := ready(); err != nil {
		return err
	}
	return tr.Put(ctx, name, r, size)
}

// TemporaryRemover is implemented by transports whose interrupted Puts can
// leave temporaries behind when the process dies (a local directory, an
// SFTP server). RemoveTemporaries deletes the temporaries under the folder
// dir (a shipment's id); a resumed send calls it once complete.
type TemporaryRemover interface {
	RemoveTemporaries(ctx context.Context, dir string) error
}

// IsTemporary reports whether a base name is that of a Put's temporary:
// "." + final name + ".tmp-" + 12 hex digits.
func IsTemporary(base string) bool {
	i := strings.LastIndex(base, ".tmp-")
	if !strings.HasPrefix(base, ".") || i < 1 || len(base)-i-5 != 12 {
		return false
	}
	for _, c := range base[i+5:] {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return false
		}
	}
	return true
}

// ErrObjectExists is returned (wrapped) by PutNew when an object of that
// name already exists: nothing was written.
var ErrObjectExists = errors.New("object already exists")

// ExclusiveCreator is implemented by transports that can create an object
// only where none exists (key slots must never be overwritten: a rerun that
// overwrote one would destroy the key of segments already uploaded).
//
// PutNew has Put's guarantees (atomic, read-after-write), and in addition:
// if an object of that name exists, or appears while PutNew runs, PutNew
// fails with an error wrapping ErrObjectExists and the existing object is
// left as it was. Of two racing PutNew calls for one name, at most one
// succeeds.
type ExclusiveCreator interface {
	PutNew(ctx context.Context, name string, r io.Reader, size int64) error
}

// Upload is an unfinished upload that a transport keeps apart from its
// objects (an S3 multipart upload): it costs storage but List does not
// show it.
type Upload struct {
	Name      string // the object name it would create
	ID        string // the transport's id of the upload
	Initiated time.Time
}

// UploadAborter is implemented by transports whose failed or killed Puts
// can leave unfinished uploads behind (S3 multipart uploads).
type UploadAborter interface {
	// Uploads calls fn for every unfinished upload whose object name starts
	// with prefix.
	Uploads(ctx context.Context, prefix string, fn func(Upload) error) error
	// AbortUpload aborts one; aborting one that is gone is not an error.
	AbortUpload(ctx context.Context, u Upload) error
}

// LinkStats describe the link a transport measured and how it uses it,
// for --json summaries and the README's numbers.
type LinkStats struct {
	RTT         time.Duration // round trip measured at connect time; 0 if not measured
	Connections int           // network connections (SSH connections, or HTTP connections in use at most)
	Channels    int           // streams carried over them (SFTP channels, parallel S3 requests)
}

// StreamWaiter is implemented by transports whose streams come up after
// they are opened (SFTP: the sessions and connections beyond the first are
// made in the background, a second or more on a long link). WaitStreams
// returns once n streams can move data, or none is on its way any more.
type StreamWaiter interface {
	WaitStreams(ctx context.Context, n int) error
}

// waitStreams waits as tr's StreamWaiter says, if tr or a transport under
// its wrappers (which return it from Unwrap) is one.
func waitStreams(ctx context.Context, tr Transport, n int) error {
	for {
		if sw, ok := tr.(StreamWaiter); ok {
			return sw.WaitStreams(ctx, n)
		}
		w, ok := tr.(interface{ Unwrap() Transport })
		if !ok {
			return nil
		}
		tr = w.Unwrap()
	}
}

// LinkReporter is implemented by transports that measure their link.
type LinkReporter interface {
	LinkStats() LinkStats
}
