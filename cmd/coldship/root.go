package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// streams are the process's standard streams, replaceable in tests.
type streams struct {
	in       io.Reader
	out, err io.Writer
	// start is when the command started (its flags resolved): what the
	// summaries' duration_s and throughput_bps count from, so that they
	// include connecting, waiting for a lock and the hooks.
	start time.Time
	// ctx is the command's context, cancelled by SIGINT or SIGTERM: what
	// a passphrase prompt gives up on.
	ctx context.Context
}

// context returns the command's context (Background before one runs).
func (s *streams) context() context.Context {
	if s.ctx == nil {
		return context.Background()
	}
	return s.ctx
}

func (s *streams) stdinIsTerminal() bool {
	f, ok := s.in.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// stderrTerminal returns stderr's file descriptor when it is a terminal.
func (s *streams) stderrTerminal() (int, bool) {
	w := s.err
	if sw, ok := w.(*syncWriter); ok {
		w = sw.w
	}
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return 0, false
	}
	return int(f.Fd()), true
}

func (s *streams) stdoutIsTerminal() bool {
	w := s.out
	if sw, ok := w.(*stdoutWriter); ok {
		w = sw.w
	}
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// emit writes one JSON object on stdout (--json).
func (s *streams) emit(v any) error { return writeJSON(s.out, v) }

// stdoutWriter keeps the first error of a write to stdout: what a script
// captures there (keygen's identity, a shipment id, list's lines) that
// could not be written (a full disk, an I/O error) fails the
// command, even where it was printed with fmt.Fprint and no check.
type stdoutWriter struct {
	mu  sync.Mutex
	w   io.Writer
	err error
}

func (s *stdoutWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.w.Write(p)
	if err != nil && s.err == nil {
		s.err = err
	}
	return n, err
}

// syncWriter serializes writes to stderr, which progress reports, notices
// from the pipeline (a retry, a fallback to a full shipment) and hooks
// reach from several goroutines: each line stays whole.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

const exitStatusHelp = `
EXIT STATUS
  0    success
  1    other error (a destination that does not exist, a busy lock...)
  2    usage error (a wrong flag, argument, destination URL,
       COLDSHIP_* variable or ssh_config value; a key, identity,
       recipient or passphrase file that is missing or cannot be
       used, or that needs a passphrase and there is no terminal to
       ask on)
  3    a hook failed
  4    authentication failed: no identity matches, wrong passphrase,
       unknown or changed host key, wrong credentials, a shipment not
       signed by a trusted sender (--trusted-senders)
  5    integrity: tampered, corrupted, truncated or missing data,
       an incomplete shipment, or a refused rollback or change of
       series (receive --into)
  6    busy: a source image or device in use (locked, open for writing,
       mounted), an --out-device target in use, a libvirt domain still
       running, or a source that changed while it was shipped
  130  interrupted (Ctrl-C, SIGTERM)
`

// flagsResolved, when set by a test, is called once the environment has
// been applied, before the command runs; an error stops the command.
var flagsResolved func(*cobra.Command) error

func newRootCmd(in io.Reader, out, errw io.Writer) *cobra.Command {
	s := &streams{in: in, out: out, err: &syncWriter{w: errw}}
	root := &cobra.Command{
		Use:   "coldship",
		Short: "Encrypt-then-ship cold migration of virtual machines",
		Long: `coldship seals powered-off VM disk images (raw, qcow2, vmdk, or whole VM
directories) block by block with AES-256-GCM (c2sp.org/chunked-encryption,
Cobblestone-256) under a fresh per-shipment key wrapped with age, skips holes
and zero blocks, and ships the sealed blocks to a destination, where they are
verified and restored bit-exactly.

DEST is a directory path, file:///path, sftp://[user@]host[:port]/path
(any OpenSSH server) or s3://bucket[/prefix] (S3-compatible object storage).
send --live streams to ssh://[user@]host[:port]/path instead.

With --json, every command writes newline-delimited JSON objects on stdout
(progress, a summary, or an error object) and nothing else there.`,
		Example: `  coldship keygen -o ~/.config/coldship/site-b.key
  coldship send /var/lib/libvirt/images/web01.qcow2 --to s3://dr-bucket/web01 -r age1...
  coldship receive s3://dr-bucket/web01 -i ~/.config/coldship/site-b.key --out /var/lib/libvirt/images`,
		Version:                    version,
		SuggestionsMinimumDistance: 2,
		SilenceUsage:               true,
		SilenceErrors:              true,
		// A root that runs is what lets an unknown command be a usage error
		// (exit 2) rather than cobra's plain error.
		Args: func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			return unknownCommand(c, args[0])
		},
		RunE: func(c *cobra.Command, args []string) error { return c.Help() },
		PersistentPreRunE: func(c *cobra.Command, args []string) error {
			s.start = time.Now()
			s.ctx = c.Context()
			if err := applyEnv(c); err != nil {
				return err
			}
			if flagsResolved != nil {
				return flagsResolved(c)
			}
			return nil
		},
	}
	root.SetIn(in)
	root.SetOut(out)
	root.SetErr(s.err)
	root.SetVersionTemplate(versionText(readBuildInfo()))
	root.SetHelpFunc(help)
	root.SetFlagErrorFunc(flagError)
	root.AddCommand(newKeygenCmd(s), newSendCmd(s), newReceiveCmd(s), newVerifyCmd(s), newListCmd(s),
		newPruneCmd(s), newShowCmd(s), newVersionCmd(s), newManCmd(s))
	for _, c := range root.Commands() {
		c.SetFlagErrorFunc(root.FlagErrorFunc())
		if c.Args == nil {
			continue
		}
		args := c.Args
		c.Args = func(c *cobra.Command, a []string) error {
			if err := args(c, a); err != nil {
				return usageError{fmt.Errorf("%w (see %s --help)", err, c.CommandPath())}
			}
			return nil
		}
	}
	addCompletions(root)
	return root
}

