package s3

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"

	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/coldship/coldship/shipper"
)

// DefaultStreams is the number of parts of one object that are uploaded or
// downloaded at once when Config.Streams is zero. BenchmarkPutGet through a
// link of 40 MB/s per connection: 1 stream 38/40 MB/s (put/get), 4 streams
// 134/158 MB/s; on loopback the machine's CPU is the limit and the number
// of streams makes no steady difference. With the 4 segments the pipeline
// sends at once, 4 parts each fill the part pool (poolBudget) exactly.
const DefaultStreams = 4

// Config says where a Transport keeps its objects and how it reaches them.
type Config struct {
	Bucket string
	Prefix string // key prefix without leading or trailing '/'; "" for the whole bucket

	// Endpoint is a URL such as "http://127.0.0.1:7070" or a host[:port].
	// Plain http is used only when the URL says http:// explicitly. When
	// empty, New finds one as the AWS CLI does (AWS_ENDPOINT_URL_S3,
	// AWS_ENDPOINT_URL, then endpoint_url in the AWS config file's
	// profile), and then uses the AWS endpoint of Region.
	Endpoint string

	// Region defaults to AWS_REGION, AWS_DEFAULT_REGION or the profile's
	// region; when all are empty the client asks the server for the
	// bucket's location.
	Region string

	// PathStyle forces path-style requests (endpoint/bucket/key). Without
	// it, virtual-host style is used for AWS endpoints and path style for
	// every other endpoint, IP addresses included.
	PathStyle bool

	// Streams is the number of parts of one object moved at once; 0 means
	// DefaultStreams.
	Streams int

	// Stderr receives warnings (such as an upload that could not be
	// aborted); nil discards them.
	Stderr io.Writer
}

// ParseURL parses a destination of the form s3://bucket[/prefix]. Endpoint,
// region and credentials are never part of the URL.
func ParseURL(raw string) (Config, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// Not echoed: a mistyped URL may hold a secret.
		return Config{}, errors.New("s3 destination: not a valid s3://bucket[/prefix] URL")
	}
	shown := u.Redacted()
	if u.Scheme != "s3" {
		return Config{}, fmt.Errorf("s3 destination %q: scheme must be s3://", shown)
	}
	if u.User != nil || u.Port() != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return Config{}, fmt.Errorf("s3 destination %q: want s3://bucket[/prefix] (set the endpoint with --s3-endpoint or AWS_ENDPOINT_URL, credentials in the environment or ~/.aws/credentials)", shown)
	}
	if err := s3utils.CheckValidBucketName(u.Host); err != nil {
		return Config{}, fmt.Errorf("s3 destination %q: bucket %q: %w", shown, u.Host, err)
	}
	prefix := strings.Trim(u.Path, "/")
	if prefix != "" {
		if err := shipper.CheckName(prefix); err != nil {
			return Config{}, fmt.Errorf("s3 destination %q: prefix: %w", shown, err)
		}
	}
	return Config{Bucket: u.Host, Prefix: prefix}, nil
}

// ErrEndpoint marks an endpoint that cannot be used as written (credentials
// in it, a scheme other than http or https, no host, a path): what was
// given is wrong, not the server, so a caller can report it as such.
var ErrEndpoint = errors.New("s3 endpoint cannot be used")

// endpointError is an error of ErrEndpoint whose message is its own.
type endpointError struct{ error }

func (e endpointError) Is(target error) bool { return target == ErrEndpoint }

func endpointErrorf(format string, a ...any) error {
	return endpointError{fmt.Errorf(format, a...)}
}

// endpoint resolves the endpoint into the host[:port] the client dials and
// whether it uses TLS.
func (cfg *Config) endpoint() (host string, secure bool, err error) {
	raw, from, err := cfg.endpointURL()
	if err != nil || raw == "" {
		// The client turns the global host into the regional one.
		return "s3.amazonaws.com", true, err
	}
	if strings.Contains(raw, "@") {
		// Not echoed: it may hold a password.
		return "", false, endpointErrorf("s3 endpoint (%s): credentials in the URL are not accepted; use the environment or ~/.aws/credentials", from)
	}
	if !strings.Contains(raw, "://") {
		raw = "https://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", false, endpointErrorf("s3 endpoint (%s): %w", from, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", false, endpointErrorf("s3 endpoint %q (%s): scheme must be http or https", raw, from)
	case u.Host == "":
		return "", false, endpointErrorf("s3 endpoint %q (%s): no host", raw, from)
	case strings.Trim(u.Path, "/") != "" || u.RawQuery != "":
		return "", false, endpointErrorf("s3 endpoint %q (%s): a path or query is not supported", raw, from)
	}
	return u.Host, u.Scheme == "https", nil
}

// endpointURL finds the endpoint as the AWS CLI does, and says where: the
// flag (cfg.Endpoint); then, unless AWS_IGNORE_CONFIGURED_ENDPOINT_URLS or
// the profile's ignore_configured_endpoint_urls is true,
// AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the s3 endpoint_url of the
// [services NAME] section that the profile names, and the profile's
// endpoint_url. "" means AWS itself.
func (cfg *Config) endpointURL() (raw, from string, err error) {
	if cfg.Endpoint != "" {
		return cfg.Endpoint, "--s3-endpoint", nil
	}
	conf, err := loadAWSConfig()
	if err != nil {
		return "", "", err
	}
	if isTrue(os.Getenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")) || isTrue(conf.setting("ignore_configured_endpoint_urls")) {
		return "", "", nil
	}
	for _, env := range []string{"AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"} {
		if v := os.Getenv(env); v != "" {
			return v, env, nil
		}
	}
	raw, from = conf.s3Endpoint()
	return raw, from, nil
}

func isTrue(s string) bool { return strings.EqualFold(strings.TrimSpace(s), "true") }

// region is the flag's, else AWS_REGION, AWS_DEFAULT_REGION, or the
// profile's region in the AWS config file.
func (cfg *Config) region() string {
	for _, r := range []string{cfg.Region, os.Getenv("AWS_REGION"), os.Getenv("AWS_DEFAULT_REGION")} {
		if r != "" {
			return r
		}
	}
	if conf, err := loadAWSConfig(); err == nil {
		return conf.setting("region")
	}
	return ""
}
