package live

import (
	"fmt"
	"os"
	"path"
	"path/filepath"

	"github.com/coldship/coldship/shipper"
)

// sameFolders fails with ErrSourceChanged if a source folder no longer
// holds what the session listed at its start: an entry added, gone, or
// replaced (a file renamed over another: the session reads the one it
// opened). The final round checks it before and after it reads, so that
// the shipment holds what the folders hold once the VM is stopped; the
// pre-copy rounds may meet the running VM's comings and goings.
func (s *sendSession) sameFolders() error {
	byName := make(map[string]*srcFile, len(s.files))
	for _, f := range s.files {
		byName[f.src.Name] = f
	}
	for _, d := range s.files {
		if d.f != nil {
			continue
		}
		fi, err := os.Stat(d.src.Path)
		if err != nil || !fi.IsDir() || !os.SameFile(fi, d.src.Info) {
			return changed(d.src.Path, "is gone or was replaced")
		}
		entries, err := os.ReadDir(d.src.Path)
		if err != nil {
			return fmt.Errorf("source folder %s: %w", d.src.Path, err)
		}
		listed := map[string]bool{}
		for _, e := range entries {
			p := filepath.Join(d.src.Path, e.Name())
			f, ok := byName[path.Join(d.src.Name, e.Name())]
			if !ok {
				return changed(p, "was added")
			}
			listed[f.src.Name] = true
			if same, err := f.is(e); err != nil || !same {
				return changed(p, "was replaced")
			}
		}
		for _, f := range s.files {
			if path.Dir(f.src.Name) == d.src.Name && filepath.Dir(f.src.Path) == d.src.Path && !listed[f.src.Name] {
				return changed(f.src.Path, "is gone")
			}
		}
	}
	return nil
}

// is says whether the folder's entry e is still the file the session
// reads (or the folder it listed).
func (f *srcFile) is(e os.DirEntry) (bool, error) {
	info, err := e.Info()
	if err != nil {
		return false, err
	}
	if f.f == nil {
		return info.IsDir() && os.SameFile(info, f.src.Info), nil
	}
	open, err := f.f.Stat()
	if err != nil {
		return false, err
	}
	return os.SameFile(info, open), nil
}

func changed(p, what string) error {
	return fmt.Errorf("%s %s since the live send listed it: %w", p, what, shipper.ErrSourceChanged)
}
