package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/coldship/coldship/hooks"
)

// hookOptions are the flags shared by send and receive for hooks.
type hookOptions struct {
	hooks   []string
	dir     string
	timeout time.Duration
}

func addHookFlags(f *pflag.FlagSet, o *hookOptions) {
	f.StringArrayVar(&o.hooks, "hook", nil, "run `PHASE=COMMAND` (sh -c) at a phase: pre-send, post-send, pre-receive, post-receive, pre-switchover (send --live), on-failure (repeatable)")
	f.StringVar(&o.dir, "hooks-dir", "", "run the executables `DIR`/PHASE and DIR/PHASE.d/* at each phase")
	f.DurationVar(&o.timeout, "hook-timeout", hooks.DefaultTimeout, "kill a hook that runs longer than this")
}

func (o *hookOptions) runner(s *streams) (*hooks.Runner, error) {
	r := &hooks.Runner{Dir: o.dir, Timeout: o.timeout, Stderr: s.err}
	for _, h := range o.hooks {
		hk, err := hooks.ParseHook(h)
		if err != nil {
			return nil, usageError{fmt.Errorf("--hook %s: %w", h, err)}
		}
		r.Hooks = append(r.Hooks, hk)
	}
	if o.timeout <= 0 {
		return nil, usagef("--hook-timeout %s: give a positive duration such as 30m", o.timeout)
	}
	// A mistyped --hooks-dir is the command line's error, found before
	// anything runs, not a hook that failed (exit 3) at its first phase.
	if o.dir != "" {
		if fi, err := os.Stat(o.dir); err != nil {
			return nil, usageError{fmt.Errorf("--hooks-dir: %w", err)}
		} else if !fi.IsDir() {
			return nil, usagef("--hooks-dir %s: not a directory", o.dir)
		}
	}
	return r, nil
}

// hookErr is returned for a failed hook, so that main exits 3.
func hookErr(err error) error {
	if errors.Is(err, hooks.ErrHook) && !errors.Is(err, errHook) {
		return fmt.Errorf("%w: %w", errHook, err)
	}
	return err
}

// onFailure runs the on-failure hooks for err and returns err (or the
// interruption) unchanged; a failing on-failure hook is reported, not
// allowed to hide the original error.
func onFailure(ctx context.Context, s *streams, r *hooks.Runner, env hooks.Env, err error) error {
	if r == nil || !r.Has(hooks.OnFailure) {
		return err
	}
	env.Error = err.Error()
	// The on-failure hooks run even when the failure is an interruption.
	hctx := context.WithoutCancel(ctx)
	if herr := r.Run(hctx, hooks.OnFailure, env); herr != nil {
		fmt.Fprintf(s.err, "coldship: %v\n", herr)
	}
	return err
}
