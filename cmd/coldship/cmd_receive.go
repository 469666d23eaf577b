package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"

	"filippo.io/age"
	"github.com/spf13/cobra"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/hooks"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/restore"
)

type receiveOptions struct {
	dest           string
	shipment       string
	out            string
	into           string
	identities     []string
	passphraseFile string
	jobs           int
	force          bool
	readBack       bool
	noSameOwner    bool
	include        []string
	outDevices     []string
	retries        int
	libvirtDefine  bool
	libvirtStart   bool
	libvirtURI     string
	null           bool
	allowRollback  bool
	trust          trustOptions
	hooks          hookOptions
	live           liveOptions
	transport      transportOptions
	run            runOptions
	output         outputOptions
}

// receiveLong is receive's help.
const receiveLong = `Fetch, authenticate and decrypt a shipment (default, or SHIPMENT "latest": the
latest complete one) and restore its files under DIR by their relative names.
Files are written to temporary names, checked against their whole-file digests
and renamed into place only when every file of the shipment checks out. Only
the non-zero 4 KiB pages of each block are written: holes stay holes. Existing
files are never overwritten without --force. Every block is checked against its
digest before it is written; files are synced; --read-back also reads every
written block again after the sync (page cache dropped) and checks it.

An interrupted receive (killed, a lost connection) resumes: run the same
command again and the blocks already written are checked on disk and reused.
A lost connection is retried --retries times, each retry resuming.

--into DIR updates an earlier restore in DIR (by --out or --into, of any
shipment of the same chain) in place: only blocks that differ are written,
every rewritten file is checked against its whole-file digest, and files stay
aside under hidden names until all check out. An interrupted update is
completed by running the same command again. A DIR that is missing or empty
gets a full restore, as with --out (the first night of a DR copy).

--trusted-senders FILE (an OpenSSH allowed_signers file) accepts only
shipments signed (send --sign-key) by a key of FILE and unchanged since:
any other exits 4 before anything is written or any hook runs, and the
default is the newest shipment that verifies (newer ones are named on
stderr). Without it, receive says that the sender is not authenticated.
The default is never a shipment dated more than 24 hours ahead. --into
refuses a shipment older than the one the restore holds, of another label
(send --name), or (both signatures checked) of another chain: exit 5,
unless --allow-rollback.
The pre-receive hooks run once the shipment opened (its signature checked),
before anything is written; post-receive and --libvirt-define once every
block and file checked out.

--include PATTERN restores only the files the shell pattern matches (or that
lie in a folder it matches). --out-device NAME=/dev/X writes file NAME of the
shipment onto an existing block device instead, in place: a receive that
fails leaves that device unusable.

qcow2 backing chains land side by side, each overlay's header rewritten to
name its restored layer by a relative name (a device's path for a layer on
--out-device); --include of an overlay brings its layers, and of a vmdk
descriptor its extent files.

As root, files get the numeric owner and group they had at the source
(--no-same-owner: not); otherwise they belong to the user running receive.

Identities: -i FILE (age identity file or SSH private key), or a passphrase
from --passphrase-file, $COLDSHIP_PASSPHRASE or a prompt on a terminal.

stdout: the restored paths, one per line (-z: each ended by a NUL byte
instead, for names that hold newlines); with --json, JSON objects only
(the paths are the summary's "paths").`

