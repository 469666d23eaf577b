package s3

import (
	"strings"
	"testing"
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
			cfg := Config{Endpoint: tc.endpoint}
			host, secure, err := cfg.endpoint()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("endpoint() = %q, %v, %v; want an error about %q", host, secure, err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("error repeats the password: %v", err)
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
	t.Setenv("AWS_REGION", "")
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
