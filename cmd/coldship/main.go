// Command coldship seals VM disk images and ships them to a destination
// (a local directory, SFTP or S3), then verifies and restores them there.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/hooks"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/sftp"
)

// Exit statuses, documented in the help and the README.
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 2
	exitHook        = 3
	exitAuth        = 4
	exitIntegrity   = 5
	exitBusy        = 6
	exitInterrupted = 130
)

// usageError marks a command line that cannot be run as given.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// errInterrupted is the cause of the context when a signal stops coldship.
var errInterrupted = errors.New("interrupted")

func exitCode(err error) int {
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errInterrupted):
		return exitInterrupted
	case errors.As(err, &ue), errors.Is(err, sftp.ErrConfig):
		return exitUsage
	case errors.Is(err, errHook):
		return exitHook
	case errors.Is(err, cipher.ErrNoIdentity), errors.Is(err, shipper.ErrAuth), errors.Is(err, shipper.ErrUntrusted):
		return exitAuth
	case errors.Is(err, archive.ErrIntegrity), errors.Is(err, cipher.ErrIntegrity), errors.Is(err, shipper.ErrRollback):
		return exitIntegrity
	case errors.Is(err, hooks.ErrBusy), errors.Is(err, shipper.ErrSourceChanged):
		return exitBusy
	}
	return exitError
}

// errorCategory names an exit status for the error object of --json, so
// that scripts can branch on a word rather than a number.
func errorCategory(code int) string {
	switch code {
	case exitUsage:
		return "usage"
	case exitHook:
		return "hook"
	case exitAuth:
		return "auth"
	case exitIntegrity:
		return "integrity"
	case 6: // the source is busy (a running VM): see EXIT STATUS
		return "busy"
	case exitInterrupted:
		return "interrupted"
	}
	return "other"
}

// errHook marks a failed hook (exit 3); hooks arrive with their issue.
var errHook = errors.New("hook failed")

// memoryLimit is the Go runtime's soft memory limit: the garbage
// collector otherwise lets the heap grow to twice what is live, and a
// receive over 32 SFTP channels, whose reads ahead fill the link
// (125 MiB live with --jobs 8), then peaked at 259 MiB of RSS against the
// README's 256. Near the limit the collector runs sooner; above it (a
// --block-size of 64M needs more) it runs at most half the time. GOMEMLIMIT
// in the environment overrides it.
const memoryLimit = 208 << 20

func main() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		cancel(errInterrupted)
		<-sigs
		// A second signal does not wait for cleanup, nor for the hooks,
		// which would outlive us in their own process groups.
		hooks.KillRunning()
		os.Exit(exitInterrupted)
	}()
	// COLDSHIP_CPUPROFILE=FILE writes a CPU profile: for benchmarking only.
	if p := os.Getenv("COLDSHIP_CPUPROFILE"); p != "" {
		if f, err := os.Create(p); err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	code := execute(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	pprof.StopCPUProfile()
	os.Exit(code)
}

// execute runs one coldship command line and returns its exit status. A
// failure is reported on stderr and, when --json is on (on the command
// line or from COLDSHIP_JSON), as an error object on stdout: even when the
// command line itself is wrong.
func execute(ctx context.Context, args []string, in io.Reader, out, errw io.Writer) int {
	if versionOnly(args) {
		return printVersion(out, errw, jsonRequested(nil, args))
	}
	stdout := &stdoutWriter{w: out}
	root := newRootCmd(in, stdout, errw)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil && stdout.err != nil {
		err = fmt.Errorf("the command finished, but what it printed on stdout was lost: %w", stdout.err)
	}
	if err != nil && context.Cause(ctx) == errInterrupted {
		err = fmt.Errorf("%w: %v", errInterrupted, err)
	}
	if cmd == root {
		err = misspeltCommand(root, args, err)
	}
	code := exitCode(err)
	if err == nil {
		return code
	}
	fmt.Fprintf(errw, "coldship: %v\n", err)
	if jsonRequested(cmd, args) {
		writeJSON(out, errorObject{Type: "error", Error: err.Error(), ExitCode: code, Category: errorCategory(code)})
	}
	return code
}

// versionOnly reports whether args are `--version` (`-v`), with or without
// --json: cobra's --version knows only its text template, and the root
// command has no --json of its own, while every command answers --json
// (or COLDSHIP_JSON).
func versionOnly(args []string) bool {
	version := false
	for _, a := range args {
		switch {
		case a == "--version", a == "-v":
			version = true
		case a == "--json", strings.HasPrefix(a, "--json="):
		default:
			return false
		}
	}
	return version
}

// printVersion prints what `coldship version` does, as JSON or text.
func printVersion(out, errw io.Writer, asJSON bool) int {
	bi := readBuildInfo()
	var err error
	if asJSON {
		err = writeJSON(out, bi)
	} else {
		_, err = fmt.Fprint(out, versionText(bi))
	}
	if err != nil {
		fmt.Fprintf(errw, "coldship: %v\n", err)
		return exitError
	}
	return exitOK
}
