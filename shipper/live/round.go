package live

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/blocks"
)

// held is what the sender knows of a block before it reads it in a
// round: the digest of the form the receiver holds, if any; and, once it
// is sealed, where its frame goes.
type held struct {
	digest archive.Digest
	has    bool
	lane   *outLane
	ticket uint64
}

// round is one round's run of the block reader into the lanes.
type round struct {
	s                  *sendSession
	n                  uint32
	blocks, data, wire atomic.Int64
}

// sendRound reads every file, seals the blocks whose form differs from
// what the receiver holds and sends them, then ends the round on every
// lane and waits for the receiver's acknowledgement.
func (s *sendSession) sendRound(ctx context.Context, n uint32, final bool) (RoundStats, error) {
	opts := s.opts
	start := time.Now()
	st := RoundStats{Round: int(n), Final: final}
	cnt := opts.Counters
	for _, v := range []*atomic.Int64{&cnt.Total, &cnt.Done, &cnt.Read, &cnt.Hole, &cnt.Zero, &cnt.Data, &cnt.Shipped} {
		v.Store(0)
	}
	if final {
		if err := s.sameFolders(); err != nil {
			return st, err
		}
	}
	table, files, err := s.beginRound()
	if err != nil {
		return st, err
	}
	s.sendSealed(s.lanes[0], frameBegin, n, marshal(beginMsg{Round: n, Final: final, Files: table}))

	r := &round{s: s, n: n}
	err = blocks.Read(ctx, files, blocks.Options[held]{
		BlockSize: opts.BlockSize, Jobs: opts.Jobs, Counters: cnt, Changing: !final,
		Headroom: frameHeaderSize + blockHeaderSize,
		Prior: func(file int, block int64) (held, error) {
			d := s.files[file].held[block]
			return held{digest: d, has: d != archive.Digest{}}, nil
		},
		Seal:   func(b *blocks.Block[held]) bool { return !b.Prior.has || b.Prior.digest != b.Digest },
		Sealer: r.seal,
	}, r.emit)
	if err != nil {
		return st, err
	}
	if err := s.endRound(ctx, n, r.blocks.Load()); err != nil {
		return st, err
	}
	if final {
		// The reader checked each file once it had read it; a write that
		// lands while the round's frames are still on their way is as
		// much a change of the source: check again once the receiver
		// holds the round.
		if err := s.unchanged(); err != nil {
			return st, err
		}
	}
	st.Blocks, st.Data, st.Wire, st.Read = r.blocks.Load(), r.data.Load(), r.wire.Load(), cnt.Read.Load()
	st.Duration = time.Since(start)
	st.Seconds = st.Duration.Seconds()
	if opts.OnRound != nil {
		opts.OnRound(st)
	}
	return st, nil
}

// beginRound stamps every file, follows its size, and returns the round's
// file table and the reader's files.
func (s *sendSession) beginRound() ([]archive.File, []blocks.File, error) {
	bs := s.opts.BlockSize
	table := make([]archive.File, len(s.files))
	files := make([]blocks.File, len(s.files))
	for i, f := range s.files {
		table[i] = archive.File{Path: f.src.Name, Type: archive.TypeDir, Mode: f.src.Info.Mode().Perm()}
		if f.f == nil {
			continue
		}
		var err error
		if f.stamp, err = statStamp(f.f); err != nil {
			return nil, nil, err
		}
		f.resize(f.stamp.Size, bs)
		f.digest, f.extents = archive.NewFileDigester(archive.FormatV3, f.size, bs), nil
		table[i].Type, table[i].Size = archive.TypeFile, f.size
		files[i] = blocks.File{F: f.f, Path: f.src.Path, Stamp: f.stamp}
		s.opts.Counters.Total.Add(f.size)
	}
	return table, files, nil
}

// unchanged fails with ErrSourceChanged if a file's stamp differs from
// the one the round started with, or a source folder changed.
func (s *sendSession) unchanged() error {
	for _, f := range s.files {
		if f.f == nil {
			continue
		}
		now, err := statStamp(f.f)
		if err != nil {
			return err
		}
		if now != f.stamp {
			return fmt.Errorf("%s: %w", f.src.Path, shipper.ErrSourceChanged)
		}
	}
	return s.sameFolders()
}

