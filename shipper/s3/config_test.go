package s3

import (
	"bytes"
	"context"
	"errors"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coldship/coldship/shipper/s3/s3test"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		raw            string
		bucket, prefix string
		wantErr        string
	}{
		{raw: "s3://bucket", bucket: "bucket"},
		{raw: "s3://bucket/", bucket: "bucket"},
		{raw: "s3://my-bucket.example/vms/2026", bucket: "my-bucket.example", prefix: "vms/2026"},
		{raw: "s3://bucket/vms/", bucket: "bucket", prefix: "vms"},
		{raw: "s3://bucket/a//b", wantErr: "prefix"},
		{raw: "s3://bucket/a/../b", wantErr: "prefix"},
		{raw: "s3://bucket/.hidden", wantErr: "prefix"},
		{raw: "s3://", wantErr: "bucket"},
		{raw: "s3://ab/x", wantErr: "bucket"},
		{raw: "s3://-bucket/x", wantErr: "bucket"},
		{raw: "https://bucket/x", wantErr: "scheme"},
		{raw: "s3://key:secret@bucket/x", wantErr: "want s3://bucket"},
		{raw: "s3://bucket:9000/x", wantErr: "want s3://bucket"},
		{raw: "s3://bucket/x?region=eu", wantErr: "want s3://bucket"},
	}
	for _, tc := range tests {
		t.Run(tc.raw, func(t *testing.T) {
			cfg, err := ParseURL(tc.raw)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseURL(%q) = %+v, %v; want an error about %q", tc.raw, cfg, err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("error repeats the secret: %v", err)
				}
				return
			}
			if err != nil || cfg.Bucket != tc.bucket || cfg.Prefix != tc.prefix {
				t.Errorf("ParseURL(%q) = bucket %q prefix %q, %v; want %q %q", tc.raw, cfg.Bucket, cfg.Prefix, err, tc.bucket, tc.prefix)
			}
		})
	}
}

func TestEndpoint(t *testing.T) {
	tests := []struct {
		name          string
		endpoint, env string
		envS3         string
		host          string
		secure        bool
		wantErr       string
	}{
		{name: "AWS default", host: "s3.amazonaws.com", secure: true},
		{name: "https URL", endpoint: "https://s3.example.net", host: "s3.example.net", secure: true},
		{name: "bare host is https", endpoint: "minio.lan:9000", host: "minio.lan:9000", secure: true},
		{name: "explicit http", endpoint: "http://127.0.0.1:7070", host: "127.0.0.1:7070"},
		{name: "trailing slash", endpoint: "http://127.0.0.1:7070/", host: "127.0.0.1:7070"},
		{name: "from AWS_ENDPOINT_URL", env: "http://10.0.0.1:7070", host: "10.0.0.1:7070"},
		{name: "AWS_ENDPOINT_URL_S3 first", env: "http://a:1", envS3: "https://b:2", host: "b:2", secure: true},
		{name: "flag beats environment", endpoint: "https://flag", env: "http://env", host: "flag", secure: true},
		{name: "ftp", endpoint: "ftp://host", wantErr: "scheme"},
		{name: "path", endpoint: "https://host/base", wantErr: "path"},
		{name: "user info", endpoint: "https://user:hunter2@host", wantErr: "credentials in the URL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("AWS_ENDPOINT_URL", tc.env)
			t.Setenv("AWS_ENDPOINT_URL_S3", tc.envS3)
			t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
			cfg := Config{Endpoint: tc.endpoint}
			host, secure, err := cfg.endpoint()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("endpoint() = %q, %v, %v; want an error about %q", host, secure, err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("error repeats the password: %v", err)
				}
				if !errors.Is(err, ErrEndpoint) {
					t.Errorf("error %v is not an ErrEndpoint", err)
				}
				return
			}
			if err != nil || host != tc.host || secure != tc.secure {
				t.Errorf("endpoint() = %q, secure %v, %v; want %q, secure %v", host, secure, err, tc.host, tc.secure)
			}
		})
	}
}

