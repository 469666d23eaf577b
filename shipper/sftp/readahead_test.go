package sftp_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"filippo.io/age"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/local"
	"github.com/coldship/coldship/shipper/sftp"
	"github.com/coldship/coldship/shipper/sftp/sftptest"
)

// TestReceiveReadAheadWithinBudget receives a shipment of 16 segments over
// 32 SFTP channels, all segments read at once, with the Transport's
// budget for reads lowered to the 32 streams' own chunks and 8 chunks of
// read-ahead: the chunks lent never exceed those 8, the buffers held never
// exceed them and a chunk per segment being read (each reader keeping its
// own window asked for held up to 2.5 MiB per segment), every buffer comes
// back, and the image arrives whole.
func TestReceiveReadAheadWithinBudget(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t)
	const streams, lendable = 32, 8
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	data := randomBytes(32 << 20)
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	sources, err := archive.CollectSources([]string{img})
	if err != nil {
		t.Fatal(err)
	}
	ident, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	// Sent to the directory sshd serves, without SSH: only the receive is
	// under test.
	dest, err := local.New(filepath.Join(srv.Root, "ship"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	res, err := shipper.Send(ctx, dest, sources, shipper.SendOptions{
		Recipients: []age.Recipient{ident.Recipient()}, SegmentSize: 2 << 20, Jobs: 2, Streams: 2, NoResume: true,
	})
	if err != nil {
		t.Fatal(err)
	}

	tr := dial(t, config(srv, "ship", streams))
	budget := (streams + lendable) * sftp.ReadChunk
	sftp.SetReadBudget(tr, budget)
	sh, err := shipper.OpenShipment(ctx, tr, res.ID, []age.Identity{ident})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	if _, err := sh.Receive(ctx, out, shipper.ReceiveOptions{Streams: streams, Jobs: 2}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(out, "disk.img"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("received image: %d bytes (%v), differs from the %d sent", len(got), err, len(data))
	}

	// Each segment's reader owns a chunk, and one more is the object
	// (the block table) read beside them.
	segs := len(sh.Manifest.Segments)
	held, peak, peakLent := sftp.ReadBuffers(tr)
	t.Logf("%d segments; read buffers: peak %d KiB held, %d KiB lent for read-ahead", segs, peak>>10, peakLent>>10)
	if want := (segs + 1 + lendable) * sftp.ReadChunk; peakLent > lendable*sftp.ReadChunk || peak > want {
		t.Errorf("read buffers: peak %d bytes held, %d lent for read-ahead; want at most %d and %d", peak, peakLent, want, lendable*sftp.ReadChunk)
	}
	if peakLent == 0 {
		t.Error("no chunk was read ahead")
	}
	if held != 0 {
		t.Errorf("%d bytes of read buffers not given back after the receive", held)
	}
}

// TestReadersShareBudget reads six ranges of one object in turns from one
// goroutine, with room in the budget for one chunk of read-ahead beyond
// the two streams' own: a reader that waits for read-ahead while the
// others hold theirs still moves on with its own chunk, two readers closed
// halfway give back what they held, and every byte read is right.
func TestReadersShareBudget(t *testing.T) {
	isolate(t)
	srv := sftptest.StartSSHD(t)
	tr := dial(t, config(srv, "share", 2))
	sftp.SetReadBudget(tr, 3*sftp.ReadChunk)
	ctx := context.Background()
	data := randomBytes(6 << 20)
	if err := tr.Put(ctx, "s/segments/00000001", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	type reading struct {
		rc   io.ReadCloser
		want []byte
		got  []byte
	}
	const span = 3 << 20
	var rs []*reading
	for i := range 6 {
		off := int64(i * (512<<10 + 4097))
		rc, err := tr.Open(ctx, "s/segments/00000001", off, span)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		rs = append(rs, &reading{rc: rc, want: data[off : off+span]})
	}
	buf := make([]byte, 64<<10)
	for open := len(rs); open > 0; {
		open = 0
		for i, r := range rs {
			if r.rc == nil {
				continue
			}
			n, err := r.rc.Read(buf)
			r.got = append(r.got, buf[:n]...)
			switch {
			case err == io.EOF:
			case err != nil:
				t.Fatalf("reader %d: %v", i, err)
			case i < 2 && len(r.got) >= 1<<20:
				r.want = r.want[:len(r.got)]
			default:
				open++
				continue
			}
			r.rc.Close()
			r.rc = nil
			if !bytes.Equal(r.got, r.want) {
				t.Errorf("reader %d: read %d bytes, not the %d of its range", i, len(r.got), len(r.want))
			}
		}
	}
	held, peak, peakLent := sftp.ReadBuffers(tr)
	if held != 0 {
		t.Errorf("%d bytes of read buffers not given back", held)
	}
	// The budget (3 chunks) with one chunk owned by each reader beyond
	// one per stream.
	if want := (3 + 6 - 2) * sftp.ReadChunk; peak > want || peakLent > sftp.ReadChunk {
		t.Errorf("peak %d bytes held, %d lent; want at most %d and %d", peak, peakLent, want, sftp.ReadChunk)
	}
}
