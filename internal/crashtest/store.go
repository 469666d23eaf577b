package crashtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/minio/minio-go/v7"
)

// A Store is a destination as the driver sees it: beside coldship, not
// through its transports. Names are relative to the destination.
type Store interface {
	// Name is the transport's name in the table: local, sftp, s3.
	Name() string
	// Dest is the DEST argument of coldship.
	Dest() string
	// Args are the flags coldship needs to reach it.
	Args() []string
	// Objects lists every object at the destination, by name, with its
	// size; temporaries and unfinished uploads are not objects.
	Objects(ctx context.Context) (map[string]int64, error)
	// Leftovers lists the temporaries (a Put's .tmp- file) and
	// unfinished uploads at the destination.
	Leftovers(ctx context.Context) ([]string, error)
	Get(ctx context.Context, name string) ([]byte, error)
	Put(ctx context.Context, name string, b []byte) error
	Delete(ctx context.Context, name string) error
	// Sub returns the store of a folder (prefix) of this one.
	Sub(name string) Store
}

// isPutTemp reports whether a file name is a transport's temporary: a
// Put writes "." + name + ".tmp-" + hex beside the object.
func isPutTemp(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, ".tmp-")
}

// Folder is a destination that is a folder on this machine: the local
// transport's, or an SFTP server's root seen from its own disk.
type Folder struct {
	Kind string // local or sftp
	Dir  string // where the objects are on disk
	URL  string // DEST
	Flag []string
}

// Local is a local destination in dir.
func Local(dir string) *Folder { return &Folder{Kind: "local", Dir: dir, URL: dir} }

func (f *Folder) Name() string   { return f.Kind }
func (f *Folder) Dest() string   { return f.URL }
func (f *Folder) Args() []string { return f.Flag }

func (f *Folder) Sub(name string) Store {
	return &Folder{Kind: f.Kind, Dir: filepath.Join(f.Dir, name), URL: strings.TrimSuffix(f.URL, "/") + "/" + name, Flag: f.Flag}
}

func (f *Folder) walk(fn func(rel string, fi fs.FileInfo)) error {
	err := filepath.WalkDir(f.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(f.Dir, p)
		fn(filepath.ToSlash(rel), fi)
		return nil
	})
	return err
}

func (f *Folder) Objects(context.Context) (map[string]int64, error) {
	out := map[string]int64{}
	err := f.walk(func(rel string, fi fs.FileInfo) {
		if !isPutTemp(path.Base(rel)) {
			out[rel] = fi.Size()
		}
	})
	return out, err
}

func (f *Folder) Leftovers(context.Context) ([]string, error) {
	var out []string
	err := f.walk(func(rel string, fi fs.FileInfo) {
		if isPutTemp(path.Base(rel)) {
			out = append(out, rel)
		}
	})
	return out, err
}

func (f *Folder) Get(_ context.Context, name string) ([]byte, error) {
	return os.ReadFile(filepath.Join(f.Dir, filepath.FromSlash(name)))
}

func (f *Folder) Put(_ context.Context, name string, b []byte) error {
	return os.WriteFile(filepath.Join(f.Dir, filepath.FromSlash(name)), b, 0o644)
}

func (f *Folder) Delete(_ context.Context, name string) error {
	return os.Remove(filepath.Join(f.Dir, filepath.FromSlash(name)))
}

// Bucket is an S3 destination, seen through an S3 client.
type Bucket struct {
	Client *minio.Client
	Bucket string
	Prefix string // without a trailing slash
	Flag   []string
}

func (b *Bucket) Name() string   { return "s3" }
func (b *Bucket) Dest() string   { return "s3://" + b.Bucket + "/" + b.Prefix }
func (b *Bucket) Args() []string { return b.Flag }

func (b *Bucket) Sub(name string) Store {
	return &Bucket{Client: b.Client, Bucket: b.Bucket, Prefix: path.Join(b.Prefix, name), Flag: b.Flag}
}

func (b *Bucket) Objects(ctx context.Context) (map[string]int64, error) {
	out := map[string]int64{}
	for oi := range b.Client.ListObjects(ctx, b.Bucket, minio.ListObjectsOptions{Prefix: b.Prefix + "/", Recursive: true}) {
		if oi.Err != nil {
			return nil, fmt.Errorf("list s3://%s/%s: %w", b.Bucket, b.Prefix, oi.Err)
		}
		out[strings.TrimPrefix(oi.Key, b.Prefix+"/")] = oi.Size
	}
	return out, nil
}

func (b *Bucket) Leftovers(ctx context.Context) ([]string, error) {
	var out []string
	for u := range b.Client.ListIncompleteUploads(ctx, b.Bucket, b.Prefix+"/", true) {
		if u.Err != nil {
			return nil, fmt.Errorf("list uploads at s3://%s/%s: %w", b.Bucket, b.Prefix, u.Err)
		}
		out = append(out, "upload of "+strings.TrimPrefix(u.Key, b.Prefix+"/"))
	}
	return out, nil
}

func (b *Bucket) Get(ctx context.Context, name string) ([]byte, error) {
	o, err := b.Client.GetObject(ctx, b.Bucket, b.Prefix+"/"+name, minio.GetObjectOptions{})
	if err != nil {
		return nil, err
	}
	defer o.Close()
	return io.ReadAll(o)
}

func (b *Bucket) Put(ctx context.Context, name string, data []byte) error {
	_, err := b.Client.PutObject(ctx, b.Bucket, b.Prefix+"/"+name, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{})
	return err
}

func (b *Bucket) Delete(ctx context.Context, name string) error {
	return b.Client.RemoveObject(ctx, b.Bucket, b.Prefix+"/"+name, minio.RemoveObjectOptions{})
}
