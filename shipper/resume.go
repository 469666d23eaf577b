package shipper

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/coldship/coldship/archive"
)

// loadJournal adopts the journal of an interrupted send when it verifies,
// the sources are unchanged and the destination still holds its
// incomplete shipment. A journal that does not verify is moved aside and
// named in a warning: the send then starts a new shipment, and no
// unattended run ever needs a human to remove a file.
func (r *sendRun) loadJournal(ctx context.Context, path string) error {
	j, err := openJournal(path, r.keys.journalMAC)
	if errors.Is(err, errJournalDamaged) {
		bad := moveAside(path)
		r.opts.Log("warning: %v: moved aside to %s; starting a new shipment", err, bad)
		return nil
	}
	if err != nil || j == nil {
		return err
	}
	why, err := r.journalFits(ctx, j)
	if err != nil {
		j.close(false)
		return err
	}
	if why != "" {
		r.opts.Log("not resuming shipment %s (%s): starting a new shipment", j.hdr.ID, why)
		j.close(true)
		r.removeAbandoned(ctx, j.hdr.ID)
		return nil
	}
	for _, s := range j.segments {
		s.fromBefore = true
	}
	r.j, r.resumed = j, true
	r.opts.Log("resuming shipment %s: %d segments are at the destination", j.hdr.ID, len(j.segments))
	return nil
}

// removeAbandoned deletes what an interrupted send of shipment id left at
// the destination once its journal is given up: nothing can resume it any
// more. Only with the destination's lock held (no running send owns it),
// and only if it never completed; best effort (prune removes it too).
func (r *sendRun) removeAbandoned(ctx context.Context, id string) {
	if !r.opts.CleanLeftovers {
		return
	}
	if _, err := r.tr.Stat(ctx, id+"/"+archive.ManifestObject); !errors.Is(err, ErrNotFound) {
		return
	}
	if err := DeleteShipment(ctx, r.tr, id); err != nil {
		r.opts.Log("warning: removing the incomplete shipment %s: %v", id, err)
		return
	}
	r.opts.Log("removed the incomplete shipment %s that the interrupted send left", id)
}

// journalFits says why the journal's shipment cannot be resumed, or "".
func (r *sendRun) journalFits(ctx context.Context, j *journal) (string, error) {
	opts, h := r.opts, &j.hdr
	switch {
	case h.Dest != opts.Dest || len(h.Files) != len(r.files):
		return "the sources differ", nil
	case h.BlockSize != opts.BlockSize || h.Compression != r.compression() || h.Label != opts.Label:
		return "--block-size, --compress or --name differ", nil
	case h.Recipients != opts.RecipientsID:
		return "the recipients differ", nil
	case h.Base != r.base.id():
		return "its base differs", nil
	}
	for i, sf := range r.files {
		if sf.journalFile() != h.Files[i] {
			return fmt.Sprintf("%s changed since", sf.src.Path), nil
		}
	}
	if _, err := r.tr.Stat(ctx, h.ID+"/"+archive.ManifestObject); err == nil {
		return "it completed", nil
	} else if !errors.Is(err, ErrNotFound) {
		return "", err
	}
	hb, err := getObject(ctx, r.tr, h.ID+"/"+archive.HeaderObject, 64<<10)
	if errors.Is(err, ErrNotFound) || err == nil && archive.ObjectDigest(hb) != h.HeaderDigest {
		return "its header is gone from the destination", nil
	}
	return "", err
}

