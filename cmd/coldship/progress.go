package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/internal/units"
	"github.com/coldship/coldship/shipper"
)

// outputOptions are the flags that choose what is printed.
type outputOptions struct {
	json  bool
	quiet bool
}

// moved returns the bytes an operation has really moved, from which its
// rate is computed: holes and zero blocks that were skipped never count.
type moved func(*shipper.Counters) int64

// Bytes put to or fetched from the destination (what --bwlimit limits).
func movedShipped(c *shipper.Counters) int64 { return c.Shipped.Load() }

// Bytes fetched, plus those of existing files read back (receive --into).
func movedFetchedAndRead(c *shipper.Counters) int64 { return c.Shipped.Load() + c.Read.Load() }

// rateWindow is how far back the rate looks: long enough to smooth
// segment-sized bursts, short enough to follow a change of pace.
const rateWindow = 10 * time.Second

type sample struct {
	t           time.Time
	moved, done int64 // done: logical bytes processed, less holes skipped
}

// reporter shows progress: a bar on stderr when it is a terminal, NDJSON
// progress objects on stdout with --json, nothing otherwise.
type reporter struct {
	s       *streams
	op      string
	o       outputOptions
	cnt     *shipper.Counters
	moved   moved
	start   time.Time // the command's start (see streams.start)
	samples []sample
	stop    chan struct{}
	done    chan struct{}
	tty     int                      // stderr's file descriptor, for its width
	bar     *progressbar.ProgressBar // on a terminal; nil otherwise
	drawn   bool
}

func startProgress(s *streams, op string, o outputOptions, cnt *shipper.Counters, m moved) *reporter {
	start := s.start
	if start.IsZero() {
		start = time.Now()
	}
	r := &reporter{s: s, op: op, o: o, cnt: cnt, moved: m, start: start, stop: make(chan struct{}), done: make(chan struct{})}
	interval := time.Second
	switch fd, tty := s.stderrTerminal(); {
	case o.json && !o.quiet:
	case !o.quiet && tty:
		interval, r.tty = 200*time.Millisecond, fd
		r.bar = newBar(s, op)
	default:
		close(r.done)
		return r
	}
	r.samples = append(r.samples, r.sample(time.Now()))
	go func() {
		defer close(r.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case now := <-t.C:
				r.tick(now)
			case <-r.stop:
				return
			}
		}
	}()
	return r
}

func (r *reporter) sample(now time.Time) sample {
	return sample{t: now, moved: r.moved(r.cnt), done: r.cnt.Done.Load() - r.cnt.Hole.Load()}
}

// rates returns the bytes moved per second over the window, and the
// estimated time left: the bytes left to read or fetch (holes ahead not
// counted, where they are known) at the pace that bytes that were not
// skipped were processed. ok is false until there is a
// pace to go by.
func (r *reporter) rates(now time.Time) (perSecond float64, eta time.Duration, ok bool) {
	cur := r.sample(now)
	r.samples = append(r.samples, cur)
	for len(r.samples) > 2 && now.Sub(r.samples[1].t) >= rateWindow {
		r.samples = r.samples[1:]
	}
	first := r.samples[0]
	dt := now.Sub(first.t).Seconds()
	if dt <= 0 {
		return 0, 0, false
	}
	perSecond = float64(cur.moved-first.moved) / dt
	pace := float64(cur.done-first.done) / dt
	// Nothing left to read is not nothing left to do: the last segments
	// are still being put (synced, uploaded), so no ETA is claimed then.
	// Holes still ahead take no time: they are not left to do.
	left := r.cnt.Left()
	if pace <= 0 || left <= 0 {
		return perSecond, 0, false
	}
	return perSecond, time.Duration(float64(left) / pace * float64(time.Second)), true
}

func (r *reporter) tick(now time.Time) {
	rate, eta, etaOK := r.rates(now)
	total, done := r.cnt.Total.Load(), r.cnt.Done.Load()
	if r.bar != nil {
		r.draw(total, done, r.details(total, done, rate, eta, etaOK))
		return
	}
	ev := map[string]any{
		"type": "progress", "op": r.op, "bytes_total": total, "bytes_done": done,
		"bytes_read": r.cnt.Read.Load(), "bytes_shipped": r.cnt.Shipped.Load(),
		"bytes_per_s": rate, "duration_s": now.Sub(r.start).Seconds(),
	}
	if etaOK {
		ev["eta_s"] = eta.Seconds()
	}
	r.s.emit(ev)
}

// newBar makes the terminal bar. The library draws it; its own rate and
// time left are off: they would count the logical bytes the bar fills
// with, holes included, where ours count only bytes really moved.
func newBar(s *streams, op string) *progressbar.ProgressBar {
	return progressbar.NewOptions64(-1,
		progressbar.OptionSetWriter(s.err),
		progressbar.OptionSetDescription(op),
		progressbar.OptionSetTheme(progressbar.ThemeASCII),
		progressbar.OptionSetWidth(20),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionSetElapsedTime(false),
		progressbar.OptionShowDescriptionAtLineEnd(),
		progressbar.OptionThrottle(0),
		progressbar.OptionSetRenderBlankState(false),
	)
}