func newReceiveCmd(s *streams) *cobra.Command {
	opts := &receiveOptions{}
	c := &cobra.Command{
		Use:   "receive DEST [SHIPMENT] --out DIR|--into DIR [-i IDENTITY]... [--passphrase-file FILE]",
		Short: "Verify, decrypt and restore a shipment into DIR",
		Long:  receiveLong,
		Example: `  coldship receive s3://dr-bucket/web01 -i ~/.config/coldship/site-b.key --out /var/lib/libvirt/images
  coldship receive sftp://backup@dr.example.com/srv/coldship/web01 --into /srv/dr/web01 -i /etc/coldship/site-b.key
  coldship receive /mnt/backup/web01 20261121T233000Z-3f9a1c2e -i site-b.key --out /tmp/web01 -z | xargs -0 ls -ls`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(c *cobra.Command, args []string) error {
			opts.dest = args[0]
			var err error
			if opts.shipment, err = shipmentArg(args); err != nil {
				return err
			}
			return runReceive(c.Context(), s, opts)
		},
	}
	f := c.Flags()
	f.StringVarP(&opts.out, "out", "o", "", "restore into `DIR`")
	f.StringVar(&opts.into, "into", "", "update the earlier restore in `DIR` in place, writing only the blocks that differ")
	f.StringArrayVarP(&opts.identities, "identity", "i", nil, "decrypt with the identity in `FILE` (repeatable)")
	f.StringVar(&opts.passphraseFile, "passphrase-file", "", "read the passphrase from the first line of `FILE`")
	f.IntVarP(&opts.jobs, "jobs", "j", 0, "parallel decrypters, each also writing (default: one more than the CPUs)")
	f.BoolVarP(&opts.force, "force", "f", false, "overwrite existing files")
	f.BoolVarP(&opts.null, "null", "z", false, "end each path printed on stdout with a NUL byte instead of a newline")
	f.BoolVar(&opts.readBack, "read-back", false, "read every written block back after the sync, page cache dropped, and check it")
	f.BoolVar(&opts.noSameOwner, "no-same-owner", false, "as root, do not give files the owner and group they had at the source")
	f.StringArrayVar(&opts.include, "include", nil, "restore only the files matching the shell `PATTERN` (repeatable)")
	f.StringArrayVar(&opts.outDevices, "out-device", nil, "write file `NAME=/dev/X` of the shipment onto that block device, in place (repeatable)")
	f.IntVar(&opts.retries, "retries", 5, "resume this many times after a lost connection, with backoff")
	f.BoolVar(&opts.libvirtDefine, "libvirt-define", false, "define the shipped libvirt domain, its disks pointed at where they landed")
	f.BoolVar(&opts.libvirtStart, "libvirt-start", false, "with --libvirt-define: start the domain")
	f.StringVar(&opts.libvirtURI, "libvirt-uri", "", "libvirt connection `URI` (virsh -c)")
	addTrustFlags(f, &opts.trust)
	addLabelFlag(f, &opts.trust)
	f.BoolVar(&opts.allowRollback, "allow-rollback", false, "--into: update to a shipment older than the one the restore holds, of another label, or of another chain")
	addHookFlags(f, &opts.hooks)
	addLiveReceiveFlags(f, &opts.live)
	addTransportFlags(f, &opts.transport)
	addRunFlags(f, &opts.run)
	addOutputFlags(f, &opts.output)
	commaList(f, "identity")
	exclusive(f, "out", "into")
	return c
}

