package main

import (
	"io"
	"os"
	"sync"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// streams are the process's standard streams, replaceable in tests.
type streams struct {
	in       io.Reader
	out, err io.Writer
}

func (s *streams) stdinIsTerminal() bool {
	f, ok := s.in.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (s *streams) stderrIsTerminal() bool {
	w := s.err
	if sw, ok := w.(*syncWriter); ok {
		w = sw.w
	}
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
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
  1    other error
  2    usage error
  3    a hook failed
  4    authentication failed: no identity matches, wrong passphrase,
       unknown or changed host key, wrong credentials
  5    integrity: tampered, corrupted, truncated or missing data,
       or an incomplete shipment
  6    source busy: an image or device in use (locked, open for writing,
       mounted), a libvirt domain still running, or a source that
       changed while it was shipped
  130  interrupted (Ctrl-C, SIGTERM)
`

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
(any OpenSSH server) or s3://bucket/prefix (S3-compatible object storage).
send --live streams to ssh://[user@]host[:port]/path instead.` + "\n" + exitStatusHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(in)
	root.SetOut(out)
	root.SetErr(s.err)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newKeygenCmd(s), newSendCmd(s), newReceiveCmd(s), newVerifyCmd(s), newListCmd(s), newPruneCmd(s))
	for _, c := range root.Commands() {
		c.SetFlagErrorFunc(root.FlagErrorFunc())
		if c.Args == nil {
			continue
		}
		args := c.Args
		c.Args = func(c *cobra.Command, a []string) error {
			if err := args(c, a); err != nil {
				return usageError{err}
			}
			return nil
		}
	}
	return root
}
