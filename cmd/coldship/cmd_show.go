package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/shipper"
)

type showOptions struct {
	dest           string
	shipment       string
	identities     []string
	passphraseFile string
	transport      transportOptions
	trust          trustOptions
	json           bool
}

func newShowCmd(s *streams) *cobra.Command {
	opts := &showOptions{}
	c := &cobra.Command{
		Use:   "show DEST [SHIPMENT] -i IDENTITY [--trusted-senders FILE]",
		Short: "Show what a shipment holds: its files and its chain of bases",
		Long: `Open a shipment (default, or SHIPMENT "latest": the latest complete one) with
its key and print its files (type, mode, owner, size, data, modification time,
BLAKE3 digest, path) and the chain of earlier shipments whose blocks it uses.
An "overlay" line names an overlay image's backing file, an "extents" line a
vmdk descriptor's extent files: what a restore writes beside it (--include
of it brings them along).
Nothing is fetched but the shipment's small objects; nothing is written.

With --trusted-senders FILE the shipment (default: the newest that
verifies) must be signed by a key of that OpenSSH allowed_signers file
(exit 4 otherwise) and the head names the signer.

The DATA column is the file's data: its size less holes and zero blocks,
as shipped. Owners are numeric uid:gid, "-" for shipments of formats 1
and 2, which do not record them.`,
		Example: `  coldship show s3://dr-bucket/web01 -i ~/.config/coldship/site-b.key
  coldship show /mnt/backup/web01 20261121T233000Z-3f9a1c2e -i site-b.key --json | jq -r 'select(.type=="file") | .path'`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(c *cobra.Command, args []string) error {
			opts.dest = args[0]
			var err error
			if opts.shipment, err = shipmentArg(args); err != nil {
				return err
			}
			return runShow(c.Context(), s, opts)
		},
	}
	f := c.Flags()
	f.StringArrayVarP(&opts.identities, "identity", "i", nil, "open the shipment with the identity in `FILE` (repeatable)")
	f.StringVar(&opts.passphraseFile, "passphrase-file", "", "read the passphrase from the first line of `FILE`")
	addTrustFlags(f, &opts.trust)
	addLabelFlag(f, &opts.trust)
	addTransportFlags(f, &opts.transport)
	f.BoolVar(&opts.json, "json", false, "a shipment object, then one object per file, on stdout")
	commaList(f, "identity")
	return c
}

// fileDataBytes is a file's data as shipped: the lengths of its data
// extents (holes and zero blocks excluded).
func fileDataBytes(f *archive.File) int64 {
	if f.UID != nil { // format 3 records it exactly, to the page
		return f.DataBytes
	}
	var n int64
	for _, e := range f.Extents {
		if e.Kind == archive.KindData {
			n += e.Length
		}
	}
	return n
}

// fileOwner is a file's numeric owner as uid:gid, or "-" where the
// shipment does not record it (formats 1 and 2).
func fileOwner(f *archive.File) string {
	if f.UID == nil || f.GID == nil {
		return "-"
	}
	return fmt.Sprintf("%d:%d", *f.UID, *f.GID)
}

// shipmentChain is the chain of bases: the shipment the header names as
// compared with, then every shipment whose blocks the manifest uses.
func shipmentChain(sh *shipper.Shipment) (string, []string) {
	return sh.Header.Base, append([]string{}, sh.Manifest.BaseIDs()...)
}

func runShow(ctx context.Context, s *streams, opts *showOptions) error {
	if err := opts.trust.load(); err != nil {
		return err
	}
	ids, err := s.identities(opts.identities, opts.passphraseFile, true)
	if err != nil {
		return err
	}
	opts.transport.log = s.logf(outputOptions{json: opts.json})
	tr, err := openExistingDest(ctx, s, opts.dest, &opts.transport)
	if err != nil {
		return err
	}
	defer tr.Close()
	id, sh, err := opts.trust.open(ctx, tr, opts.shipment, ids, s.warnf(opts.json))
	if err != nil {
		if id == "" {
			return err
		}
		return fmt.Errorf("show %s at %s: %w", id, tr, err)
	}
	if opts.json {
		return showJSON(s, id, sh)
	}
	return showText(s, id, sh)
}

