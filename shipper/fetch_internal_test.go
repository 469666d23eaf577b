package shipper

import (
	"bytes"
	"testing"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper/internal/bufpool"
)

// TestBatchSender checks how a fetcher packs records into batches: in
// order, intact, many small ones to a batch (at most maxBatch, about
// maxBatchBytes), a large one alone, never past a pool buffer, and the
// buffer of an unsent batch back in the pool on abort.
func TestBatchSender(t *testing.T) {
	const bufSize = 200 << 10
	lengths := []int{}
	for range 300 {
		lengths = append(lengths, 100) // a sparse image's records
	}
	lengths = append(lengths, 150<<10, 60<<10, 100, bufSize, 1, 70<<10)
	for range 2000 {
		lengths = append(lengths, 40<<10+7)
	}
	rd := &reader{pool: bufpool.New(4, bufSize)}
	out := make(chan batch, 1)
	done := make(chan struct{})
	var got []record
	var batches []batch
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for b := range out {
			batches = append(batches, b)
			for _, r := range b.recs {
				got = append(got, record{e: r.e, rec: append([]byte(nil), r.rec...)})
			}
			rd.pool.Put(b.buf)
		}
	}()
	bs := batchSender{rd: rd, done: done, out: out}
	for i, n := range lengths {
		rec, ok := bs.next(n)
		if !ok || len(rec) != n {
			t.Fatalf("record %d: %d bytes to read into, want %d (ok %v)", i, len(rec), n, ok)
		}
		for k := range rec {
			rec[k] = byte(i + k)
		}
		bs.add(record{e: archive.TableEntry{Block: uint64(i)}, rec: rec})
	}
	if !bs.send() {
		t.Fatal("send failed")
	}
	close(out)
	<-finished
	if len(got) != len(lengths) {
		t.Fatalf("%d records delivered, want %d", len(got), len(lengths))
	}
	for i, r := range got {
		want := make([]byte, lengths[i])
		for k := range want {
			want[k] = byte(i + k)
		}
		if r.e.Block != uint64(i) || !bytes.Equal(r.rec, want) {
			t.Fatalf("record %d delivered as record %d, or damaged", i, r.e.Block)
		}
	}
	for k, b := range batches {
		used := 0
		for _, r := range b.recs {
			used += len(r.rec)
		}
		if len(b.recs) == 0 || len(b.recs) > maxBatch || used > bufSize || len(b.recs) > 1 && used-len(b.recs[len(b.recs)-1].rec) >= maxBatchBytes {
			t.Fatalf("batch %d: %d records, %d bytes", k, len(b.recs), used)
		}
	}
	if len(batches[0].recs) != maxBatch {
		t.Errorf("small records: %d in the first batch, want %d", len(batches[0].recs), maxBatch)
	}

	// A batch not sent gives its buffer back.
	bs = batchSender{rd: rd, done: done, out: make(chan batch)}
	if _, ok := bs.next(10); !ok {
		t.Fatal("no buffer")
	}
	bs.abort()
	for range 4 {
		if _, ok := rd.pool.Get(done); !ok {
			t.Fatal("a buffer was not given back")
		}
	}
	// Ended: next gives up rather than wait for a buffer.
	close(done)
	if _, ok := bs.next(10); ok {
		t.Fatal("next succeeded with no buffer free and the context ended")
	}
}
