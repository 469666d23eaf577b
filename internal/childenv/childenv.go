// Package childenv is the environment of the programs coldship starts:
// hooks, virsh, an ssh_config ProxyCommand. It is coldship's own, without
// the variables coldship reads secrets from: none of those programs needs
// them, and one that logs its environment, or runs a command with set -x,
// must not be able to show them.
package childenv

import (
	"os"
	"slices"
	"strings"
)

// Secret are the variables coldship reads secrets from. The credentials
// of the user's own tools (AWS_SECRET_ACCESS_KEY, SSH_AUTH_SOCK...) are not
// among them: hooks and proxies may need them.
var Secret = []string{"COLDSHIP_PASSPHRASE"}

// Environ is the environment to start a program with: the process's own,
// without Secret.
func Environ() []string { return Without(os.Environ(), Secret...) }

// Without returns environ without the variables named.
func Without(environ []string, names ...string) []string {
	out := make([]string, 0, len(environ))
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(names, name) {
			out = append(out, kv)
		}
	}
	return out
}
