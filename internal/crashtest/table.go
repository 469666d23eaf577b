package crashtest

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"syscall"
)

// SignalName is the short name of the signals the driver sends.
func SignalName(sig syscall.Signal) string {
	if sig == syscall.SIGKILL {
		return "KILL"
	}
	return "TERM"
}

// Cell names a row of the table: transport/command/signal.
func Cell(transport, command string, sig syscall.Signal) string {
	return transport + "/" + command + "/" + SignalName(sig)
}

// Fraction is where in a command's bytes moved the point of seed lands in
// cell: a seed alone reproduces a point (as far as timing allows). One
// point in five lands in the last tenth, where a run commits (manifest,
// renames, marker) in few bytes; a few land past the end, and the run
// ends before its signal.
func Fraction(cell string, seed uint64) float64 {
	h := fnv.New64a()
	h.Write([]byte(cell))
	r := rand.New(rand.NewPCG(seed, h.Sum64()))
	if r.IntN(5) == 0 {
		return 0.9 + 0.11*r.Float64()
	}
	return 0.02 + 0.88*r.Float64()
}

// Tally gathers the results of points into the table `make crashtest`
// prints.
type Tally struct {
	mu    sync.Mutex
	cells map[string]*tallyCell
	order []string
}

type tallyCell struct {
	points, passed, ended int
	resent                []int64
	failures              []string
}

// Add records the result of one point.
func (t *Tally) Add(cell string, p Point, r Result) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cells == nil {
		t.cells = map[string]*tallyCell{}
	}
	c := t.cells[cell]
	if c == nil {
		c = &tallyCell{}
		t.cells[cell] = c
		t.order = append(t.order, cell)
	}
	c.points++
	if !r.Fired {
		c.ended++
	}
	if r.Err != nil {
		c.failures = append(c.failures, fmt.Sprintf("seed %d", p.Seed))
		return
	}
	c.passed++
	if r.ReSent >= 0 {
		c.resent = append(c.resent, r.ReSent)
	}
}

// Empty reports whether no point was recorded.
func (t *Tally) Empty() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.order) == 0
}

// Table renders the results as a Markdown table: per transport, command
// and signal, the points tried and passed, how many ended before their
// signal, the bytes the rerun moved again (median and maximum), and the
// seeds of the points that failed.
func (t *Tally) Table() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var b strings.Builder
	b.WriteString("| transport | command | signal | points | passed | ended first | re-sent median | re-sent max | failures |\n")
	b.WriteString("|---|---|---|---:|---:|---:|---:|---:|---|\n")
	for _, name := range t.order {
		c := t.cells[name]
		parts := strings.SplitN(name, "/", 3)
		med, mx := "-", "-"
		if n := len(c.resent); n > 0 {
			s := slices.Clone(c.resent)
			slices.Sort(s)
			med, mx = kib(s[n/2]), kib(s[n-1])
		}
		fails := "none"
		if len(c.failures) > 0 {
			fails = strings.Join(c.failures, ", ")
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %d | %d | %s | %s | %s |\n", parts[0], parts[1], parts[2],
			c.points, c.passed, c.ended, med, mx, fails)
	}
	return b.String()
}

func kib(n int64) string {
	if n < 1<<20 {
		return fmt.Sprintf("%.0f KiB", float64(n)/1024)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