func TestRegion(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "config"), "[default]\nregion = ap-south-2\n")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	if got := (&Config{}).region(); got != "ap-south-2" {
		t.Errorf("region from the profile = %q", got)
	}
	t.Setenv("AWS_DEFAULT_REGION", "eu-west-3")
	if got := (&Config{}).region(); got != "eu-west-3" {
		t.Errorf("region from AWS_DEFAULT_REGION = %q", got)
	}
	t.Setenv("AWS_REGION", "eu-central-1")
	if got := (&Config{}).region(); got != "eu-central-1" {
		t.Errorf("region from AWS_REGION = %q", got)
	}
	if got := (&Config{Region: "us-west-2"}).region(); got != "us-west-2" {
		t.Errorf("region from the flag = %q", got)
	}
}

// awsConfigFile is a config file with every way of giving S3 an endpoint.
const awsConfigFile = `# comment
[default]
endpoint_url = http://default:1

[profile plain]
region = eu-west-1
endpoint_url = http://profile:2
; another comment
[profile shared]
services = local-s3
endpoint_url = http://profile-fallback:3

[profile shared-no-s3]
services = only-sqs
endpoint_url = http://profile:4

[profile ignoring]
endpoint_url = http://profile:5
ignore_configured_endpoint_urls = true

[profile   spaced  ]
endpoint_url=http://spaced:6

[services local-s3]
sqs =
  endpoint_url = http://sqs:7
s3 =
  endpoint_url = http://services:8
  addressing_style = path
endpoint_url = http://not-for-s3:9

[services only-sqs]
sqs =
	endpoint_url = http://sqs:10
`

// TestEndpointFromAWSConfig checks the AWS CLI's order: flag, then (unless
// ignored) AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile's services
// section, the profile's endpoint_url.
func TestEndpointFromAWSConfig(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "config"), awsConfigFile)
	tests := []struct {
		name, profile, flag, env, envS3, ignore string
		host                                    string
		from                                    string
	}{
		{name: "default profile", host: "default:1", from: "profile default"},
		{name: "named profile", profile: "plain", host: "profile:2", from: "profile plain"},
		{name: "services section", profile: "shared", host: "services:8", from: "[services local-s3]"},
		{name: "services section without s3", profile: "shared-no-s3", host: "profile:4"},
		{name: "profile without a section", profile: "missing", host: "s3.amazonaws.com"},
		{name: "spaces in the header", profile: "spaced", host: "spaced:6"},
		{name: "AWS_ENDPOINT_URL beats the file", profile: "shared", env: "http://env:11", host: "env:11"},
		{name: "AWS_ENDPOINT_URL_S3 beats AWS_ENDPOINT_URL", env: "http://env:11", envS3: "http://env-s3:12", host: "env-s3:12"},
		{name: "flag beats all", profile: "shared", flag: "http://flag:13", envS3: "http://env-s3:12", host: "flag:13"},
		{name: "ignored by the environment", profile: "shared", env: "http://env:11", ignore: "true", host: "s3.amazonaws.com"},
		{name: "ignored by the profile", profile: "ignoring", envS3: "http://env-s3:12", host: "s3.amazonaws.com"},
		{name: "the flag is never ignored", profile: "ignoring", flag: "http://flag:13", ignore: "true", host: "flag:13"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
			t.Setenv("AWS_PROFILE", tc.profile)
			t.Setenv("AWS_ENDPOINT_URL", tc.env)
			t.Setenv("AWS_ENDPOINT_URL_S3", tc.envS3)
			t.Setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", tc.ignore)
			cfg := Config{Endpoint: tc.flag}
			host, _, err := cfg.endpoint()
			if err != nil || host != tc.host {
				t.Errorf("endpoint() = %q, %v; want %q", host, err, tc.host)
			}
			if _, from, _ := cfg.endpointURL(); !strings.Contains(from, tc.from) {
				t.Errorf("found in %q, want it to say %q", from, tc.from)
			}
		})
	}
	t.Run("a bad endpoint names the file", func(t *testing.T) {
		writeFile(t, filepath.Join(dir, "bad"), "[default]\nendpoint_url = ftp://x\n")
		t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "bad"))
		t.Setenv("AWS_PROFILE", "")
		t.Setenv("AWS_ENDPOINT_URL", "")
		t.Setenv("AWS_ENDPOINT_URL_S3", "")
		t.Setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "")
		if _, _, err := (&Config{}).endpoint(); err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "bad")) {
			t.Errorf("endpoint() error %v, want it to name the config file", err)
		}
	})
}

