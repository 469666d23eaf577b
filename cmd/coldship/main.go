// Command coldship seals VM disk images and ships them to a destination
// (a local directory, SFTP or S3), then verifies and restores them there.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/hooks"
	"github.com/coldship/coldship/shipper"
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
	case errors.As(err, &ue):
		return exitUsage
	case errors.Is(err, errHook):
		return exitHook
	case errors.Is(err, cipher.ErrNoIdentity), errors.Is(err, shipper.ErrAuth):
		return exitAuth
	case errors.Is(err, archive.ErrIntegrity), errors.Is(err, cipher.ErrIntegrity):
		return exitIntegrity
	case errors.Is(err, hooks.ErrBusy), errors.Is(err, shipper.ErrSourceChanged):
		return exitBusy
	}
	return exitError
}

// errHook marks a failed hook (exit 3); hooks arrive with their issue.
var errHook = errors.New("hook failed")

func main() {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		cancel(errInterrupted)
		<-sigs
		os.Exit(exitInterrupted) // a second signal does not wait for cleanup
	}()
	// COLDSHIP_CPUPROFILE=FILE writes a CPU profile: for benchmarking only.
	if p := os.Getenv("COLDSHIP_CPUPROFILE"); p != "" {
		if f, err := os.Create(p); err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	root := newRootCmd(os.Stdin, os.Stdout, os.Stderr)
	err := root.ExecuteContext(ctx)
	if err != nil && context.Cause(ctx) == errInterrupted {
		err = fmt.Errorf("%w: %v", errInterrupted, err)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "coldship: %v\n", err)
	}
	pprof.StopCPUProfile()
	os.Exit(exitCode(err))
}
