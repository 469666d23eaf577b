package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/spf13/cobra"
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

	// log takes the transport's notices (a connection dialled again) as
	// the command prints its own; nil: lines on stderr.
	log func(format string, a ...any)
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
	commaList(f, "ssh-key")
}

// readTransportFlags reads the transport flags of c into o, for shell
// completion, which runs without the command's own options.
func readTransportFlags(c *cobra.Command, o *transportOptions) {
	f := c.Flags()
	o.streams, _ = f.GetInt("streams")
	o.sshKeys, _ = f.GetStringArray("ssh-key")
	o.knownHosts, _ = f.GetString("known-hosts")
	o.s3Endpoint, _ = f.GetString("s3-endpoint")
	o.s3Region, _ = f.GetString("s3-region")
	o.s3PathStyle, _ = f.GetBool("s3-path-style")
}

// destForms is what every DEST error shows: the forms that are accepted.
const destForms = "a directory path, file:///path, sftp://[user@]host[:port]/path or s3://bucket[/prefix]"

var (
	// schemeLike is a scheme followed by a colon: "s3:", "sftp:", "http:".
	schemeLike = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9+.-]*):`)
	// slashSlash is a known scheme with its colon missing: "s3//bucket".
	slashSlash = regexp.MustCompile(`^(?i)(s3|sftp|ssh|file)//`)
)

// rightForm names the form a destination of a scheme is written in.
func rightForm(scheme string) string {
	switch strings.ToLower(scheme) {
	case "s3":
		return "an S3 destination is written s3://bucket[/prefix]"
	case "sftp":
		return "an SFTP destination is written sftp://[user@]host[:port]/path"
	case "ssh":
		return "ssh://[user@]host[:port]/dir is for send --live; a stored shipment goes to sftp://[user@]host[:port]/path"
	case "file":
		return "a local destination is written file:///absolute/path, or as a plain path"
	case "http", "https":
		return "an S3 endpoint goes in --s3-endpoint (or AWS_ENDPOINT_URL); DEST is then s3://bucket[/prefix]"
	}
	return "DEST is " + destForms
}

// checkDest refuses a DEST that looks like a URL but is not a valid one,
// so that a typo is a usage error rather than a local folder named
// "s3:/bucket". A local path that must start like one is written ./s3:x.
func checkDest(dest string) error {
	if dest == "" {
		return usagef("DEST is empty: %s", rightForm(""))
	}
	if m := slashSlash.FindStringSubmatch(dest); m != nil {
		return usagef("DEST %q: the colon is missing: %s", dest, rightForm(m[1]))
	}
	scheme, _, hasScheme := strings.Cut(dest, "://")
	if hasScheme {
		switch strings.ToLower(scheme) {
		case "s3":
			if _, err := s3.ParseURL(dest); err != nil {
				return usageError{fmt.Errorf("%w: %s", err, rightForm("s3"))}
			}
			return nil
		case "sftp":
			if _, err := sftp.ParseURL(dest); err != nil {
				return usageError{fmt.Errorf("%w: %s", err, rightForm("sftp"))}
			}
			return nil
		case "file":
			if u, err := url.Parse(dest); err != nil || (u.Host != "" && u.Host != "localhost") || u.Path == "" {
				return usagef("DEST %q: %s", dest, rightForm("file"))
			}
			return nil
		}
		if strings.ContainsAny(scheme, "/") {
			return usagef("DEST %q: \"://\" inside a path: %s", dest, rightForm(""))
		}
		return usagef("DEST %q: unknown scheme %q: %s", dest, scheme, rightForm(scheme))
	}
	if m := schemeLike.FindStringSubmatch(dest); m != nil {
		switch s := strings.ToLower(m[1]); s {
		case "s3", "sftp", "ssh", "file", "http", "https":
			return usagef("DEST %q: not a valid URL: %s", dest, rightForm(s))
		}
	}
	first, _, _ := strings.Cut(dest, "/")
	if strings.Contains(first, ":") {
		return usagef("DEST %q looks like scp's host:path, which coldship does not take: write sftp://[user@]host/path for SFTP "+
			"(or ./%s for a local folder whose name holds a colon)", dest, dest)
	}
	return nil
}

