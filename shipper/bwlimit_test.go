package shipper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

// fakeClock is simulated time: Sleep advances it at once. The tests that
// use it drive the wrapper from one goroutine, so time passes only while
// the wrapper waits for tokens.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time { return c.now }

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.now = c.now.Add(d)
	return nil
}

// admission is one read handed on by the wrapper: when, and how many bytes.
type admission struct {
	at time.Time
	n  int
}

// admittedReader records, on the simulated clock, every read that comes
// out of the wrapper.
type admittedReader struct {
	r     io.Reader
	clock *fakeClock
	log   *[]admission
}

func (a *admittedReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 {
		*a.log = append(*a.log, admission{a.clock.now, n})
	}
	return n, err
}

// recordingTransport reads what Put is given into nothing, recording each
// read.
type recordingTransport struct {
	Transport
	clock *fakeClock
	log   []admission
}

func (r *recordingTransport) Put(ctx context.Context, name string, src io.Reader, size int64) error {
	_, err := io.Copy(io.Discard, &admittedReader{src, r.clock, &r.log})
	return err
}

// maxInWindow returns the most bytes admitted in any window of length w
// (windows start at an admission; admissions are in time order).
func maxInWindow(log []admission, w time.Duration) int {
	best, sum, j := 0, 0, 0
	for i := range log {
		for ; j < len(log) && log[j].at.Sub(log[i].at) < w; j++ {
			sum += log[j].n
		}
		best = max(best, sum)
		sum -= log[i].n
	}
	return best
}

// TestLimitBandwidthHoldsForAnySize puts transfers of many sizes through
// the wrapper on simulated time and checks the rate of each whole transfer
// and of every second within it: within 10% of the limit, whatever the size
// (a full bucket at the start used to let 32 KiB through for free:
// --bwlimit 1K on 100 KB averaged 1.48 KiB/s).
func TestLimitBandwidthHoldsForAnySize(t *testing.T) {
	rates := []int64{1 << 10, 10 << 10, 1 << 20, 100 << 20}
	sizes := []int{1, 100, 1000, 32 << 10, 100000, 1 << 20, 20 << 20}
	for _, rt := range rates {
		for _, size := range sizes {
			if time.Duration(size)*time.Second/time.Duration(rt) > time.Hour {
				continue // nothing new to learn, much to loop over
			}
			t.Run(fmt.Sprintf("rate=%d/size=%d", rt, size), func(t *testing.T) {
				clk := &fakeClock{now: time.Unix(1e9, 0)}
				rec := &recordingTransport{clock: clk}
				tr := limitBandwidth(rec, rt, clk)
				start := clk.now
				if err := tr.Put(context.Background(), "x", io.LimitReader(zeros{}, int64(size)), int64(size)); err != nil {
					t.Fatal(err)
				}
				elapsed := clk.now.Sub(start)
				got := float64(size) / elapsed.Seconds()
				if got > 1.1*float64(rt) || got < 0.9*float64(rt) {
					t.Errorf("%d bytes took %v of simulated time: %.0f B/s, want %d B/s ±10%%", size, elapsed, got, rt)
				}
				// By any moment, no more than the rate times the time so far.
				sum := 0
				for _, a := range rec.log {
					sum += a.n
					if allowed := float64(rt) * a.at.Sub(start).Seconds(); float64(sum) > allowed+1e-6*float64(rt) {
						t.Fatalf("%d bytes admitted after %v, more than the %.0f the rate allows", sum, a.at.Sub(start), allowed)
					}
				}
			})
		}
	}
}

// TestLimitBandwidthAfterIdle checks that a pause does not save up a large
// burst: after ten idle seconds, no second moves more than the limit +10%.
func TestLimitBandwidthAfterIdle(t *testing.T) {
	for _, rt := range []int64{1 << 10, 1 << 20, 200 << 20} {
		t.Run(fmt.Sprint(rt), func(t *testing.T) {
			clk := &fakeClock{now: time.Unix(1e9, 0)}
			rec := &recordingTransport{clock: clk}
			tr := limitBandwidth(rec, rt, clk)
			for range 2 {
				if err := tr.Put(context.Background(), "x", io.LimitReader(zeros{}, 3*rt), -1); err != nil {
					t.Fatal(err)
				}
				clk.now = clk.now.Add(10 * time.Second)
			}
			if got := maxInWindow(rec.log, time.Second); float64(got) > 1.1*float64(rt) {
				t.Errorf("%d bytes in one second, limit %d", got, rt)
			}
		})
	}
}

