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

// TestFlushPieces checks how a window is cut into runs: a segment's
// records in runs of at least minPiece and about the window's bytes per
// stream, so that every stream gets one; in order, each record in exactly
// one run, never split; a gap over maxGap still ends a run; one stream
// gets whole segments.
func TestFlushPieces(t *testing.T) {
	const rec = 1 << 20
	var win []sourced
	for src := range 2 { // two segments of 64 records of 1 MiB, the second with a gap
		for k := range int64(64) {
			off := k * rec
			if src == 1 && k >= 40 {
				off += 2 * maxGap
			}
			win = append(win, sourced{archive.TableEntry{Segment: uint32(src), Block: uint64(src*64) + uint64(k), Offset: uint64(off), Length: rec}, src})
		}
	}
	for _, tc := range []struct {
		streams  int
		maxPiece int64
		runs     int
	}{
		{1, 1 << 40, 3},  // whole segments; the gap cuts the second
		{4, 32 * rec, 5}, // 128 MiB / 4: 32 MiB pieces; 24 MiB left after the gap
		{32, minPiece, 16},
	} {
		rd := &reader{fe: fetch{streams: tc.streams}}
		runs := make(chan run, 1000)
		if err := rd.flush(t.Context(), append([]sourced(nil), win...), runs); err != nil {
			t.Fatal(err)
		}
		close(runs)
		var n int
		next := map[int]uint64{}
		for r := range runs {
			n++
			if r.end-r.start > tc.maxPiece {
				t.Errorf("streams %d: run [%d, %d) of segment %d is longer than %d", tc.streams, r.start, r.end, r.src, tc.maxPiece)
			}
			if r.start != int64(r.entries[0].Offset) || r.end != int64(r.entries[len(r.entries)-1].Offset)+rec {
				t.Errorf("streams %d: run [%d, %d) does not span its records", tc.streams, r.start, r.end)
			}
			for _, e := range r.entries {
				if e.Block != next[r.src]+uint64(r.src*64) {
					t.Fatalf("streams %d: segment %d: block %d, want %d", tc.streams, r.src, e.Block, next[r.src]+uint64(r.src*64))
				}
				next[r.src]++
			}
		}
		if n != tc.runs || next[0] != 64 || next[1] != 64 {
			t.Errorf("streams %d: %d runs covering %v records, want %d runs covering 64 of each segment", tc.streams, n, next, tc.runs)
		}
	}
}