// showJSON writes what show prints as JSON objects: the shipment, then
// one object per file.
func showJSON(s *streams, id string, sh *shipper.Shipment) error {
	m := sh.Manifest
	base, bases := shipmentChain(sh)
	total, data := manifestBytes(m)
	head := map[string]any{"type": "shipment", "id": id, "created": sh.Header.Created, "label": sh.Header.Label,
		"block_size": m.BlockSize, "bases": bases, "files": len(m.Files), "bytes_total": total, "bytes_data": data}
	if base != "" {
		head["base"] = base
	}
	if ti := sh.Trust(); ti != nil {
		head["signer"] = ti.Signer.Principal()
	}
	if err := s.emit(head); err != nil {
		return err
	}
	for i := range m.Files {
		f := &m.Files[i]
		digest := ""
		if f.Type == archive.TypeFile {
			digest = f.BLAKE3.String()
		}
		o := map[string]any{"type": "file", "path": f.Path, "file_type": f.Type, "size": f.Size,
			"bytes_data": fileDataBytes(f), "mode": fmt.Sprintf("%04o", f.Mode.Perm()), "mtime": f.MTime,
			"owner": fileOwner(f), "blake3": digest}
		if f.Backing != nil {
			o["backing"], o["backing_format"] = f.Backing.Path, f.Backing.Format
		}
		if len(f.DataFiles) > 0 {
			o["data_files"] = f.DataFiles
		}
		if err := s.emit(o); err != nil {
			return err
		}
	}
	return nil
}

// showText writes what show prints for a reader: the shipment, then a
// table of its files.
func showText(s *streams, id string, sh *shipper.Shipment) error {
	m := sh.Manifest
	base, bases := shipmentChain(sh)
	total, data := manifestBytes(m)
	w := s.out
	fmt.Fprintf(w, "shipment  %s\n", id)
	fmt.Fprintf(w, "created   %s\n", sh.Header.Created.Local().Format(time.RFC3339))
	fmt.Fprintf(w, "label     %s\n", cell(sh.Header.Label))
	if ti := sh.Trust(); ti != nil {
		fmt.Fprintf(w, "signer    %s\n", signedBy(ti))
	} else {
		fmt.Fprintf(w, "signer    - (not checked: give --trusted-senders)\n")
	}
	switch {
	case base != "":
		fmt.Fprintf(w, "base      %s (incremental; uses blocks of %s)\n", base, strings.Join(bases, ", "))
	case len(bases) > 0:
		fmt.Fprintf(w, "bases     %s\n", strings.Join(bases, ", "))
	default:
		fmt.Fprintf(w, "base      - (a full shipment)\n")
	}
	fmt.Fprintf(w, "files     %d, %s, %s of data\n", len(m.Files), humanBytes(total), humanBytes(data))
	showNeeds(s, m)
	fmt.Fprintln(w)
	t := newTable(s, "TYPE", "MODE", "OWNER", "SIZE", "DATA", "MTIME", "BLAKE3", "PATH")
	for i := range m.Files {
		f := &m.Files[i]
		digest := ""
		if f.Type == archive.TypeFile {
			digest = f.BLAKE3.String()
		}
		t.row(text(f.Type), own(fmt.Sprintf("%04o", f.Mode.Perm())), own(fileOwner(f)), t.size(f.Size), t.size(fileDataBytes(f)),
			own(f.MTime.Local().Format(time.RFC3339)), own(digest), text(f.Path))
	}
	return t.flush()
}

// showNeeds writes a head line for every image that needs other files of
// the shipment beside it once restored: an overlay's backing file, a vmdk
// descriptor's extent files: what a restore writes beside it (--include
// brings them along), which an operator sizes and checks before restoring.
func showNeeds(s *streams, m *archive.Manifest) {
	for i := range m.Files {
		f := &m.Files[i]
		if f.Backing != nil {
			fmt.Fprintf(s.out, "overlay   %s on %s (%s)\n", cell(f.Path), cell(f.Backing.Path), cell(f.Backing.Format))
		}
		if len(f.DataFiles) > 0 {
			names := make([]string, len(f.DataFiles))
			for j, p := range f.DataFiles {
				names[j] = cell(p)
			}
			fmt.Fprintf(s.out, "extents   %s in %s\n", cell(f.Path), strings.Join(names, ", "))
		}
	}
}

// manifestBytes returns the apparent size and the bytes of data of the
// files of m.
func manifestBytes(m *archive.Manifest) (total, data int64) {
	for i := range m.Files {
		total += m.Files[i].Size
		data += fileDataBytes(&m.Files[i])
	}
	return total, data
}