// seal is the reader's Sealer: it takes the next position of a lane and
// seals the block's form into a whole frame, bound to that position.
func (r *round) seal(b *blocks.Block[held], dst, scratch []byte) ([]byte, bool, error) {
	s := r.s
	l := s.lanes[0]
	if n := len(s.lanes) - 1; n > 0 {
		l = s.lanes[1+int(s.rr.Add(1)%uint64(n))]
	}
	h := blockHeader{file: uint32(b.File), block: uint64(b.Index)}
	t := l.take(true)
	b.Prior.lane, b.Prior.ticket = l, t
	frame := appendBlockHeader(dst[:frameHeaderSize], h)
	frame, compressed, err := s.codec.SealLive(frame, scratch, b.Form, func(compressed bool) []byte {
		return archive.LiveBlockContext(s.id, l.n, t, r.n, h.file, h.block, compressed)
	})
	if err != nil {
		// The lane waits for this position: nothing can follow it.
		l.abort("")
		return nil, false, err
	}
	if compressed {
		frame[frameHeaderSize+blockHeaderSize-1] = flagCompressed
	}
	putFrameHeader(frame, frameBlock)
	return frame, compressed, nil
}

// emit takes the batches in order: it hands their frames to their lanes
// (the batch is released once the lanes wrote them all), records what the
// receiver will hold, and builds each file's extents and digest.
func (r *round) emit(b *blocks.Batch[held]) error {
	refs := atomic.Int32{}
	refs.Store(1)
	done := func() {
		if refs.Add(-1) == 0 {
			b.Release()
		}
	}
	for i := range b.Blocks {
		blk := &b.Blocks[i]
		f := r.s.files[blk.File]
		switch blk.Kind {
		case blocks.Hole:
			f.extend(archive.KindHole, blk.Len)
			continue
		case blocks.Zero:
			f.extend(archive.KindZero, blk.Len)
			continue
		}
		f.extend(archive.KindData, blk.Len)
		if err := f.digest.Add(blk.Index, blk.Digest); err != nil {
			return fmt.Errorf("live: internal error: %v", err)
		}
		if blk.Record == nil {
			continue // the receiver holds it
		}
		f.held[blk.Index] = blk.Digest
		r.blocks.Add(1)
		r.data.Add(blk.Data)
		r.wire.Add(int64(len(blk.Record)))
		r.s.opts.Counters.Data.Add(blk.Data)
		r.s.opts.Counters.Shipped.Add(int64(len(blk.Record)))
		refs.Add(1)
		blk.Prior.lane.deposit(blk.Prior.ticket, outFrame{data: blk.Record, done: done})
	}
	done()
	return nil
}

// endRound ends the round on each TCP lane, then on the control lane with
// the count of every lane, and waits for the receiver's acknowledgement.
func (s *sendSession) endRound(ctx context.Context, n uint32, blocks int64) error {
	counts := make([]uint64, len(s.lanes))
	for i, l := range s.lanes {
		counts[i] = l.roundBlocks()
		if i > 0 {
			s.sendSealed(l, frameLaneEnd, n, appendLaneEnd(nil, n, counts[i]))
		}
	}
	s.sendSealed(s.lanes[0], frameRoundEnd, n, marshal(endMsg{Round: n, Blocks: counts}))
	for _, l := range s.lanes {
		if err := l.drain(ctx); err != nil {
			return err
		}
	}
	body, err := s.waitReply(ctx, replyAck, 0)
	if err != nil {
		return err
	}
	var ack ackMsg
	if err := unmarshal(body, &ack); err != nil {
		return err
	}
	if ack.Round != n || ack.Blocks != uint64(blocks) {
		return errFrame("receiver acknowledged round %d with %d blocks, want round %d with %d", ack.Round, ack.Blocks, n, blocks)
	}
	return nil
}

// manifest describes the files as the final round found them.
func (s *sendSession) manifest(created time.Time, compression string, rounds uint32) *archive.LiveManifest {
	m := &archive.LiveManifest{
		Format: Protocol, ID: s.id, Created: created, Label: s.opts.Label, BlockSize: s.opts.BlockSize,
		Compression: compression, Rounds: int(rounds),
	}
	for _, f := range s.files {
		fi := f.src.Info
		uid, gid := f.src.UID, f.src.GID
		af := archive.File{Path: f.src.Name, Mode: fi.Mode().Perm(), MTime: fi.ModTime().UTC(), UID: &uid, GID: &gid}
		if f.f == nil {
			af.Type = archive.TypeDir
			m.Files = append(m.Files, af)
			continue
		}
		af.Type, af.Size = archive.TypeFile, f.size
		af.MTime = time.Unix(f.stamp.MTime.Unix()).UTC()
		af.BLAKE3 = f.digest.Sum()
		af.Extents = f.extents
		af.Device, af.Backing = f.src.Device, f.src.ManifestBacking()
		af.DataFiles = f.src.ManifestDataFiles()
		m.Files = append(m.Files, af)
	}
	return m
}