func runReceive(ctx context.Context, s *streams, opts *receiveOptions) error {
	if opts.live.enabled {
		if opts.trust.file != "" {
			return usagef("receive --live: --trusted-senders does not apply: a live session is neither stored nor signed; " +
				"its sender is the SSH login that started it (unset COLDSHIP_TRUSTED_SENDERS for it)")
		}
		return runLiveReceive(ctx, s, opts)
	}
	if err := checkReceiveFlags(opts); err != nil {
		return err
	}
	if err := opts.trust.load(); err != nil {
		return err
	}
	runner, err := opts.hooks.runner(s)
	if err != nil {
		return err
	}
	ids, err := s.identities(opts.identities, opts.passphraseFile, true)
	if err != nil {
		return err
	}
	env := hooks.Env{Dest: opts.dest, Out: opts.out, Shipment: opts.shipment}
	files, err := receiveShipment(ctx, s, opts, runner, &env, ids)
	if err != nil {
		return onFailure(ctx, s, runner, env, err)
	}
	printPaths(s, files, opts.null, opts.output.json)
	env.Files = files
	if opts.libvirtDefine {
		lv := &hooks.Libvirt{URI: opts.libvirtURI, Stderr: s.err}
		root := opts.out
		if root == "" {
			root = opts.into
		}
		devices, _ := parseDevices(opts.outDevices)
		name, err := libvirtDefine(ctx, lv, restoredNames(root, files, devices), opts.libvirtStart)
		if err != nil {
			if len(opts.include) > 0 && errors.Is(err, errNotRestored) {
				err = fmt.Errorf("%w: --include left it out (include the domain's files, or define the domain by hand)", err)
			}
			err = fmt.Errorf("shipment %s is restored in %s, but defining the libvirt domain failed: %w", env.Shipment, root, err)
			return onFailure(ctx, s, runner, env, err)
		}
		what := "defined"
		if opts.libvirtStart {
			what = "defined and started"
		}
		if !opts.output.quiet {
			fmt.Fprintf(s.err, "coldship: libvirt domain %s %s\n", name, what)
		}
	}
	if err := runner.Run(ctx, hooks.PostReceive, env); err != nil {
		err = fmt.Errorf("shipment %s is restored in %s and kept, but %w", env.Shipment, opts.out, err)
		return onFailure(ctx, s, runner, env, hookErr(err))
	}
	return nil
}

// checkReceiveFlags checks what a stored receive was given, before
// anything is read: the destination's form, one of --out and --into, and
// the flags that only go with others.
func checkReceiveFlags(opts *receiveOptions) error {
	if err := checkDest(opts.dest); err != nil {
		return err
	}
	switch {
	case opts.out == "" && opts.into == "":
		return usagef("receive: give --out DIR (a new restore) or --into DIR (update an earlier restore in place)")
	case opts.out != "" && opts.into != "":
		return usagef("receive: give --out DIR or --into DIR, not both")
	case opts.into != "":
		opts.out = opts.into
	}
	if err := checkRestoreDir(opts); err != nil {
		return err
	}
	if err := opts.run.check(); err != nil {
		return err
	}
	if opts.jobs < 0 {
		return usagef("--jobs %d: give 0 (one more than the CPUs, the default) or a positive number", opts.jobs)
	}
	if opts.retries < 0 {
		return usagef("--retries must not be negative")
	}
	if err := opts.checkPartial(); err != nil {
		return err
	}
	if opts.libvirtStart && !opts.libvirtDefine {
		return usagef("--libvirt-start needs --libvirt-define")
	}
	if opts.allowRollback && opts.into == "" {
		return usagef("--allow-rollback goes with --into")
	}
	return nil
}

