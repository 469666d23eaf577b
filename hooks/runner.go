package hooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coldship/coldship/internal/childenv"
)

// DefaultTimeout is how long a hook may run when Runner.Timeout is zero.
// Hooks shut down VMs and copy configuration, so it is generous: it is
// there to end a hook that hangs, not one that is slow.
const DefaultTimeout = 30 * time.Minute

// waitDelay bounds how long Run waits for a hook's output once the hook
// has exited or been killed: a process it left behind (a daemon it
// started, or one that escaped its process group) may hold the pipe open.
const waitDelay = 2 * time.Second

// ErrHook is wrapped by every error that reports a failed hook.
var ErrHook = errors.New("hook failed")

// Error reports a hook that failed, timed out, or could not be started.
// It matches ErrHook with errors.Is.
type Error struct {
	Phase  Phase
	Hook   string // the command of a --hook flag, or the path of a file hook
	Status string // "exit status 3", "killed after 30m0s", ...
	Err    error  // underlying error, if any
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s hook %q failed: %s", e.Phase, e.Hook, e.Status)
}

func (e *Error) Is(target error) bool { return target == ErrHook }

func (e *Error) Unwrap() error { return e.Err }

// Env is what a hook learns through its environment. Empty fields are
// left out of the environment.
type Env struct {
	Shipment string   // COLDSHIP_SHIPMENT
	Dest     string   // COLDSHIP_DEST
	Out      string   // COLDSHIP_OUT (receive)
	Files    []string // COLDSHIP_FILES, newline-separated
	Error    string   // COLDSHIP_ERROR (on-failure)
}

// Runner runs the hooks of each phase: first the --hook flags of that
// phase in the order given, then the executables in Dir named after it
// (see the package documentation). The zero value runs nothing.
type Runner struct {
	Hooks   []Hook
	Dir     string        // --hooks-dir; "" for none
	Timeout time.Duration // per hook; zero means DefaultTimeout
	Stderr  io.Writer     // hook stdout and stderr, each line prefixed "[PHASE] "; nil means os.Stderr
}

// hook is one command to run.
type hook struct {
	name string // as reported in errors
	argv []string
}

// Has reports whether Run would run anything for phase. It also reports
// true when Dir cannot be read, so that Run gets to report why.
func (r *Runner) Has(phase Phase) bool {
	hs, err := r.hooks(phase, io.Discard)
	return err != nil || len(hs) > 0
}

// Run runs every hook of phase in order and stops at the first one that
// fails. Each hook gets the process environment without coldship's
// secrets (childenv.Secret), with COLDSHIP_PHASE and the non-empty fields of env
// added, and /dev/null as its standard input. A hook still running after
// Timeout is killed with its whole process group, and so is one running
// when ctx is done; the latter returns an error wrapping ctx's error, not
// ErrHook.
func (r *Runner) Run(ctx context.Context, phase Phase, env Env) error {
	stderr := r.Stderr
	if stderr == nil {
		stderr = os.Stderr
	}
	hs, err := r.hooks(phase, stderr)
	if err != nil {
		return &Error{Phase: phase, Hook: r.Dir, Status: err.Error(), Err: err}
	}
	environ := env.environ(phase, childenv.Environ())
	for _, h := range hs {
		if err := r.run(ctx, phase, h, environ, stderr); err != nil {
			return err
		}
	}
	return nil
}

func (r *Runner) run(ctx context.Context, phase Phase, h hook, environ []string, stderr io.Writer) error {
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	out := &linePrefixer{w: stderr, prefix: "[" + string(phase) + "] "}
	cmd := exec.CommandContext(hctx, h.argv[0], h.argv[1:]...)
	cmd.Env = environ
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so that killing it also kills what it
	// started: sh -c 'sleep 1000' leaves sleep holding the pipe otherwise.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err == syscall.ESRCH {
			return os.ErrProcessDone
		} else if err != nil {
			return cmd.Process.Kill()
		}
		return nil
	}
	cmd.WaitDelay = waitDelay
	err := running.start(cmd)
	if err == nil {
		err = cmd.Wait()
		running.remove(cmd.Process.Pid)
	}
	out.flush()

	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("%s hook %q: %w", phase, h.name, context.Cause(ctx))
	case errors.Is(hctx.Err(), context.DeadlineExceeded):
		return &Error{Phase: phase, Hook: h.name, Status: "killed after " + timeout.String(), Err: err}
	case errors.Is(err, exec.ErrWaitDelay):
		// The hook itself succeeded; something it started in the
		// background still holds its output, which is no longer read.
		return nil
	}
	status := err.Error()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		status = ee.ProcessState.String()
	}
	return &Error{Phase: phase, Hook: h.name, Status: status, Err: err}
}

// running holds the process groups of the hooks that run now, for
// KillRunning.
var running = processGroups{pgids: map[int]bool{}}

type processGroups struct {
	mu    sync.Mutex
	pgids map[int]bool
}

// start starts cmd, in a process group of its own, and adds it. It holds
// the lock meanwhile: a KillRunning called while the hook starts waits
// for it to be there, rather than miss it.
func (g *processGroups) start(cmd *exec.Cmd) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	g.pgids[cmd.Process.Pid] = true
	return nil
}

