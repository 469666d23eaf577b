package main

import (
	"context"
	"net/url"
	"strings"

	"github.com/spf13/pflag"

	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/local"
	"github.com/coldship/coldship/shipper/s3"
)

// transportOptions are the flags that shape a connection to DEST.
type transportOptions struct {
	streams     int
	s3Endpoint  string
	s3Region    string
	s3PathStyle bool
}

// addTransportFlags adds the flags of every transport to a command.
func addTransportFlags(f *pflag.FlagSet, o *transportOptions) {
	f.IntVar(&o.streams, "streams", shipper.DefaultStreams, "segments moved at once (connections or parallel requests)")
	f.StringVar(&o.s3Endpoint, "s3-endpoint", "", "S3 endpoint `URL` (default $AWS_ENDPOINT_URL or AWS); http:// only when given explicitly")
	f.StringVar(&o.s3Region, "s3-region", "", "S3 `REGION` (default $AWS_REGION)")
	f.BoolVar(&o.s3PathStyle, "s3-path-style", false, "force path-style S3 addressing (automatic for non-AWS endpoints)")
}

// openDest returns the Transport for a DEST argument.
func openDest(ctx context.Context, s *streams, dest string, o transportOptions) (shipper.Transport, error) {
	scheme, _, hasScheme := strings.Cut(dest, "://")
	if !hasScheme {
		return local.New(dest)
	}
	switch scheme {
	case "file":
		u, err := url.Parse(dest)
		if err != nil || (u.Host != "" && u.Host != "localhost") || u.Path == "" {
			return nil, usagef("DEST %q: want file:///absolute/path", dest)
		}
		return local.New(u.Path)
	case "s3":
		cfg, err := s3.ParseURL(dest)
		if err != nil {
			return nil, usageError{err}
		}
		cfg.Endpoint, cfg.Region, cfg.PathStyle = o.s3Endpoint, o.s3Region, o.s3PathStyle
		cfg.Streams, cfg.Stderr = o.streams, s.err
		return s3.New(ctx, cfg)
	}
	return nil, usagef("DEST %q: unknown scheme %q (want a path, file://, sftp:// or s3://)", dest, scheme)
}
