// Package outdir creates the directories a restore writes into, and
// remembers which it created so that a failed restore can remove them.
package outdir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Mkdirs creates p and its missing parents (mode 0755) and appends the
// directories it created, parents first, to *created.
func Mkdirs(p string, created *[]string) error {
	var missing []string
	for d := p; ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		}
		missing = append(missing, d)
		if d == filepath.Dir(d) {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create directory %s: %w", missing[i], err)
		}
		*created = append(*created, missing[i])
	}
	return nil
}
