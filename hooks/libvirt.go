package hooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/coldship/coldship/internal/childenv"
)

// DefaultShutdownWait is how long Shutdown waits when given no wait.
const DefaultShutdownWait = 5 * time.Minute

// DefaultVirshTimeout bounds one virsh run when Libvirt.Timeout is zero.
// virsh waits for libvirtd without limit, and a hung libvirtd (or a
// hypervisor stuck starting a domain) must not hang a cron job: defining
// or starting a domain takes seconds, so this is generous.
const DefaultVirshTimeout = 5 * time.Minute

// Domain states as virsh domstate prints them (with LC_ALL=C).
const (
	StateRunning = "running"
	StateShutOff = "shut off"
)

// Libvirt drives libvirt through the virsh command line client, so that
// coldship needs neither cgo nor the libvirt RPC protocol.
//
// Several virsh commands that depend on each other run in one virsh
// invocation (virsh "define ...; start ...; domstate ..."). With a real
// hypervisor that only saves connections, but libvirt's test driver
// (test:///path/to/node.xml) starts every connection afresh from its file,
// so a domain defined in one virsh run is gone in the next.
type Libvirt struct {
	URI    string    // --libvirt-uri; "" for virsh's default
	Virsh  string    // the virsh binary; "" means "virsh" from $PATH
	Stderr io.Writer // progress and virsh warnings; nil discards them
	// Timeout bounds each virsh run (killed after it); zero means
	// DefaultVirshTimeout.
	Timeout time.Duration
}

// Domain returns the persistent definition of domain name and its disks.
// Only file and block disks can be shipped: any other disk with a source
// is an error; drives without media are left out.
func (l *Libvirt) Domain(ctx context.Context, name string) (*Domain, error) {
	// --inactive: the persistent definition, which is what gets defined
	// at the destination, not the live one of a running domain.
	// No --security-info: passwords (VNC, SPICE) are not shipped.
	out, err := l.virsh(ctx, []string{"dumpxml", "--inactive", "--domain", name})
	if err != nil {
		return nil, err
	}
	return parseDomain(out)
}

// State returns the state of domain name as virsh domstate prints it:
// "running", "shut off", "paused", ...
func (l *Libvirt) State(ctx context.Context, name string) (string, error) {
	out, err := l.virsh(ctx, []string{"domstate", "--domain", name})
	if err != nil {
		return "", err
	}
	return lastLine(out), nil
}

// Shutdown asks domain name to shut down (ACPI, through virsh shutdown)
// and waits up to wait (DefaultShutdownWait if zero) for it to be shut off.
// A domain already shut off is left alone.
func (l *Libvirt) Shutdown(ctx context.Context, name string, wait time.Duration) error {
	if wait <= 0 {
		wait = DefaultShutdownWait
	}
	state, err := l.State(ctx, name)
	if err != nil {
		return err
	}
	if state == StateShutOff {
		return nil
	}
	l.logf("libvirt: shutting down domain %s (%s), waiting up to %s\n", name, state, wait)
	deadline := time.Now().Add(wait)
	if state != "in shutdown" {
		// domstate in the same run sees a shutdown that completes at once
		// (the test driver's), which a new connection would not.
		out, err := l.virsh(ctx, []string{"shutdown", "--domain", name}, []string{"domstate", "--domain", name})
		if err != nil {
			return err
		}
		state = lastLine(out)
	}
	poll := min(time.Second, max(wait/20, 10*time.Millisecond))
	for state != StateShutOff {
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: domain %s is still %s %s after asking it to shut down: shut it down yourself (virsh shutdown or destroy) or wait longer", ErrBusy, name, state, wait)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for domain %s to shut down: %w", name, context.Cause(ctx))
		case <-time.After(poll):
		}
		if state, err = l.State(ctx, name); err != nil {
			return err
		}
	}
	return nil
}

// Define defines the domain in domainXML (persistently) and returns its name.
func (l *Libvirt) Define(ctx context.Context, domainXML []byte) (string, error) {
	return l.DefineAndStart(ctx, domainXML, false)
}

