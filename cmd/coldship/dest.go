package main

import (
	"context"
	"net/url"
	"strings"

	"github.com/spf13/pflag"

	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/local"
	"github.com/coldship/coldship/shipper/s3"
	"github.com/coldship/coldship/shipper/sftp"
)

// transportOptions are the flags that shape a connection to DEST.
type transportOptions struct {
	streams     int // 0: the transport's default
	sshKeys     []string
	knownHosts  string
	acceptNew   bool
	s3Endpoint  string
	s3Region    string
	s3PathStyle bool
}

// addTransportFlags adds the flags of every transport to a command.
func addTransportFlags(f *pflag.FlagSet, o *transportOptions) {
	f.IntVar(&o.streams, "streams", 0, "segments moved at once: SFTP channels or parallel S3 requests (default for sftp: from the measured round trip, one per CPU (2 to 4) on a short link, up to 32; 4 otherwise)")
	f.StringArrayVar(&o.sshKeys, "ssh-key", nil, "SFTP: authenticate with the private key in `FILE` (repeatable; default: ssh-agent, ~/.ssh/config, ~/.ssh/id_*)")
	f.StringVar(&o.knownHosts, "known-hosts", "", "SFTP: check host keys against `FILE` (default ~/.ssh/known_hosts)")
	f.BoolVar(&o.acceptNew, "accept-new-host-key", false, "SFTP: trust and record an unknown host's key (like StrictHostKeyChecking=accept-new); a changed key is always refused")
	f.StringVar(&o.s3Endpoint, "s3-endpoint", "", "S3 endpoint `URL` (default $AWS_ENDPOINT_URL or AWS); http:// only when given explicitly")
	f.StringVar(&o.s3Region, "s3-region", "", "S3 `REGION` (default $AWS_REGION)")
	f.BoolVar(&o.s3PathStyle, "s3-path-style", false, "force path-style S3 addressing (automatic for non-AWS endpoints)")
}

// openDest returns the Transport for a DEST argument, and sets o.streams
// to the transport's default when it was not given.
func openDest(ctx context.Context, s *streams, dest string, o *transportOptions) (shipper.Transport, error) {
	if o.streams < 0 {
		return nil, usagef("--streams must be positive")
	}
	scheme, _, hasScheme := strings.Cut(dest, "://")
	if o.streams == 0 && scheme != "sftp" {
		o.streams = shipper.DefaultStreams
	}
	if !hasScheme {
		return local.New(dest)
	}
	switch scheme {
	case "sftp":
		cfg, err := sftp.ParseURL(dest)
		if err != nil {
			return nil, usageError{err}
		}
		cfg.KeyFiles, cfg.KnownHosts, cfg.AcceptNewHostKey = o.sshKeys, o.knownHosts, o.acceptNew
		cfg.Streams, cfg.AskPass, cfg.Stderr = o.streams, s.askPass(), s.err
		t, err := sftp.Dial(ctx, cfg)
		if err != nil {
			return nil, err
		}
		o.streams = t.Streams()
		return t, nil
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
