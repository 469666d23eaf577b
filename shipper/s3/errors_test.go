package s3

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/s3/s3test"
)

func TestClassify(t *testing.T) {
	tr := &Transport{bucket: "b", endpoint: "https://s3.example.net"}
	tests := []struct {
		code    string
		status  int
		want    error // nil: left for the retry wrapper
		message string
	}{
		{"NoSuchKey", 404, shipper.ErrNotFound, "object not found"},
		{"NoSuchBucket", 404, shipper.ErrPermanent, `bucket "b" does not exist`},
		{"AccessDenied", 403, shipper.ErrPermanent, "access denied"},
		{"InvalidAccessKeyId", 403, shipper.ErrAuth, "access key ID"},
		{"SignatureDoesNotMatch", 403, shipper.ErrAuth, "secret access key"},
		{"ExpiredToken", 400, shipper.ErrAuth, "session token"},
		{"AuthorizationHeaderMalformed", 400, shipper.ErrPermanent, ""},
		{"RequestTimeTooSkewed", 403, shipper.ErrPermanent, ""},
		{"InsufficientStorage", 507, shipper.ErrPermanent, "full"},
		{"XMinioStorageFull", 507, shipper.ErrPermanent, "full"},
		{"507 Insufficient Storage", 507, shipper.ErrPermanent, "full"}, // a HEAD's, made up by the client
		{"QuotaExceeded", 403, shipper.ErrPermanent, "quota"},
		{"PreconditionFailed", 412, shipper.ErrObjectExists, "exists"},
		{"InternalError", 500, nil, ""},
		{"SlowDown", 503, nil, ""},
		{"RequestTimeout", 400, nil, ""},
		{"BadDigest", 400, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.code, func(t *testing.T) {
			cause := minio.ErrorResponse{Code: tc.code, StatusCode: tc.status, Message: "server says " + tc.code}
			err := tr.classify("put", "p/x", cause)
			for _, s := range []error{shipper.ErrNotFound, shipper.ErrPermanent, shipper.ErrAuth, shipper.ErrObjectExists} {
				if got := errors.Is(err, s); got != (s == tc.want) {
					t.Errorf("errors.Is(%v, %v) = %v", err, s, got)
				}
			}
			var resp minio.ErrorResponse
			if !errors.As(err, &resp) || resp.Code != tc.code {
				t.Errorf("the client's error is not kept: %v", err)
			}
			if !strings.Contains(err.Error(), tc.message) || !strings.HasPrefix(err.Error(), "put s3://b/p/x: ") {
				t.Errorf("message %q, want it to name the object and say %q", err, tc.message)
			}
		})
	}
	certErr := &url.Error{Op: "Put", URL: "https://s3.example.net/b/x", Err: &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}}
	if err := tr.classify("put", "x", certErr); !errors.Is(err, shipper.ErrPermanent) || !strings.Contains(err.Error(), "SSL_CERT_FILE") {
		t.Errorf("certificate refused: %v, want ErrPermanent saying how to trust a CA", err)
	}
	netErr := errors.New("dial tcp 127.0.0.1:1: connect: connection refused")
	if err := tr.classify("put", "x", netErr); errors.Is(err, shipper.ErrPermanent) || errors.Is(err, shipper.ErrAuth) || !errors.Is(err, netErr) {
		t.Errorf("network error classified as %v", err)
	}
}

// opsErrors runs every Transport method that reaches the server and
// returns their errors by name.
func opsErrors(t *testing.T, tr shipper.Transport) map[string]error {
	ctx := context.Background()
	big := make([]byte, partSize+1)
	errs := map[string]error{
		"Put":            tr.Put(ctx, "x/small", strings.NewReader("hello"), 5),
		"Put(multipart)": tr.Put(ctx, "x/big", bytes.NewReader(big), -1),
		"List":           tr.List(ctx, "", func(shipper.ObjectInfo) error { return nil }),
		"Delete":         tr.Delete(ctx, "x/small"),
	}
	_, errs["Stat"] = tr.Stat(ctx, "x/small")
	rc, err := tr.Open(ctx, "x/small", 0, -1)
	if err == nil {
		_, err = io.ReadAll(rc)
		rc.Close()
	}
	errs["Open"] = err
	return errs
}