// unknownCommand is the usage error of a word that names no command of
// c, worded as cobra words it, with the command it likely misspells.
func unknownCommand(c *cobra.Command, word string) error {
	if sug := c.SuggestionsFor(word); len(sug) > 0 {
		return usagef("unknown command %q for %q: did you mean %q?", word, c.CommandPath(), sug[0])
	}
	return usagef("unknown command %q for %q: run \"%s help\" for the list of commands", word, c.CommandPath(), c.CommandPath())
}

// flagError is the usage error of a flag the command line got wrong. On
// the root, a flag that follows a word naming no command (coldship
// recieve x --json) was meant for the command that word misspells: the
// word is the mistake to report.
func flagError(c *cobra.Command, err error) error {
	if !c.HasParent() {
		if args := c.Flags().Args(); len(args) > 0 {
			return unknownCommand(c, args[0])
		}
	}
	return usageError{fmt.Errorf("%w (see %s --help)", err, c.CommandPath())}
}

// help prints a command's description and usage, then the environment
// and exit status rules shared by every command, and ends with examples.
func help(c *cobra.Command, _ []string) {
	w := c.OutOrStdout()
	fmt.Fprintf(w, "%s\n\n", strings.TrimRight(cmp.Or(c.Long, c.Short), " \n"))
	example := c.Example
	c.Example = ""
	fmt.Fprint(w, c.UsageString())
	c.Example = example
	fmt.Fprint(w, envHelp, exitStatusHelp)
	if example != "" {
		fmt.Fprintf(w, "\nEXAMPLES\n%s\n", example)
	}
}

// misspeltCommand reports a flag error on the root as the misspelt command
// it precedes (coldship --json recieve): pflag stops at the flag, so cobra
// never looked at the word that is the real mistake.
func misspeltCommand(root *cobra.Command, args []string, err error) error {
	var u usageError
	if !errors.As(err, &u) {
		return err
	}
	for _, a := range args {
		if a == "--" {
			break
		}
		if strings.HasPrefix(a, "-") {
			continue
		}
		if sub, _, ferr := root.Find([]string{a}); ferr == nil && sub != root {
			return err
		}
		if len(root.SuggestionsFor(a)) > 0 {
			return unknownCommand(root, a)
		}
		return err
	}
	return err
}
