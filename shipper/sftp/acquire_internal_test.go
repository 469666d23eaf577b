package sftp

import "testing"

// TestAcquire checks how calls are spread over the streams: a transfer
// takes a live stream of its own, else waits for one being opened, else
// one to re-open, and shares a busy one last; other calls take the least
// busy live stream; a stream whose channel was refused is never picked.
func TestAcquire(t *testing.T) {
	live := func() *stream {
		s := &stream{}
		s.set(&conn{done: make(chan struct{})})
		return s
	}
	dialing := &stream{}
	dialing.dialing.Store(true)
	broken := &stream{}
	refused := live()
	refused.refused.Store(true)
	a, b := live(), live()
	tr := &Transport{streams: []*stream{refused, a, b, dialing, broken}}
	name := map[*stream]string{refused: "refused", a: "a", b: "b", dialing: "dialing", broken: "broken"}

	b.load.Add(1) // a small call under way on b
	for i, want := range []*stream{a, b, dialing, broken} {
		if got := tr.acquire(true); got != want {
			t.Fatalf("transfer %d went to %s, want %s", i+1, name[got], name[want])
		}
	}
	// Every stream carries a transfer: the next shares the least busy.
	if got := tr.acquire(true); got != a && got != dialing && got != broken {
		t.Errorf("the fifth transfer went to %s, want one with no other call", name[got])
	}
	// A small call goes to a live stream, never to one being opened.
	for range 3 {
		if got := tr.acquire(false); got != a && got != b {
			t.Errorf("a small call went to %s", name[got])
		}
	}
	if refused.load.Load() != 0 {
		t.Error("a call went to the stream whose channel was refused")
	}
	for _, s := range []*stream{a, b, dialing, broken} {
		if s.xfers.Load() < 1 {
			t.Errorf("%s carries no transfer", name[s])
		}
	}
}