// receiveShipment picks, opens (with trusted senders: only once its
// signature checked out) and restores the shipment, running the
// pre-receive hooks after the shipment opened and before anything is
// written.
func receiveShipment(ctx context.Context, s *streams, opts *receiveOptions, runner *hooks.Runner, env *hooks.Env, ids []age.Identity) ([]string, error) {
	opts.transport.log = s.logf(opts.output)
	tr, err := openExistingDest(ctx, s, opts.dest, &opts.transport)
	if err != nil {
		return nil, err
	}
	defer tr.Close()
	tr = opts.run.limit(tr)
	id, sh, err := opts.trust.open(ctx, tr, opts.shipment, ids, s.warnf(opts.output.json))
	env.Shipment = id
	if err != nil {
		return nil, err
	}
	if opts.trust.senders == nil {
		s.logf(opts.output)("the sender of %s is not authenticated: give --trusted-senders to accept only shipments signed by a trusted key", id)
	}
	var checkHeld func(restore.Holding) error
	if opts.into != "" {
		if checkHeld, err = checkRollback(opts.into, sh, opts.allowRollback, s.logf(opts.output)); err != nil {
			return nil, err
		}
	}
	if err := runner.Run(ctx, hooks.PreReceive, *env); err != nil {
		return nil, hookErr(fmt.Errorf("nothing was written: %w", err))
	}
	devices, _ := parseDevices(opts.outDevices)
	ropts := shipper.ReceiveOptions{
		Jobs: opts.jobs, Streams: opts.transport.streams, Force: opts.force,
		Dest: destKey(opts.dest), Log: s.logf(opts.output),
		ReadBack: opts.readBack, NoSameOwner: opts.noSameOwner, Include: opts.include, Devices: devices,
		LockWait: opts.run.lockWait, Retries: opts.retries, CheckHeld: checkHeld,
	}
	if opts.into != "" {
		fresh, err := emptyOrMissing(opts.into)
		if err != nil {
			return nil, err
		}
		if !fresh {
			return receiveInto(ctx, s, opts, sh, ropts)
		}
		s.logf(opts.output)("%s is empty or missing: restoring %s into it in full (as --out); later runs update it in place", opts.into, id)
	}
	cnt := new(shipper.Counters)
	ropts.Counters = cnt
	rep := startProgress(s, "receive", opts.output, cnt, movedShipped)
	res, err := sh.Receive(ctx, opts.out, ropts)
	if err != nil {
		rep.finish(false, nil, "")
		return nil, fmt.Errorf("receive %s from %s: %w", id, tr, err)
	}
	rep.finish(true, addLinkStats(map[string]any{
		"mode": "out", "shipment": id, "label": sh.Header.Label, "files": len(res.Files), "bytes_total": cnt.Total.Load(),
		"bytes_data": cnt.Data.Load(), "bytes_fetched": cnt.Shipped.Load(), "bytes_reused": res.Reused, "paths": nonNil(res.Files),
	}, tr, cnt.Shipped.Load(), rep.start), fmt.Sprintf("restored %s (%s, %s) into %s", id, describeFiles(res.Entries), humanBytes(cnt.Total.Load()), opts.out))
	return res.Files, nil
}

// receiveInto updates the restore in opts.into to shipment sh, holding the
// directory's lock so that two updates never meet.
func receiveInto(ctx context.Context, s *streams, opts *receiveOptions, sh *shipper.Shipment, ropts shipper.ReceiveOptions) ([]string, error) {
	id := sh.Header.ID
	cnt := new(shipper.Counters)
	ropts.Counters = cnt
	rep := startProgress(s, "receive", opts.output, cnt, movedFetchedAndRead)
	res, err := sh.ReceiveInto(ctx, opts.into, ropts)
	if errors.Is(err, shipper.ErrNoRestore) {
		rep.finish(false, nil, "")
		return nil, noRestoreError{opts.into, err}
	}
	if err != nil {
		rep.finish(false, nil, "")
		return nil, fmt.Errorf("update %s to %s from %s: %w%s", opts.into, id, opts.dest, err, asideHint(opts.into, sh.Manifest.Files))
	}
	rep.finish(true, map[string]any{
		"mode": "into", "paths": nonNil(res.Files), "shipment": id, "label": sh.Header.Label, "files": len(res.Files), "bytes_total": cnt.Total.Load(), "bytes_read": cnt.Read.Load(),
		"bytes_written": res.Written, "bytes_data": cnt.Data.Load(), "bytes_fetched": cnt.Shipped.Load(),
		"bytes_reused": res.Reused,
	}, fmt.Sprintf("updated %s to %s (%s, %s): %s written", opts.into, id, describeFiles(res.Entries),
		humanBytes(cnt.Total.Load()), humanBytes(res.Written)))
	return res.Files, nil
}