func (g *processGroups) remove(pgid int) {
	g.mu.Lock()
	delete(g.pgids, pgid)
	g.mu.Unlock()
}

// KillRunning kills every hook that runs now, with its whole process
// group, and returns how many it killed. It is for a process about to exit
// without waiting (a second Ctrl-C): each hook runs in its own process
// group, so the terminal's signal does not reach it, and an on-failure
// hook, which runs on after an interruption, would otherwise outlive
// coldship.
func KillRunning() int {
	running.mu.Lock()
	defer running.mu.Unlock()
	n := 0
	for pgid := range running.pgids {
		if syscall.Kill(-pgid, syscall.SIGKILL) == nil {
			n++
		}
	}
	return n
}

// hooks lists what runs for phase, reporting files it skips to stderr.
func (r *Runner) hooks(phase Phase, stderr io.Writer) ([]hook, error) {
	var hs []hook
	for _, f := range r.Hooks {
		if f.Phase == phase {
			hs = append(hs, hook{name: f.Command, argv: []string{"/bin/sh", "-c", f.Command}})
		}
	}
	if r.Dir == "" {
		return hs, nil
	}
	// Absolute, so that exec never looks a hook up in $PATH.
	root, err := filepath.Abs(r.Dir)
	if err != nil {
		return nil, fmt.Errorf("hooks dir: %w", err)
	}
	if _, err := os.Stat(root); err != nil {
		return nil, fmt.Errorf("hooks dir: %w", err)
	}
	note := func(path, why string) {
		fmt.Fprintf(stderr, "[%s] skipping %s: %s\n", phase, path, why)
	}

	single := filepath.Join(root, string(phase))
	if fi, err := os.Stat(single); err == nil {
		if ok, why := runnable(fi); ok {
			hs = append(hs, hook{name: single, argv: []string{single}})
		} else {
			note(single, why)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("hooks dir: %w", err)
	}

	dir := filepath.Join(root, string(phase)+".d")
	entries, err := os.ReadDir(dir) // sorted by name
	if errors.Is(err, os.ErrNotExist) {
		return hs, nil
	} else if err != nil {
		return nil, fmt.Errorf("hooks dir: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || strings.HasSuffix(name, "~") {
			continue // like run-parts: hidden files and editor backups
		}
		path := filepath.Join(dir, name)
		fi, err := os.Stat(path)
		if err != nil {
			note(path, err.Error())
			continue
		}
		if ok, why := runnable(fi); ok {
			hs = append(hs, hook{name: path, argv: []string{path}})
		} else {
			note(path, why)
		}
	}
	return hs, nil
}

// runnable says whether a hooks-dir entry is run, and if not, why: a hook
// that was meant to run but lacks its x bit must not pass unnoticed.
func runnable(fi os.FileInfo) (bool, string) {
	switch {
	case !fi.Mode().IsRegular():
		return false, "not a regular file"
	case fi.Mode().Perm()&0o111 == 0:
		return false, "not executable"
	}
	return true, ""
}

// envNames are the variables Run sets; inherited values of them are
// dropped so that a coldship run from a hook cannot leak its own.
var envNames = []string{"COLDSHIP_PHASE", "COLDSHIP_SHIPMENT", "COLDSHIP_DEST", "COLDSHIP_OUT", "COLDSHIP_FILES", "COLDSHIP_ERROR"}

func (e Env) environ(phase Phase, base []string) []string {
	env := childenv.Without(base, envNames...)
	add := func(name, value string) {
		if value != "" {
			env = append(env, name+"="+value)
		}
	}
	add("COLDSHIP_PHASE", string(phase))
	add("COLDSHIP_SHIPMENT", e.Shipment)
	add("COLDSHIP_DEST", e.Dest)
	add("COLDSHIP_OUT", e.Out)
	add("COLDSHIP_FILES", strings.Join(e.Files, "\n"))
	add("COLDSHIP_ERROR", e.Error)
	return env
}

// maxLine bounds the memory a hook that never prints a newline can use:
// a longer line is written out in pieces.
const maxLine = 64 << 10

// linePrefixer writes each line written to it to w with prefix before it.
// It never fails: a hook must not die because our stderr went away.
// exec.Cmd calls Write from one goroutine at a time, since the same
// *linePrefixer is both Stdout and Stderr.
type linePrefixer struct {
	w      io.Writer
	prefix string
	buf    []byte // prefix and the line so far
}

func (p *linePrefixer) Write(b []byte) (int, error) {
	n := len(b)
	for len(b) > 0 {
		if len(p.buf) == 0 {
			p.buf = append(p.buf, p.prefix...)
		}
		room := maxLine - (len(p.buf) - len(p.prefix))
		if i := bytes.IndexByte(b, '\n'); i >= 0 && i < room {
			p.buf = append(p.buf, b[:i+1]...)
			b = b[i+1:]
			p.w.Write(p.buf)
			p.buf = p.buf[:0]
			continue
		}
		take := min(len(b), room)
		p.buf = append(p.buf, b[:take]...)
		b = b[take:]
		if take == room {
			p.flush()
		}
	}
	return n, nil
}

// flush writes out a last line that did not end in a newline.
func (p *linePrefixer) flush() {
	if len(p.buf) > 0 {
		p.w.Write(append(p.buf, '\n'))
		p.buf = p.buf[:0]
	}
}