// Start starts domain name and checks that it is running.
func (l *Libvirt) Start(ctx context.Context, name string) error {
	out, err := l.virsh(ctx, []string{"start", "--domain", name}, []string{"domstate", "--domain", name})
	if err != nil {
		return err
	}
	if state := lastLine(out); state != StateRunning {
		return fmt.Errorf("start domain %s: it is %s, not running", name, state)
	}
	return nil
}

// DefineAndStart defines the domain in domainXML and, if start, starts it,
// in one virsh invocation; it returns the domain's name.
func (l *Libvirt) DefineAndStart(ctx context.Context, domainXML []byte, start bool) (string, error) {
	d, err := parseDomain(domainXML)
	if err != nil {
		return "", err
	}
	// virsh define reads a file. The XML may hold secrets: CreateTemp
	// makes it 0600.
	f, err := os.CreateTemp("", "coldship-domain-*.xml")
	if err != nil {
		return "", fmt.Errorf("define domain %s: %w", d.Name, err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(domainXML)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("define domain %s: %w", d.Name, err)
	}

	cmds := [][]string{{"define", "--file", f.Name()}}
	if start {
		cmds = append(cmds, []string{"start", "--domain", d.Name})
	}
	cmds = append(cmds, []string{"domstate", "--domain", d.Name})
	out, err := l.virsh(ctx, cmds...)
	if err != nil {
		return "", err
	}
	if state := lastLine(out); start && state != StateRunning {
		return "", fmt.Errorf("start domain %s: it is %s, not running", d.Name, state)
	}
	return d.Name, nil
}

// virsh runs commands in one virsh invocation and returns what they
// printed. virsh goes on past a failed command and exits with the status
// of the last one only, so any "error:" line on its stderr fails the run.
func (l *Libvirt) virsh(ctx context.Context, cmds ...[]string) ([]byte, error) {
	bin := l.Virsh
	if bin == "" {
		bin = "virsh"
	}
	args := []string{"--quiet"}
	if l.URI != "" {
		args = append(args, "--connect", l.URI)
	}
	// One argument holding every command: virsh parses it with its own
	// shell-like quoting, which vshQuote matches.
	var line []string
	var what []string
	for _, c := range cmds {
		words := make([]string, len(c))
		for i, w := range c {
			words[i] = vshQuote(w)
		}
		line = append(line, strings.Join(words, " "))
		what = append(what, c[0])
	}
	args = append(args, strings.Join(line, " ; "))

	timeout := l.Timeout
	if timeout <= 0 {
		timeout = DefaultVirshTimeout
	}
	vctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(vctx, bin, args...)
	// States and messages in English, as this package compares them.
	cmd.Env = append(childenv.Environ(), "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = waitDelay
	err := cmd.Run()

	var errs []string
	for _, line := range strings.Split(stderr.String(), "\n") {
		line = strings.TrimSpace(line)
		if msg, ok := strings.CutPrefix(line, "error: "); ok {
			if len(errs) == 0 || errs[len(errs)-1] != msg {
				errs = append(errs, msg)
			}
		} else if line != "" {
			l.logf("virsh: %s\n", line)
		}
	}
	op := "virsh " + strings.Join(what, "; ")
	if ctx.Err() != nil {
		return nil, fmt.Errorf("%s: %w", op, context.Cause(ctx))
	}
	if vctx.Err() != nil {
		return nil, fmt.Errorf("%s: no answer after %s, killed (is libvirtd hung? virsh -c %q list)", op, timeout, l.URI)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s: %s", op, strings.Join(errs, ": "))
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("%s: %w (install libvirt-clients)", op, err)
		} else if errors.As(err, &ee) {
			return nil, fmt.Errorf("%s: %s", op, ee.ProcessState)
		}
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	return stdout.Bytes(), nil
}

func (l *Libvirt) logf(format string, args ...any) {
	if l.Stderr != nil {
		fmt.Fprintf(l.Stderr, format, args...)
	}
}

// vshQuote quotes a word for virsh's command parser: inside single quotes
// everything is literal, and a quote is closed, escaped and reopened.
func vshQuote(w string) string {
	return "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
}

// lastLine returns the last non-blank line of virsh's output.
func lastLine(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
