package crashtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// pollEvery is how often the bytes a process moved are read: at loopback
// rates (a few hundred MB/s) a point lands within about a hundred KiB of
// its threshold.
const pollEvery = 500 * time.Microsecond

// Command is one coldship command line.
type Command struct {
	Bin  string
	Args []string
	Env  []string // the whole environment
}

func (c Command) String() string { return "coldship " + strings.Join(c.Args, " ") }

// Trigger acts on a running process once it has moved At bytes: it
// signals it (Signal), or runs Do (a server stopped and restarted). At < 0
// never fires.
type Trigger struct {
	At     int64
	Signal syscall.Signal
	Do     func()
	// When, if set, must also hold (it is asked at every poll once At
	// is reached).
	When func() bool
}

// Kill is the trigger that sends sig once at bytes were moved.
func Kill(at int64, sig syscall.Signal) Trigger { return Trigger{At: at, Signal: sig} }

// Never runs the command to its end.
var Never = Trigger{At: -1}

// Outcome is how a run ended.
type Outcome struct {
	Code    int   // exit status; 128+N for a process ended by signal N
	Fired   bool  // the trigger fired
	FiredAt int64 // bytes moved when it fired
	Moved   int64 // bytes moved, as last seen
	Stdout  string
	Stderr  string
	Objects []map[string]any // the JSON objects of stdout
}

// Summary returns the "summary" object of a --json run, or nil.
func (o *Outcome) Summary() map[string]any {
	for _, obj := range o.Objects {
		if obj["type"] == "summary" {
			return obj
		}
	}
	return nil
}

// Int returns an integer field of the summary (0 if absent).
func (o *Outcome) Int(field string) int64 {
	v, _ := o.Summary()[field].(float64)
	return int64(v)
}

// String returns a string field of the summary.
func (o *Outcome) String(field string) string {
	v, _ := o.Summary()[field].(string)
	return v
}

// Run runs c and applies t when the process has moved t.At bytes.
func Run(ctx context.Context, c Command, t Trigger) (*Outcome, error) {
	cmd := exec.CommandContext(ctx, c.Bin, c.Args...)
	cmd.Env = c.Env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", c, err)
	}
	o := &Outcome{}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		watch(cmd.Process, t, o, done)
	}()
	err := cmd.Wait()
	close(done)
	wg.Wait()
	o.Stdout, o.Stderr = stdout.String(), stderr.String()
	o.Objects = jsonObjects(o.Stdout)
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		ws := ee.Sys().(syscall.WaitStatus)
		o.Code = ws.ExitStatus()
		if ws.Signaled() {
			o.Code = 128 + int(ws.Signal())
		}
	default:
		return o, fmt.Errorf("%s: %w", c, err)
	}
	if ctx.Err() != nil {
		return o, fmt.Errorf("%s: %w", c, ctx.Err())
	}
	return o, nil
}

// watch polls the bytes p moved until done, and applies t once.
func watch(p *os.Process, t Trigger, o *Outcome, done chan struct{}) {
	path := fmt.Sprintf("/proc/%d/io", p.Pid)
	for {
		select {
		case <-done:
			return
		default:
		}
		if n, ok := moved(path); ok && n > o.Moved {
			o.Moved = n
		}
		if !o.Fired && t.At >= 0 && o.Moved >= t.At && (t.When == nil || t.When()) {
			o.Fired, o.FiredAt = true, o.Moved
			if t.Do != nil {
				t.Do()
			} else if p.Signal(t.Signal) != nil {
				o.Fired = false // it had ended already
			}
		}
		time.Sleep(pollEvery)
	}
}

// moved reads rchar + wchar from a /proc/PID/io file: every byte read or
// written through read/write calls, files and sockets alike.
func moved(path string) (int64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	var n int64
	found := 0
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && (k == "rchar" || k == "wchar") {
			x, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, false
			}
			n += x
			found++
		}
	}
	return n, found == 2
}

// jsonObjects parses the NDJSON lines of s, skipping any that are not
// JSON objects.
func jsonObjects(s string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}