// details is the text after the bar: bytes done of the total, bytes read
// and shipped (fetched, for receive and verify), the rate and the time left.
func (r *reporter) details(total, done int64, rate float64, eta time.Duration, etaOK bool) string {
	parts := []string{fmt.Sprintf("%s / %s", humanBytes(done), humanBytes(total))}
	if n := r.cnt.Read.Load(); n > 0 {
		parts = append(parts, "read "+humanBytes(n))
	}
	moved := "shipped " // what send puts; receive and verify fetch
	if r.op != "send" {
		moved = "fetched "
	}
	parts = append(parts, moved+humanBytes(r.cnt.Shipped.Load()), humanBytes(int64(rate))+"/s")
	switch {
	case etaOK:
		parts = append(parts, "ETA "+formatDuration(eta))
	case total > 0 && done >= total:
		parts = append(parts, "finishing")
	}
	return strings.Join(parts, ", ")
}

// draw moves the bar to done of total with the details after it, the
// whole cut to the terminal's width.
func (r *reporter) draw(total, done int64, details string) {
	if w, _, err := term.GetSize(r.tty); err == nil && w > 40 {
		if max := w - 40; len(details) > max {
			details = details[:max]
		}
	}
	if total > 0 {
		r.bar.ChangeMax64(total)
	}
	// The bar draws on each call: the value first, so that the frame with
	// the new details does not show the old percentage.
	r.bar.Set64(min(done, max(total, 0)))
	r.bar.Describe(r.op + " " + details)
	r.drawn = true
}

// formatDuration shows a time left as 42s, 3m05s or 2h07m.
func formatDuration(d time.Duration) string {
	s := int64(d.Round(time.Second) / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	}
	return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
}

// finish stops the reporter and prints the summary: an object on stdout
// with --json, one line on stderr for a person otherwise (unless --quiet).
func (r *reporter) finish(ok bool, summary map[string]any, line string) {
	select {
	case <-r.done:
	default:
		close(r.stop)
		<-r.done
	}
	if r.drawn {
		r.bar.Clear()
		fmt.Fprint(r.s.err, "\r\x1b[K")
	}
	if !ok {
		return
	}
	elapsed := time.Since(r.start)
	switch {
	case r.o.json:
		summary["type"] = "summary"
		if _, set := summary["op"]; !set {
			summary["op"] = r.op
		}
		summary["duration_s"] = elapsed.Seconds()
		r.s.emit(summary)
	case !r.o.quiet && line != "":
		fmt.Fprintf(r.s.err, "%s in %s\n", line, elapsed.Round(time.Millisecond))
	}
}

// humanBytes formats n in IEC units: 512 B, 1.5 KiB, 3.0 GiB.
func humanBytes(n int64) string { return units.IEC(n) }

// parseSize parses sizes such as 1048576, 1M, 4MiB, 512k. K, M and G are
// powers of two (KiB, MiB, GiB) whether written with the i or not.
func parseSize(s string) (int64, error) {
	var n int64
	var unit string
	if _, err := fmt.Sscanf(s, "%d%s", &n, &unit); err != nil {
		if _, err2 := fmt.Sscanf(s, "%d", &n); err2 != nil || fmt.Sprint(n) != s {
			return 0, fmt.Errorf("invalid size %q", s)
		}
		unit = ""
	}
	mult := map[string]int64{"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
		"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}
	m, ok := mult[strings.ToLower(unit)]
	if !ok || n <= 0 {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	return n * m, nil
}

// logf returns a logger for notices (resuming, retrying): notice objects
// on stdout with --json, lines on stderr otherwise, nothing with --quiet
// (with --json too: a script that wants only the summary says -q).
func (s *streams) logf(o outputOptions) func(string, ...any) {
	return func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		switch {
		case o.quiet:
		case o.json:
			s.emit(map[string]string{"type": "notice", "message": msg})
		default:
			fmt.Fprintf(s.err, "coldship: %s\n", msg)
		}
	}
}

// addOutputFlags adds --json and --quiet.
func addOutputFlags(f *pflag.FlagSet, o *outputOptions) {
	f.BoolVar(&o.json, "json", false, "JSON objects on stdout, one per line: progress, notices, a final summary or an error object (and nothing else there)")
	f.BoolVarP(&o.quiet, "quiet", "q", false, "print only errors (with --json: only the summary or the error object, no progress or notices)")
}

// describeFiles counts a shipment's files and folders for a person:
// "2 files and 1 folder".
func describeFiles(files []archive.File) string {
	var nf, nd int
	for _, f := range files {
		if f.Type == archive.TypeDir {
			nd++
		} else {
			nf++
		}
	}
	s := plural(nf, "file", "files")
	if nd > 0 {
		s += " and " + plural(nd, "folder", "folders")
	}
	return s
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
