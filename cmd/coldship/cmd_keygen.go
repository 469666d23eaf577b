package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/coldship/coldship/cipher"
)

type keygenOptions struct {
	output string
	json   bool
}

func newKeygenCmd(s *streams) *cobra.Command {
	opts := &keygenOptions{}
	c := &cobra.Command{
		Use:   "keygen [-o FILE]",
		Short: "Write a new age X25519 identity and print its recipient",
		Long: `Generate a new age X25519 identity. With -o it is written to FILE (mode 0600,
never overwriting an existing file; missing parent folders are created with
mode 0700) and its recipient (age1...) is printed on stdout; without -o, the
identity itself is printed on stdout, its recipient in the "# public key:"
comment.`,
		Example: `  coldship keygen -o ~/.config/coldship/site-b.key
  coldship keygen -o /etc/coldship/site-b.key > /etc/coldship/site-b.recipient`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error { return runKeygen(s, opts) },
	}
	c.Flags().StringVarP(&opts.output, "output", "o", "", "write the identity to `FILE` (mode 0600)")
	c.Flags().BoolVar(&opts.json, "json", false, "print a summary object on stdout instead")
	return c
}

func runKeygen(s *streams, opts *keygenOptions) error {
	start := time.Now()
	identity, recipient, err := cipher.GenerateIdentity()
	if err != nil {
		return err
	}
	summary := map[string]any{"type": "summary", "op": "keygen", "recipient": recipient}
	if opts.output == "" {
		if opts.json {
			summary["identity"] = identity
			summary["duration_s"] = time.Since(start).Seconds()
			return s.emit(summary)
		}
		fmt.Fprintf(s.out, "# public key: %s\n%s\n", recipient, identity)
		return nil
	}
	if err := writeIdentity(opts.output, recipient, identity); err != nil {
		return err
	}
	if opts.json {
		summary["file"] = opts.output
		summary["duration_s"] = time.Since(start).Seconds()
		return s.emit(summary)
	}
	fmt.Fprintln(s.out, recipient)
	return nil
}

// writeIdentity creates file (and its missing parents, 0700) holding the
// identity, never replacing an existing file, and never leaving a partial
// one behind.
func writeIdentity(file, recipient, identity string) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return fmt.Errorf("write identity: create the folder for %s: %w", file, err)
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("write identity: %s already exists and is kept as it is: choose another file name, or move that file away first", file)
	}
	if err != nil {
		return fmt.Errorf("write identity: %w", err)
	}
	_, err = fmt.Fprintf(f, "# created by coldship keygen\n# public key: %s\n%s\n", recipient, identity)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(file)
		return fmt.Errorf("write identity %s: %w", file, err)
	}
	return nil
}
