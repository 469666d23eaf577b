package main

import (
	"fmt"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// version is set at build time by the Makefile:
// -ldflags "-X main.version=$(git describe --tags --always --dirty)".
var version = "(devel)"

// commit is set at build time by the Makefile when the toolchain does not
// stamp the VCS revision itself (-buildvcs=false).
var commit = ""

// buildInfo is what coldship knows of its own build.
type buildInfo struct {
	Type         string       `json:"type"`
	Version      string       `json:"version"`
	Go           string       `json:"go"`
	Commit       string       `json:"commit"`
	Modified     bool         `json:"modified"`
	Dependencies []dependency `json:"dependencies"`
}

type dependency struct {
	Path    string `json:"path"`
	Version string `json:"version"`
}

// readBuildInfo reads the version the Makefile set and the build
// information the Go toolchain records: its version, the commit
// (vcs.revision, when built with VCS stamping) and the modules built in.
func readBuildInfo() buildInfo {
	bi := buildInfo{Type: "version", Version: version, Go: "unknown", Commit: commit, Dependencies: []dependency{}}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		bi.Modified = strings.HasSuffix(bi.Version, "-dirty")
		return bi
	}
	bi.Go = info.GoVersion
	if bi.Version == "(devel)" && info.Main.Version != "" {
		bi.Version = info.Main.Version // go install module@version
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			bi.Commit = s.Value
		case "vcs.modified":
			bi.Modified = s.Value == "true"
		}
	}
	if strings.HasSuffix(bi.Version, "-dirty") {
		bi.Modified = true
	}
	for _, d := range info.Deps {
		v := d.Version
		if d.Replace != nil {
			v += " => " + d.Replace.Path + " " + d.Replace.Version
		}
		bi.Dependencies = append(bi.Dependencies, dependency{d.Path, v})
	}
	return bi
}

// versionText is what `coldship version` and `--version` print.
func versionText(bi buildInfo) string {
	var b strings.Builder
	commit := bi.Commit
	if commit == "" {
		commit = "unknown"
	}
	if bi.Modified {
		commit += " (dirty)"
	}
	fmt.Fprintf(&b, "coldship %s\n  go:     %s\n  commit: %s\n", bi.Version, bi.Go, commit)
	if len(bi.Dependencies) > 0 {
		b.WriteString("  dependencies:\n")
		for _, d := range bi.Dependencies {
			fmt.Fprintf(&b, "    %s %s\n", d.Path, d.Version)
		}
	}
	return b.String()
}

type versionOptions struct {
	json bool
}

func newVersionCmd(s *streams) *cobra.Command {
	opts := &versionOptions{}
	c := &cobra.Command{
		Use:   "version",
		Short: "Print the version, Go version, commit and dependencies",
		Long: `Print coldship's version (set at build time from git describe), the Go version
it was built with, the commit (marked dirty if the tree had uncommitted
changes) and the version of every module built into it. --version prints
the same.`,
		Example: `  coldship version
  coldship version --json | jq -r .commit`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			bi := readBuildInfo()
			if opts.json {
				return s.emit(bi)
			}
			_, err := fmt.Fprint(s.out, versionText(bi))
			return err
		},
	}
	c.Flags().BoolVar(&opts.json, "json", false, "print one JSON object on stdout")
	return c
}
