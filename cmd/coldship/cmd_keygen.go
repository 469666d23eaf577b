package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/spf13/cobra"

	"github.com/coldship/coldship/cipher"
)

type keygenOptions struct {
	output string
}

func newKeygenCmd(s *streams) *cobra.Command {
	opts := &keygenOptions{}
	c := &cobra.Command{
		Use:   "keygen [-o FILE]",
		Short: "Write a new age X25519 identity and print its recipient",
		Long: `Generate a new age X25519 identity. With -o it is written to FILE (mode 0600,
never overwriting an existing file); without, to stdout after the recipient
comment. The recipient (age1...) is printed on stdout.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error { return runKeygen(s, opts) },
	}
	c.Flags().StringVarP(&opts.output, "output", "o", "", "write the identity to `FILE` (mode 0600)")
	return c
}

func runKeygen(s *streams, opts *keygenOptions) error {
	identity, recipient, err := cipher.GenerateIdentity()
	if err != nil {
		return err
	}
	if opts.output == "" {
		fmt.Fprintf(s.out, "# public key: %s\n%s\n", recipient, identity)
		return nil
	}
	f, err := os.OpenFile(opts.output, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("write identity: %s already exists; refusing to overwrite it", opts.output)
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
		os.Remove(opts.output)
		return fmt.Errorf("write identity %s: %w", opts.output, err)
	}
	fmt.Fprintln(s.out, recipient)
	return nil
}
