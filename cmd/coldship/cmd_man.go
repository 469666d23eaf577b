package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

type manOptions struct {
	dir  string
	json bool
}

func newManCmd(s *streams) *cobra.Command {
	opts := &manOptions{}
	c := &cobra.Command{
		Use:   "man DIR",
		Short: "Write coldship's man pages into DIR",
		Long: `Write one man page per command (coldship.1, coldship-send.1, ...) into DIR,
created if missing, from the same text as --help.`,
		Example: `  coldship man /usr/local/share/man/man1
  coldship man ./man && man ./man/coldship-send.1`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			opts.dir = args[0]
			return runMan(s, c.Root(), opts)
		},
	}
	c.Flags().BoolVar(&opts.json, "json", false, "print a summary object on stdout")
	return c
}

func runMan(s *streams, root *cobra.Command, opts *manOptions) error {
	start := time.Now()
	if err := os.MkdirAll(opts.dir, 0o755); err != nil {
		return fmt.Errorf("man: create %s: %w", opts.dir, err)
	}
	// The pages say what --help says after the usage: the environment and
	// the exit statuses, shared by every command.
	restore := map[*cobra.Command]string{}
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		restore[c] = c.Long
		c.Long = c.Long + "\n" + envHelp + exitStatusHelp
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	defer func() {
		for c, long := range restore {
			c.Long = long
		}
	}()
	root.DisableAutoGenTag = true
	hdr := &doc.GenManHeader{Title: "COLDSHIP", Section: "1", Source: "coldship " + version, Manual: "coldship manual"}
	if err := doc.GenManTree(root, hdr, opts.dir); err != nil {
		return fmt.Errorf("man: write pages into %s: %w", opts.dir, err)
	}
	pages, err := filepath.Glob(filepath.Join(opts.dir, "coldship*.1"))
	if err != nil {
		return err
	}
	names := make([]string, len(pages))
	for i, p := range pages {
		names[i] = filepath.Base(p)
	}
	sort.Strings(names)
	if opts.json {
		return s.emit(map[string]any{"type": "summary", "op": "man", "dir": opts.dir, "pages": names,
			"duration_s": time.Since(start).Seconds()})
	}
	fmt.Fprintf(s.err, "coldship: wrote %d man pages into %s\n", len(names), opts.dir)
	return nil
}
