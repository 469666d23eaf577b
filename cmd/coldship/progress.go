package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/coldship/coldship/shipper"
)

// outputOptions are the flags that choose what goes to stderr.
type outputOptions struct {
	json  bool
	quiet bool
}

// reporter shows progress on stderr: a progress bar on a terminal, NDJSON
// with --json, nothing with --quiet or when stderr is not a terminal.
type reporter struct {
	s     *streams
	op    string
	o     outputOptions
	cnt   *shipper.Counters
	start time.Time
	stop  chan struct{}
	done  chan struct{}
	bar   *progressbar.ProgressBar
}

func startProgress(s *streams, op string, o outputOptions, cnt *shipper.Counters) *reporter {
	r := &reporter{s: s, op: op, o: o, cnt: cnt, start: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	interval := time.Second
	switch {
	case o.json:
	case !o.quiet && s.stderrIsTerminal():
		interval = 200 * time.Millisecond
		r.bar = progressbar.NewOptions64(-1,
			progressbar.OptionSetWriter(s.err),
			progressbar.OptionSetDescription(op),
			progressbar.OptionShowBytes(true),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionShowElapsedTimeOnFinish(),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionSetWidth(30),
			progressbar.OptionClearOnFinish(),
		)
	default:
		close(r.done)
		return r
	}
	go func() {
		defer close(r.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				r.tick()
			case <-r.stop:
				return
			}
		}
	}()
	return r
}

func (r *reporter) tick() {
	total, done := r.cnt.Total.Load(), r.cnt.Done.Load()
	if r.bar != nil {
		if total > 0 && r.bar.GetMax64() != total {
			r.bar.ChangeMax64(total)
		}
		r.bar.Set64(done)
		return
	}
	r.emit(map[string]any{
		"type": "progress", "op": r.op, "bytes_total": total, "bytes_done": done,
		"bytes_shipped": r.cnt.Shipped.Load(), "elapsed_s": time.Since(r.start).Seconds(),
	})
}

func (r *reporter) emit(v map[string]any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	fmt.Fprintf(r.s.err, "%s\n", b)
}

// finish stops the reporter and prints the summary: NDJSON with --json,
// one line for a person otherwise (unless --quiet).
func (r *reporter) finish(ok bool, summary map[string]any, line string) {
	select {
	case <-r.done:
	default:
		close(r.stop)
		<-r.done
	}
	if r.bar != nil {
		if ok {
			r.bar.Finish()
		} else {
			r.bar.Exit()
		}
		fmt.Fprintln(r.s.err)
	}
	if !ok {
		return
	}
	elapsed := time.Since(r.start)
	switch {
	case r.o.json:
		summary["type"] = "summary"
		summary["op"] = r.op
		summary["duration_s"] = elapsed.Seconds()
		r.emit(summary)
	case !r.o.quiet && line != "":
		fmt.Fprintf(r.s.err, "%s in %s\n", line, elapsed.Round(time.Millisecond))
	}
}

// humanBytes formats n as a power-of-two size.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// parseSize parses sizes such as 1048576, 1M, 4MiB, 512k.
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
	u := ""
	for _, c := range unit {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		u += string(c)
	}
	m, ok := mult[u]
	if !ok || n <= 0 {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	return n * m, nil
}

// logf returns a logger for notices (resuming, retrying) on stderr: NDJSON
// with --json, plain text otherwise, nothing with --quiet.
func (s *streams) logf(o outputOptions) func(string, ...any) {
	return func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		switch {
		case o.json:
			b, _ := json.Marshal(map[string]string{"type": "notice", "message": msg})
			fmt.Fprintf(s.err, "%s\n", b)
		case !o.quiet:
			fmt.Fprintf(s.err, "coldship: %s\n", msg)
		}
	}
}