func FuzzParseAWSConfig(f *testing.F) {
	f.Add([]byte(awsConfigFile))
	f.Add([]byte("[s]\nk =\n  a = b\n\tc=d\n"))
	f.Add([]byte("  = \n[\n]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		sections, err := parseAWSConfig(bytes.NewReader(b))
		if err != nil {
			return
		}
		for name, s := range sections {
			if s == nil || s.values == nil || s.nested == nil {
				t.Fatalf("section %q incomplete", name)
			}
			for k := range s.nested {
				if _, ok := s.values[k]; !ok {
					t.Fatalf("nested settings of %q without the key", k)
				}
			}
		}
	})
}

// TestAWSConfigEndpointServer reaches versitygw through the endpoint_url of
// an AWS config file in a temporary HOME, with no endpoint in the
// environment: the profile's own, and one of a services section.
func TestAWSConfigEndpointServer(t *testing.T) {
	srv := s3test.Start(t)
	config := "[default]\nendpoint_url = " + srv.Endpoint + "\n\n" +
		"[profile dr]\nservices = site-b\nendpoint_url = http://127.0.0.1:1\n\n" +
		"[services site-b]\ns3 =\n  endpoint_url = " + srv.Endpoint + "\n"
	for _, profile := range []string{"", "dr"} {
		t.Run("profile="+profile, func(t *testing.T) {
			srv.SetEnv(t)
			home := t.TempDir()
			writeFile(t, filepath.Join(home, ".aws", "config"), config)
			t.Setenv("HOME", home)
			t.Setenv("AWS_CONFIG_FILE", "")
			t.Setenv("AWS_ENDPOINT_URL", "")
			t.Setenv("AWS_PROFILE", profile)
			tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "awsconfig"})
			if !strings.Contains(tr.String(), srv.Endpoint) {
				t.Errorf("transport %s, want it at %s", tr, srv.Endpoint)
			}
			ctx := context.Background()
			if err := tr.Put(ctx, "obj-"+profile, strings.NewReader("via the config file"), -1); err != nil {
				t.Fatalf("Put: %v", err)
			}
			if _, err := tr.Stat(ctx, "obj-"+profile); err != nil {
				t.Errorf("Stat: %v", err)
			}
		})
	}
}

// TestSharedCredentialsFileWithoutHOME: with HOME unset (a systemd unit
// without User=), the credential chain reads ~/.aws/credentials of the
// password database's home, which minio-go alone would not find; with
// HOME or AWS_SHARED_CREDENTIALS_FILE set, minio-go chooses as the AWS CLI
// does.
func TestSharedCredentialsFileWithoutHOME(t *testing.T) {
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "")
	t.Setenv("HOME", "/somewhere")
	if got := sharedCredentialsFile(); got != "" {
		t.Errorf("with HOME: %q, want minio-go's choice", got)
	}
	t.Setenv("HOME", "")
	u, err := user.Current()
	if err != nil || u.HomeDir == "" {
		t.Skip("no home in the password database")
	}
	if got, want := sharedCredentialsFile(), filepath.Join(u.HomeDir, ".aws", "credentials"); got != want {
		t.Errorf("without HOME: %q, want %q", got, want)
	}
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/etc/coldship/aws")
	if got := sharedCredentialsFile(); got != "" {
		t.Errorf("with AWS_SHARED_CREDENTIALS_FILE: %q, want minio-go's choice (the variable)", got)
	}
}