// openDest returns the Transport for a DEST argument, and sets o.streams
// to the transport's default when it was not given.
func openDest(ctx context.Context, s *streams, dest string, o *transportOptions) (shipper.Transport, error) {
	if o.streams < 0 {
		return nil, usagef("--streams %d: give a positive number, or leave it out for the default", o.streams)
	}
	if err := checkDest(dest); err != nil {
		return nil, err
	}
	scheme, _, hasScheme := strings.Cut(dest, "://")
	scheme = strings.ToLower(scheme)
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
			return nil, usageError{fmt.Errorf("%w: %s", err, rightForm("sftp"))}
		}
		if err := checkSSHKeys(o.sshKeys); err != nil {
			return nil, err
		}
		cfg.KeyFiles, cfg.KnownHosts, cfg.AcceptNewHostKey = o.sshKeys, o.knownHosts, o.acceptNew
		cfg.Streams, cfg.AskPass, cfg.Stderr, cfg.Log = o.streams, s.askPass(), s.err, o.log
		t, err := sftp.Dial(ctx, cfg)
		if err != nil {
			return nil, err
		}
		o.streams = t.Streams()
		return t, nil
	case "file":
		u, err := url.Parse(dest)
		if err != nil || (u.Host != "" && u.Host != "localhost") || u.Path == "" {
			return nil, usagef("DEST %q: %s", dest, rightForm("file"))
		}
		return local.New(u.Path)
	case "s3":
		cfg, err := s3.ParseURL(dest)
		if err != nil {
			return nil, usageError{fmt.Errorf("%w: %s", err, rightForm("s3"))}
		}
		cfg.Endpoint, cfg.Region, cfg.PathStyle = o.s3Endpoint, o.s3Region, o.s3PathStyle
		cfg.Streams, cfg.Stderr = o.streams, s.err
		t, err := s3.New(ctx, cfg)
		if err != nil {
			if errors.Is(err, s3.ErrEndpoint) {
				return nil, usageError{err}
			}
			return nil, err
		}
		return t, nil
	}
	return nil, usagef("DEST %q: unknown scheme %q: %s", dest, scheme, rightForm(""))
}

// checkSSHKeys refuses an --ssh-key that names no file, or a file that
// holds no SSH private key (an age identity, a public key): a usage error,
// as a missing or unusable identity file is, not a failed login.
func checkSSHKeys(keys []string) error {
	for _, k := range keys {
		err := sftp.CheckKeyFile(k)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return usageError{fmt.Errorf("read ssh key file: %w", err)}
		case errors.Is(err, sftp.ErrNotKey):
			return usageError{fmt.Errorf("--ssh-key %s: %w", k, sftp.ErrNotKey)}
		}
	}
	return nil
}

// openExistingDest opens DEST for reading: a destination that does not
// exist (a missing directory or bucket) is an error that says so, not an
// empty list.
func openExistingDest(ctx context.Context, s *streams, dest string, o *transportOptions) (shipper.Transport, error) {
	tr, err := openDest(ctx, s, dest, o)
	if err != nil {
		return nil, err
	}
	if err := shipper.CheckRoot(ctx, tr); err != nil {
		tr.Close()
		if errors.Is(err, shipper.ErrNoDestination) {
			return nil, fmt.Errorf("%w: check DEST %q (it may be mistyped, or nothing was sent there yet)", err, dest)
		}
		return nil, fmt.Errorf("destination %s: %w", dest, err)
	}
	return tr, nil
}

// destKey names a destination in resume journals, DR state and locks:
// one name however it is spelled (an absolute, clean path; a URL without
// trailing slashes or the default port).
func destKey(dest string) string {
	scheme, _, ok := strings.Cut(dest, "://")
	switch {
	case !ok:
		if abs, err := filepath.Abs(dest); err == nil {
			return abs
		}
	case scheme == "file":
		if u, err := url.Parse(dest); err == nil && u.Path != "" {
			return filepath.Clean(u.Path)
		}
	case scheme == "sftp":
		// One spelling per destination: a trailing slash, a doubled one
		// or the default port must not start another chain, journal and
		// lock for the same folder.
		if cfg, err := sftp.ParseURL(dest); err == nil {
			if cfg.Port == 22 {
				cfg.Port = 0
			}
			return cfg.String()
		}
	case scheme == "s3":
		if cfg, err := s3.ParseURL(dest); err == nil {
			return strings.TrimSuffix("s3://"+cfg.Bucket+"/"+cfg.Prefix, "/")
		}
	}
	return dest
}