func TestWrongCredentials(t *testing.T) {
	srv := s3test.Start(t)
	for _, tc := range []struct{ name, id, secret, message string }{
		{"wrong secret", srv.AccessKey, "not-the-secret-key", "secret access key"},
		{"unknown key", "AKUNKNOWN", srv.SecretKey, "access key ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv.SetEnv(t)
			t.Setenv("AWS_ACCESS_KEY_ID", tc.id)
			t.Setenv("AWS_SECRET_ACCESS_KEY", tc.secret)
			tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "auth"})
			for op, err := range opsErrors(t, tr) {
				if !errors.Is(err, shipper.ErrAuth) || !strings.Contains(err.Error(), tc.message) {
					t.Errorf("%s: err = %v, want ErrAuth saying %q", op, err, tc.message)
				}
				if strings.Contains(err.Error(), srv.SecretKey) || strings.Contains(err.Error(), tc.secret) {
					t.Errorf("%s: error shows the secret: %v", op, err)
				}
			}
		})
	}
}

func TestNoCredentials(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	_, err := New(context.Background(), Config{Bucket: srv.Bucket})
	if !errors.Is(err, shipper.ErrAuth) || !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
		t.Errorf("New without credentials: err = %v, want ErrAuth naming where credentials come from", err)
	}
}

func TestMissingBucket(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	tr := newTransport(t, Config{Bucket: "no-such-bucket", Prefix: "p"})
	for op, err := range opsErrors(t, tr) {
		if !errors.Is(err, shipper.ErrPermanent) || !strings.Contains(err.Error(), `bucket "no-such-bucket" does not exist`) {
			t.Errorf("%s: err = %v, want ErrPermanent saying the bucket does not exist", op, err)
		}
	}
}

// TestProfileCredentials takes the credentials from the shared files with
// AWS_PROFILE, the environment holding none.
func TestProfileCredentials(t *testing.T) {
	srv := s3test.Start(t)
	profile := "[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key = wrong\n\n" +
		"[coldship]\naws_access_key_id = " + srv.AccessKey + "\naws_secret_access_key = " + srv.SecretKey + "\n"
	config := "[profile coldship]\naws_access_key_id = " + srv.AccessKey + "\naws_secret_access_key = " + srv.SecretKey + "\n"
	tests := []struct {
		name string
		env  func(t *testing.T, dir string) // writes the file and points at it
	}{
		{"AWS_SHARED_CREDENTIALS_FILE", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "creds"), profile)
			t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "creds"))
		}},
		{"HOME/.aws/credentials", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, ".aws", "credentials"), profile)
			t.Setenv("HOME", dir)
			t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "")
			t.Setenv("AWS_CONFIG_FILE", "")
		}},
		{"HOME/.aws/config", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, ".aws", "config"), config)
			t.Setenv("HOME", dir)
			t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "")
			t.Setenv("AWS_CONFIG_FILE", "")
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv.SetEnv(t)
			t.Setenv("AWS_ACCESS_KEY_ID", "")
			t.Setenv("AWS_SECRET_ACCESS_KEY", "")
			t.Setenv("AWS_PROFILE", "coldship")
			tc.env(t, t.TempDir())
			tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "profile"})
			ctx := context.Background()
			if err := tr.Put(ctx, "obj", strings.NewReader("via profile"), -1); err != nil {
				t.Fatalf("Put with credentials from the profile: %v", err)
			}
			if _, err := tr.Stat(ctx, "obj"); err != nil {
				t.Fatalf("Stat: %v", err)
			}
		})
	}
	t.Run("default profile is used without AWS_PROFILE", func(t *testing.T) {
		srv.SetEnv(t)
		t.Setenv("AWS_ACCESS_KEY_ID", "")
		t.Setenv("AWS_SECRET_ACCESS_KEY", "")
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, "creds"), profile)
		t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "creds"))
		tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "profile"})
		if _, err := tr.Stat(context.Background(), "obj"); !errors.Is(err, shipper.ErrAuth) {
			t.Errorf("Stat with the [default] profile's unknown key: err = %v, want ErrAuth", err)
		}
	})
}

func writeFile(t *testing.T, name, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
