package restore

import (
	"fmt"
	"path"

	"github.com/coldship/coldship/archive"
)

// includer decides which files and folders a partial restore (receive
// --include) writes: a file or folder is restored when a pattern matches
// its path or the path of a folder it lies in, and a folder also when a
// restored file lies in it (the folders on the way are created).
//
// An overlay image brings its backing chain: the layers it reads through
// are restored with it (layers lists those no pattern matched), so that it
// can be pointed at them. An image with data files (a vmdk descriptor's
// extents) brings them too, a layer's as an included image's: without
// them it restores as a disk with nothing in it.
type includer struct {
	files     []archive.File
	patterns  []string
	keep      []bool
	layers    []string
	dataFiles []dataFile // those no pattern matched
}

// dataFile is a data file restored because the image of Of needs it.
type dataFile struct{ Path, Of string }

func newIncluder(files []archive.File, patterns []string) *includer {
	inc := &includer{files: files, patterns: patterns}
	if len(patterns) == 0 {
		return inc
	}
	inc.keep = make([]bool, len(files))
	byPath := map[string]int{}
	for i := range files {
		byPath[files[i].Path] = i
	}
	for i := range files {
		if !inc.matches(files[i].Path) {
			continue
		}
		inc.keepWithFolders(i, byPath)
	}
	for i := range files {
		if !inc.keep[i] {
			continue
		}
		// The manifest's check bounds every chain (no loops).
		for b := files[i].Backing; b != nil; {
			j, ok := byPath[b.Path]
			if !ok {
				break
			}
			if !inc.keep[j] {
				inc.keepWithFolders(j, byPath)
				inc.layers = append(inc.layers, files[j].Path)
			}
			b = files[j].Backing
		}
	}
	// The manifest's check: a data file has no data files of its own.
	for i := range files {
		if !inc.keep[i] {
			continue
		}
		for _, d := range files[i].DataFiles {
			if j, ok := byPath[d]; ok && !inc.keep[j] {
				inc.keepWithFolders(j, byPath)
				inc.dataFiles = append(inc.dataFiles, dataFile{d, files[i].Path})
			}
		}
	}
	return inc
}

// keepWithFolders keeps file i and the folders it lies in.
func (inc *includer) keepWithFolders(i int, byPath map[string]int) {
	inc.keep[i] = true
	for d := path.Dir(inc.files[i].Path); d != "."; d = path.Dir(d) {
		if j, ok := byPath[d]; ok {
			inc.keep[j] = true
		}
	}
}

// matches reports whether a pattern matches p or a folder p lies in.
func (inc *includer) matches(p string) bool {
	for q := p; q != "."; q = path.Dir(q) {
		for _, pat := range inc.patterns {
			if ok, _ := path.Match(pat, q); ok {
				return true
			}
		}
	}
	return false
}

// check refuses malformed patterns and patterns that match nothing: a
// typo must not make a restore that writes nothing and exits 0.
func (inc *includer) check() error {
	for _, pat := range inc.patterns {
		if _, err := path.Match(pat, ""); err != nil {
			return fmt.Errorf("--include %q: %w", pat, err)
		}
		found := false
		for i := range inc.files {
			if inc.files[i].Type == archive.TypeFile && (&includer{patterns: []string{pat}}).matches(inc.files[i].Path) {
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("--include %q matches no file of the shipment", pat)
		}
	}
	return nil
}

func (inc *includer) wanted(i int) bool { return inc.keep == nil || inc.keep[i] }
