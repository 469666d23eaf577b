// Package home finds the user's home directory the way coldship needs it
// under cron and systemd, which may start it without HOME.
package home

import (
	"os"
	"os/user"
)

// Dir is $HOME, or else the login directory the password database gives
// (a cron job or a systemd unit may run without HOME), or "" when neither
// names one.
func Dir() string {
	if h := os.Getenv("HOME"); h != "" {
		return h
	}
	if u, err := user.Current(); err == nil {
		return u.HomeDir
	}
	return ""
}
