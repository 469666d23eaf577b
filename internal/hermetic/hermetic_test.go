// Package hermetic holds one test: that no test, script or Makefile of the
// repository reads outside it. A user's clone has nothing beside it, so a
// path that climbs out of the repository (the vectors once lived in a
// folder next to it) passes on a developer's machine and fails everywhere
// else.
package hermetic

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// repoRoot returns the folder that holds go.mod.
func repoRoot(t *testing.T) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's folder")
		}
		dir = parent
	}
}

// depth is how many folders rel lies below the root.
func depth(rel string) int {
	if rel == "." {
		return 0
	}
	return strings.Count(filepath.ToSlash(rel), "/") + 1
}

// climb returns how many leading ".." elements a slash path has.
func climb(p string) int {
	n := 0
	for _, e := range strings.Split(filepath.ToSlash(p), "/") {
		if e != ".." {
			break
		}
		n++
	}
	return n
}

// goEscapes lists the places in a Go file where a path climbs above the
// repository: a string literal starting with enough "../", or a
// filepath.Join/path.Join whose leading arguments are enough "..".
func goEscapes(t *testing.T, file string, limit int) []string {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, file, nil, 0)
	if err != nil {
		t.Fatalf("parse %s: %v", file, err)
	}
	var out []string
	report := func(n ast.Node, what string) {
		out = append(out, fset.Position(n.Pos()).String()+": "+what)
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.BasicLit:
			if n.Kind != token.STRING {
				return true
			}
			s, err := strconv.Unquote(n.Value)
			if err == nil && climb(s) > limit {
				report(n, s)
			}
		case *ast.CallExpr:
			sel, ok := n.Fun.(*ast.SelectorExpr)
			if !ok || sel.Sel.Name != "Join" {
				return true
			}
			ups := 0
			for _, a := range n.Args {
				lit, ok := a.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					break
				}
				s, _ := strconv.Unquote(lit.Value)
				c := climb(s)
				if c == 0 {
					break
				}
				ups += c
			}
			if ups > limit {
				report(n, "Join climbs "+strconv.Itoa(ups)+" folders")
			}
		}
		return true
	})
	return out
}

var dotdots = regexp.MustCompile(`(\.\./)+`)

func TestNothingReadsOutsideTheRepository(t *testing.T) {
	root := repoRoot(t)
	var bad []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			if rel != "." && (strings.HasPrefix(d.Name(), ".") && d.Name() != ".ci" || d.Name() == "bench" || d.Name() == "demo" || d.Name() == "bin") {
				return filepath.SkipDir
			}
			return nil
		}
		dirDepth := depth(filepath.Dir(rel))
		name := d.Name()
		switch {
		case strings.HasSuffix(name, ".go"):
			bad = append(bad, goEscapes(t, p, dirDepth)...)
		case strings.HasSuffix(name, ".sh") || name == "Makefile" || filepath.Dir(rel) == ".ci":
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			for i, line := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(strings.TrimSpace(line), "#") {
					continue
				}
				for _, m := range dotdots.FindAllString(line, -1) {
					if strings.Count(m, "../") > dirDepth {
						bad = append(bad, rel+":"+strconv.Itoa(i+1)+": "+strings.TrimSpace(line))
					}
				}
				if strings.Contains(line, "/shared/testvectors") {
					bad = append(bad, rel+":"+strconv.Itoa(i+1)+": "+strings.TrimSpace(line))
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bad {
		t.Errorf("reads outside the repository: %s", b)
	}
}

// The check itself must catch what it is for.
func TestClimbDetection(t *testing.T) {
	dir := t.TempDir()
	src := `package x
import "path/filepath"
var a = filepath.Join("..", "..", "..", "..", "elsewhere", "v.json")
var b = "../../../../elsewhere/v.json"
var c = filepath.Join("testdata", "v.json")
var d = "../x"
`
	p := filepath.Join(dir, "x_test.go")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	got := goEscapes(t, p, 3)
	if len(got) != 2 {
		t.Fatalf("found %d escapes, want 2 (the Join and the literal): %q", len(got), got)
	}
}
