package live

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"filippo.io/age"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/cipher"
	"github.com/coldship/coldship/shipper"
)

// refReceiver is a reference receiver of live protocol 3, written from
// docs/LIVE.md for the sender's tests (blocks on the control lane only):
// it opens every frame at the position it counts, applies each block's
// form to an in-memory copy of its file, punches (zeroes) what the final
// manifest says is hole or zero, and checks the manifest's whole-file
// digests against the digests of the forms it applied last.
type refReceiver struct {
	in     *bufio.Reader
	out    io.Writer
	id     string
	key    *cipher.Key
	codec  *archive.Codec
	bs     int64
	seq    uint64
	files  []archive.File
	data   map[uint32][]byte
	held   map[[2]uint64]archive.Digest
	rounds []uint64 // blocks received per round
}

func (r *refReceiver) reply(kind byte, v any) {
	r.out.Write(appendFrame(nil, kind, marshal(v)))
}

// next reads the next frame of lane 0 but heartbeats, which only say
// that the sender is alive.
func (r *refReceiver) next() (frame, error) {
	for {
		fr, err := readFrame(r.in, controlKinds, nil)
		if err != nil || fr.kind != frameBeat {
			return fr, err
		}
	}
}

// open opens the next sealed frame of lane 0 of kind in round.
func (r *refReceiver) open(kind byte, round uint32) ([]byte, error) {
	fr, err := r.next()
	if err != nil {
		return nil, err
	}
	if fr.kind != kind {
		return nil, fmt.Errorf("frame %q, want %q", fr.kind, kind)
	}
	p, err := r.key.Open(nil, archive.LiveContext(r.id, kind, 0, r.seq, round), fr.body)
	r.seq++
	return p, err
}

func (r *refReceiver) run() error {
	ident, _ := age.GenerateX25519Identity()
	r.reply(replyHello, helloMsg{Protocol: 3, Recipient: ident.Recipient().String()})
	fr, err := readFrame(r.in, sessionKinds, nil)
	if err != nil {
		return err
	}
	id, wrapped, err := parseKey(fr.body)
	if err != nil {
		return err
	}
	if r.key, err = cipher.UnwrapKey(wrapped, ident); err != nil {
		return err
	}
	r.id = id
	p, err := r.open(frameSession, 0)
	if err != nil {
		return err
	}
	var sess sessionMsg
	if err := unmarshal(p, &sess); err != nil || sess.Format != 3 || sess.TimeoutMS <= 0 {
		return fmt.Errorf("session %+v: %v", sess, err)
	}
	r.bs = sess.BlockSize
	if r.codec, err = archive.NewCodec(r.key, id, archive.FormatV3, sess.Compression == "zstd", 1); err != nil {
		return err
	}
	r.data, r.held = map[uint32][]byte{}, map[[2]uint64]archive.Digest{}
	r.reply(replyReady, readyMsg{})
	for round := uint32(1); ; round++ {
		done, err := r.round(round)
		if err != nil || done {
			return err
		}
	}
}

// round receives round n, or the manifest that follows the final round.
func (r *refReceiver) round(n uint32) (bool, error) {
	fr, err := r.next()
	if err != nil {
		return false, err
	}
	if fr.kind == frameManifest {
		p, err := r.key.Open(nil, archive.LiveContext(r.id, frameManifest, 0, r.seq, n-1), fr.body)
		if err != nil {
			return false, err
		}
		return true, r.finish(p)
	}
	p, err := r.key.Open(nil, archive.LiveContext(r.id, frameBegin, 0, r.seq, n), fr.body)
	r.seq++
	if err != nil {
		return false, err
	}
	var begin beginMsg
	if err := unmarshal(p, &begin); err != nil {
		return false, err
	}
	r.files = begin.Files
	for i, f := range r.files {
		if f.Type == archive.TypeFile {
			b := r.data[uint32(i)]
			r.data[uint32(i)] = append(b[:min(int64(len(b)), f.Size)], make([]byte, max(0, f.Size-int64(len(b))))...)
		}
	}
	var blocks uint64
	for {
		fr, err := r.next()
		if err != nil {
			return false, err
		}
		if fr.kind == frameRoundEnd {
			if _, err := r.key.Open(nil, archive.LiveContext(r.id, frameRoundEnd, 0, r.seq, n), fr.body); err != nil {
				return false, err
			}
			r.seq++
			r.rounds = append(r.rounds, blocks)
			r.reply(replyAck, ackMsg{Round: n, Blocks: blocks})
			return false, nil
		}
		if err := r.block(fr, n); err != nil {
			return false, err
		}
		blocks++
	}
}

func (r *refReceiver) block(fr frame, n uint32) error {
	h, rec, err := parseBlock(fr.body)
	if err != nil {
		return err
	}
	f := r.files[h.file]
	bl := archive.BlockLen(f.Size, r.bs, int64(h.block))
	ctx := archive.LiveBlockContext(r.id, 0, r.seq, n, h.file, h.block, h.compressed)
	r.seq++
	form, _, err := r.codec.OpenLiveForm(make([]byte, archive.MaxFormLen(bl)), make([]byte, 0, 2*bl), rec, ctx, h.compressed, bl)
	if err != nil {
		return fmt.Errorf("block %d of file %d: %w", h.block, h.file, err)
	}
	blk := r.data[h.file][int64(h.block)*r.bs:][:bl]
	clear(blk)
	archive.WalkForm(form, bl, func(off int64, b []byte) error { copy(blk[off:], b); return nil }, nil)
	r.held[[2]uint64{uint64(h.file), h.block}] = archive.FormDigest(form, bl)
	return nil
}