// asideHint tells the operator of a failed update where the files it was
// rewriting are, when it left them aside (the final names are then
// missing), and how to get them back; "" when none is aside.
func asideHint(dir string, files []archive.File) string {
	h, ok, err := restore.Held(dir, files)
	if err != nil || !ok || len(h.Aside) == 0 {
		return ""
	}
	names := h.Aside
	more := ""
	if len(names) > 3 {
		names, more = names[:3], fmt.Sprintf(" and %d more", len(names)-3)
	}
	return fmt.Sprintf("; the files being updated stay aside until an update of %s completes (%s%s): run this command again once the cause is fixed, "+
		"update to another shipment, or restore afresh with --out --force", dir, strings.Join(names, ", "), more)
}

// checkRestoreDir refuses, before anything is fetched, a --out or --into
// that is not a directory (a missing one is created): else the first to
// trip on it would be a read of the restore's marker inside it, or the
// write of a file, far from the flag that is wrong.
func checkRestoreDir(opts *receiveOptions) error {
	flag, dir := "out", opts.out
	if opts.into != "" {
		flag = "into"
	}
	fi, err := os.Stat(dir)
	if (err == nil && !fi.IsDir()) || errors.Is(err, syscall.ENOTDIR) {
		return usagef("--%s %s: not a directory", flag, dir)
	}
	return nil
}

// noRestoreError is receive --into of a directory that holds files but
// no restore made by coldship: said plainly, with the fix.
type noRestoreError struct {
	dir string
	err error
}

func (e noRestoreError) Error() string {
	return fmt.Sprintf("--into %s: this directory holds files, but no restore of this shipment's files made by coldship receive; "+
		"give an empty or new directory (the first --into restores in full), or use --out", e.dir)
}

func (e noRestoreError) Unwrap() error { return e.err }

// emptyOrMissing reports whether dir does not exist or holds nothing but
// what an interrupted first receive left there (hidden temporary files
// and the record that lets it resume), so that the first --into of a new
// folder restores in full, and resumes as such when run again. A folder
// with a restore marker holds a restore (perhaps in the middle of an
// update), never "nothing".
func emptyOrMissing(dir string) (bool, error) {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("--into %s: %w", dir, err)
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, ".") || !strings.Contains(name, ".coldship") ||
			strings.HasPrefix(name, ".coldship-restore-") && strings.HasSuffix(name, ".json") {
			return false, nil
		}
	}
	return true, nil
}

// printPaths prints the restored paths on stdout: one per line, or each
// ended by a NUL with -z; nothing with --json (they are in the summary).
func printPaths(s *streams, paths []string, null, json bool) {
	if json {
		return
	}
	end := "\n"
	if null {
		end = "\x00"
	}
	for _, p := range paths {
		fmt.Fprint(s.out, p, end)
	}
}

// nonNil makes an empty list print as [] rather than null.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// checkPartial checks --include and --out-device.
func (opts *receiveOptions) checkPartial() error {
	for _, p := range opts.include {
		if _, err := path.Match(p, ""); err != nil || p == "" {
			return usagef("--include %q: not a shell pattern", p)
		}
	}
	if _, err := parseDevices(opts.outDevices); err != nil {
		return err
	}
	if opts.into != "" && (len(opts.include) > 0 || len(opts.outDevices) > 0) {
		return usagef("--include and --out-device restore part of a shipment: use them with --out, not --into")
	}
	return nil
}

// parseDevices parses the --out-device NAME=/dev/X flags.
func parseDevices(flags []string) (map[string]string, error) {
	if len(flags) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, fl := range flags {
		name, dev, ok := strings.Cut(fl, "=")
		if !ok || name == "" || !strings.HasPrefix(dev, "/dev/") {
			return nil, usagef("--out-device %q: want NAME=/dev/DEVICE, NAME a file of the shipment", fl)
		}
		if _, dup := out[name]; dup {
			return nil, usagef("--out-device: %s is given twice", name)
		}
		for other, d := range out {
			if d == dev {
				return nil, usagef("--out-device: %s and %s would both be written onto %s", other, name, dev)
			}
		}
		out[name] = dev
	}
	return out, nil
}
