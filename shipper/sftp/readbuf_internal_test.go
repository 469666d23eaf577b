package sftp

import "testing"

// TestReadBuffers: a reader's own chunk never waits; chunks are lent
// while the lent ones and one owned chunk per stream fit the budget, to
// the readers waiting in the order they asked; a wait given up takes its
// place out of the queue, or gives back what it was lent.
func TestReadBuffers(t *testing.T) {
	b := newReadBuffers(6*readChunk, 2) // 6 chunks, 2 kept for streams
	check := func(step string, owned, lent, queued int) {
		t.Helper()
		if b.owned != owned || b.lent != lent || len(b.queue) != queued {
			t.Fatalf("%s: owned %d lent %d queued %d, want %d %d %d", step, b.owned, b.lent, len(b.queue), owned, lent, queued)
		}
	}
	own1 := b.own()
	var lent [][]byte
	for range 4 {
		buf := b.lend(make(chan []byte, 1))
		if buf == nil {
			t.Fatalf("lend %d refused within the budget", len(lent)+1)
		}
		lent = append(lent, buf)
	}
	check("one reader, four lent", 1, 4, 0)
	w1, w2, w3 := make(chan []byte, 1), make(chan []byte, 1), make(chan []byte, 1)
	for _, w := range []chan []byte{w1, w2, w3} {
		if b.lend(w) != nil {
			t.Fatal("lent beyond the budget")
		}
	}
	check("budget spent", 1, 4, 3)
	own2, own3, own4 := b.own(), b.own(), b.own() // more readers than streams: never wait
	check("three more readers", 4, 4, 3)

	b.put(lent[0], true)
	b.put(lent[1], true)
	check("owned and lent still over the budget: nothing lent on", 4, 2, 3)
	b.put(own4, false)
	check("room for one", 3, 3, 2)
	if len(w1) != 1 || len(w2) != 0 || len(w3) != 0 {
		t.Fatalf("lent to the waiters %d %d %d, want to the first one only", len(w1), len(w2), len(w3))
	}
	b.cancel(w2) // still queued: leaves the queue
	check("second waiter gone", 3, 3, 1)
	b.cancel(w1) // was lent a chunk: gives it back, and it goes to w3
	check("first waiter gone", 3, 3, 0)
	if len(w3) != 1 {
		t.Fatal("the chunk given back did not go to the next waiter")
	}
	for _, buf := range [][]byte{<-w3, lent[2], lent[3]} {
		b.put(buf, true)
	}
	for _, buf := range [][]byte{own1, own2, own3} {
		b.put(buf, false)
	}
	check("all back", 0, 0, 0)
	if b.peakOut != 8 || b.peakLent != 4 {
		t.Errorf("peaks %d out, %d lent; want 8 and 4", b.peakOut, b.peakLent)
	}
	if len(b.free) != b.peakOut {
		t.Errorf("%d buffers kept for reuse, want the %d made", len(b.free), b.peakOut)
	}
}
