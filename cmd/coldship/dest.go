package main

import (
	"context"
	"net/url"
	"strings"

	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/local"
)

// transportOptions are the flags that shape a connection to DEST.
type transportOptions struct {
	streams int
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
	}
	return nil, usagef("DEST %q: unknown scheme %q (want a path, file://, sftp:// or s3://)", dest, scheme)
}