// finish checks the live manifest against what was received.
func (r *refReceiver) finish(p []byte) error {
	m, err := archive.ParseLiveManifest(p)
	if err != nil {
		return err
	}
	for fi, f := range m.Files {
		if f.Type != archive.TypeFile {
			continue
		}
		d := archive.NewFileDigester(archive.FormatV3, f.Size, m.BlockSize)
		for _, e := range f.Extents {
			if e.Kind != archive.KindData {
				clear(r.data[uint32(fi)][e.Offset : e.Offset+e.Length])
				continue
			}
			for b := e.Offset / m.BlockSize; b*m.BlockSize < e.Offset+e.Length; b++ {
				h, ok := r.held[[2]uint64{uint64(fi), uint64(b)}]
				if !ok {
					return fmt.Errorf("%s: data block %d was never sent", f.Path, b)
				}
				d.Add(b, h)
			}
		}
		if d.Sum() != f.BLAKE3 {
			return fmt.Errorf("%s: whole-file digest differs", f.Path)
		}
	}
	r.reply(replyDone, doneMsg{Files: []string{"ok"}})
	return nil
}

// refSession runs Send against a refReceiver over pipes.
func refSession(t *testing.T, sources []archive.Source, opts SendOptions) (*SendResult, *refReceiver, error) {
	t.Helper()
	toRecv, fromSend := io.Pipe()
	toSend, fromRecv := io.Pipe()
	r := &refReceiver{in: bufio.NewReader(toRecv), out: fromRecv}
	errc := make(chan error, 1)
	go func() {
		err := r.run()
		fromRecv.Close()
		io.Copy(io.Discard, toRecv)
		errc <- err
	}()
	res, err := Send(context.Background(), Peer{In: toSend, Out: fromSend}, sources, opts)
	fromSend.Close()
	if rerr := <-errc; rerr != nil && err == nil {
		err = fmt.Errorf("reference receiver: %w", rerr)
	}
	return res, r, err
}

// TestSendProtocol3 sends a sparse image with pre-copy rounds to the
// reference receiver: only the changed blocks travel in a later round,
// and what arrives is the source.
func TestSendProtocol3(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "disk.img")
	f, _ := os.Create(p)
	f.Truncate(20*testBS + 100)
	want := make([]byte, 20*testBS+100)
	for i := int64(0); i < 20; i += 2 {
		page := make([]byte, 4096)
		rand.Read(page)
		f.WriteAt(page, i*testBS+4096*(i%16))
		copy(want[i*testBS+4096*(i%16):], page)
	}
	f.Close()
	sources, _ := archive.CollectSources([]string{p})
	rounds := 0
	opts := SendOptions{Jobs: 2, BlockSize: testBS, Compress: true, Rounds: 1,
		Switchover: func(ctx context.Context, id string) error {
			// Between the rounds: block 4 changes, block 6 becomes zero, block 9 gets data.
			f, _ := os.OpenFile(p, os.O_WRONLY, 0)
			defer f.Close()
			page := make([]byte, 4096)
			rand.Read(page)
			f.WriteAt(page, 4*testBS)
			copy(want[4*testBS:], page)
			f.WriteAt(make([]byte, 4096), 6*testBS+4096*6)
			clear(want[6*testBS+4096*6:][:4096])
			f.WriteAt(page, 9*testBS+8192)
			copy(want[9*testBS+8192:], page)
			return nil
		},
		OnRound: func(RoundStats) { rounds++ }}
	res, r, err := refSession(t, sources, opts)
	if err != nil {
		t.Fatal(err)
	}
	if rounds != 2 || len(r.rounds) != 2 || r.rounds[0] != 10 || r.rounds[1] != 2 {
		t.Errorf("rounds %d, blocks per round %v; want 10 then the 2 changed", rounds, r.rounds)
	}
	if !bytes.Equal(r.data[0], want) {
		t.Error("the receiver holds other bytes than the source")
	}
	// In the final round: 12 pages were read (block 4 has two, block 9
	// one, block 6 one page of zeros), the rest is hole.
	if res.Total != int64(len(want)) || res.Zero != 4096 || res.Hole != int64(len(want))-12*4096 {
		t.Errorf("total %d, hole %d, zero %d", res.Total, res.Hole, res.Zero)
	}
}

// TestSendFinalRoundChanged: a source written while the final round
// reads it fails the session with ErrSourceChanged; in a pre-copy round
// the same writes are expected.
func TestSendFinalRoundChanged(t *testing.T) {
	p := filepath.Join(t.TempDir(), "disk.img")
	b := make([]byte, 256*testBS)
	rand.Read(b)
	os.WriteFile(p, b, 0o644)
	sources, _ := archive.CollectSources([]string{p})
	w, _ := os.OpenFile(p, os.O_WRONLY, 0)
	defer w.Close()
	stop := make(chan struct{})
	defer close(stop)
	write := func() {
		for {
			select {
			case <-stop:
				return
			default:
				w.WriteAt([]byte("x"), 5)
			}
		}
	}
	go write() // the VM runs through the pre-copy round
	_, _, err := refSession(t, sources, SendOptions{Jobs: 2, BlockSize: testBS, Rounds: 1})
	if !errors.Is(err, shipper.ErrSourceChanged) {
		t.Errorf("err = %v, want the source changed in the final round", err)
	}
}