// TestLimitBandwidthSharedByStreams reads two objects turn about: they
// share one bucket, so together they keep to the limit.
func TestLimitBandwidthSharedByStreams(t *testing.T) {
	const rt = 64 << 10
	clk := &fakeClock{now: time.Unix(1e9, 0)}
	mem := &memTransport{objects: map[string][]byte{"a": make([]byte, 5*rt), "b": make([]byte, 5*rt)}}
	tr := limitBandwidth(mem, rt, clk)
	start := clk.now
	ra, _ := tr.Open(context.Background(), "a", 0, -1)
	rb, _ := tr.Open(context.Background(), "b", 0, -1)
	defer ra.Close()
	defer rb.Close()
	buf := make([]byte, 4096)
	total := 0
	for _, r := range []io.Reader{ra, rb, ra, rb} {
		for range 2 * rt / len(buf) {
			n, err := io.ReadFull(r, buf)
			if err != nil {
				t.Fatal(err)
			}
			total += n
		}
	}
	if got := float64(total) / clk.now.Sub(start).Seconds(); got > 1.1*rt || got < 0.9*rt {
		t.Errorf("two streams together moved %.0f B/s, limit %d", got, rt)
	}
}

// zeros yields zero bytes without end.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// exclusiveMem adds PutNew to memTransport.
type exclusiveMem struct{ memTransport }

func (m *exclusiveMem) PutNew(ctx context.Context, name string, r io.Reader, size int64) error {
	m.mu.Lock()
	_, exists := m.objects[name]
	m.mu.Unlock()
	if exists {
		return fmt.Errorf("put %s: %w", name, ErrObjectExists)
	}
	return m.Put(ctx, name, r, size)
}

// TestLimitBandwidthKeepsCapabilities checks that the wrapper neither hides
// nor invents PutNew, and that PutNew's bytes are paid for too.
func TestLimitBandwidthKeepsCapabilities(t *testing.T) {
	if _, ok := LimitBandwidth(&memTransport{objects: map[string][]byte{}}, 1<<20).(ExclusiveCreator); ok {
		t.Error("the wrapper of a transport without PutNew claims to have it")
	}
	inner := &exclusiveMem{memTransport{objects: map[string][]byte{}}}
	tr := LimitBandwidth(inner, 1<<20)
	ec, ok := tr.(ExclusiveCreator)
	if !ok {
		t.Fatal("the wrapper hides PutNew")
	}
	w := &countingWaiter{}
	tr.(*limitedExclusive).lim = w
	ctx := context.Background()
	if err := ec.PutNew(ctx, "k", strings.NewReader("first"), 5); err != nil {
		t.Fatal(err)
	}
	if err := ec.PutNew(ctx, "k", strings.NewReader("second"), 6); !errors.Is(err, ErrObjectExists) {
		t.Errorf("second PutNew: %v, want ErrObjectExists", err)
	}
	if got := string(inner.objects["k"]); got != "first" {
		t.Errorf("object holds %q after the second PutNew", got)
	}
	if w.total != 5 {
		t.Errorf("PutNew paid for %d bytes, want 5", w.total)
	}
	if _, ok := tr.(UploadAborter); !ok {
		t.Error("the wrapper hides UploadAborter")
	}
	// A wrapper that were a LinkReporter would report zeros for a
	// transport that measures no link: Unwrap leads to the one that does.
	if _, ok := tr.(LinkReporter); ok {
		t.Error("the wrapper of a transport that measures no link claims to measure it")
	}
	if u, ok := tr.(interface{ Unwrap() Transport }); !ok || u.Unwrap() != Transport(inner) {
		t.Error("the wrapper does not unwrap to the transport it limits")
	}
	if _, ok := tr.(TemporaryRemover); !ok {
		t.Error("the wrapper hides TemporaryRemover")
	}
}