// reuse checks, at the start of an attempt, every segment the journal
// says is complete: present at the destination at its size, its key
// object there as it was written, its records tiling it in order; and,
// for a segment put by an earlier run, its content (read back, CRC32C).
// A segment that fails is dropped: its blocks are sealed again. It
// returns the records to reuse (nil if none) and the first key slot the
// attempt may take.
func (r *sendRun) reuse(ctx context.Context) (*ownRecords, int, error) {
	if !r.resumed {
		// The first attempt at a shipment this run named: its journal
		// holds nothing yet, and nothing of an earlier attempt can be at
		// the destination (a listing would cost round trips on a long
		// link for nothing; key slots are created exclusively anyway).
		return nil, r.j.slots, nil
	}
	id := r.j.hdr.ID
	objs := map[string]int64{}
	err := r.tr.List(ctx, id+"/", func(oi ObjectInfo) error {
		objs[strings.TrimPrefix(oi.Name, id+"/")] = oi.Size
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("list %s: %w", id, err)
	}
	slot := r.j.slots
	for name := range objs {
		if s, ok := archive.KeySlot(name); ok {
			slot = max(slot, s+1)
		}
	}
	keyOK, err := r.keyObjectsAsWritten(ctx, objs)
	if err != nil {
		return nil, 0, err
	}
	nblocks := make([]int64, len(r.files))
	for i, sf := range r.files {
		nblocks[i] = (sf.stamp.Size + r.opts.BlockSize - 1) / r.opts.BlockSize
	}
	maxRecord := (&archive.Manifest{Format: archive.FormatV3, BlockSize: r.opts.BlockSize}).MaxRecordLen()
	var toRead []*journalSegment
	for _, s := range r.j.complete() {
		why := ""
		switch size, ok := objs[s.Name]; {
		case !ok || size != s.Size:
			why = "missing or of another size at the destination"
		case !keyOK[s.Key]:
			why = fmt.Sprintf("its key object %s is not the one written", archive.KeyObject(s.Key))
		default:
			if err := checkSegmentRecords(r.j, s, nblocks, maxRecord); err != nil {
				why = "the journal's records do not fit it: " + err.Error()
			}
		}
		if why != "" {
			r.opts.Log("segment %s of shipment %s: %s; its blocks are sent again", s.Name, id, why)
			r.j.drop(s.n)
			continue
		}
		if !s.verified {
			toRead = append(toRead, s)
		}
	}
	if err := r.checkContent(ctx, toRead); err != nil {
		return nil, 0, err
	}
	kept := r.j.complete()
	if len(kept) == 0 {
		return nil, slot, nil
	}
	own, err := newOwnRecords(r.j, kept)
	return own, slot, err
}

// keyObjectsAsWritten reads back the key objects of the slots that
// complete segments name and reports which are as the journal recorded
// them when they were written.
func (r *sendRun) keyObjectsAsWritten(ctx context.Context, objs map[string]int64) (map[int]bool, error) {
	ok := map[int]bool{}
	for _, s := range r.j.complete() {
		if _, seen := ok[s.Key]; seen {
			continue
		}
		ok[s.Key] = false
		want, known := r.j.keyObjs[s.Key]
		if _, there := objs[archive.KeyObject(s.Key)]; !known || !there {
			continue
		}
		b, err := getObject(ctx, r.tr, r.j.hdr.ID+"/"+archive.KeyObject(s.Key), archive.MaxKeyObject)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		ok[s.Key] = archive.ObjectDigest(b) == want
	}
	return ok, nil
}

// checkContent reads back the segments an earlier run put and checks
// them (see readBack), a few at a time, counting the bytes as progress; a
// segment that fails is dropped.
func (r *sendRun) checkContent(ctx context.Context, segs []*journalSegment) error {
	if len(segs) == 0 {
		return nil
	}
	cnt := r.opts.Counters
	var total int64
	for _, s := range segs {
		total += s.Size
	}
	r.opts.Log("checking %d segments (%d bytes) that an earlier run put at the destination", len(segs), total)
	cnt.Total.Add(total)
	defer func() { cnt.Total.Add(-total); cnt.Done.Add(-total) }()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.opts.Streams)
	for _, s := range segs {
		g.Go(func() error {
			why, err := r.readBack(gctx, s, &cnt.Done)
			switch {
			case err != nil:
				return err
			case why != "":
				r.opts.Log("segment %s of shipment %s: %s; its blocks are sent again", s.Name, r.j.hdr.ID, why)
				r.j.drop(s.n)
			default:
				s.verified = true
			}
			return nil
		})
	}
	return g.Wait()
}

// adder is the part of an atomic counter readBack reports progress to.
type adder interface{ Add(int64) int64 }

// readBack reads a segment an earlier run put, whose journal records tile
// it (checkSegmentRecords), and says why it cannot be reused, or "": its
// CRC32C must be the journal's, and each record, at the place the
// journal's lengths give it, must begin with the salt and commitment its
// tag was made over. The tags catch a journal whose entries are whole but
// misplaced (records of equal length swapped between segments, say),
// which every other check would let through to a shipment that fails to
// open. Errors reading it are returned.
func (r *sendRun) readBack(ctx context.Context, s *journalSegment, done adder) (string, error) {
	name := r.j.hdr.ID + "/" + s.Name
	const differs = "its content differs from what was put"
	rc, err := r.tr.Open(ctx, name, 0, -1)
	if errors.Is(err, ErrNotFound) {
		return differs, nil
	}
	if err != nil {
		return "", fmt.Errorf("read back %s: %w", name, err)
	}
	defer rc.Close()
	h := archive.NewCRC32C()
	br := bufio.NewReaderSize(rc, 256<<10)
	jr := newJournalReader(r.j, s)
	head := make([]byte, sealedHead)
	for {
		e, err := jr.read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", err
		}
		if e.Length < sealedHead {
			return "a record is too short to be one", nil
		}
		if _, err := io.ReadFull(br, head); err != nil {
			return readBackErr(name, err, differs)
		}
		rec := jr.tagged()
		if tag := r.keys.recordTag(rec, head); !bytes.Equal(tag[:], rec[journalRecordHead:]) {
			return fmt.Sprintf("the record of block %d of file %d is not where the journal says", e.Block, e.File), nil
		}
		h.Write(head)
		if _, err := io.CopyN(h, br, int64(e.Length)-sealedHead); err != nil {
			return readBackErr(name, err, differs)
		}
		done.Add(int64(e.Length))
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return readBackErr(name, err, differs) // longer than the journal says
	}
	if archive.CRC32CString(h.Sum32()) != s.CRC32C {
		return differs, nil
	}
	return "", nil
}

// readBackErr sorts what reading a segment back met: the object ending
// early or going on (nil) means it is not what was put; anything else is
// an error of the read.
func readBackErr(name string, err error, differs string) (string, error) {
	if err == nil || err == io.EOF || err == io.ErrUnexpectedEOF {
		return differs, nil
	}
	return "", fmt.Errorf("read back %s: %w", name, err)
}
