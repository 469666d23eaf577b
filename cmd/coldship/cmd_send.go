package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/coldship/coldship/archive"
	"github.com/coldship/coldship/hooks"
	"github.com/coldship/coldship/internal/home"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/sftp"
)

type sendOptions struct {
	sources        []string
	set            func(flag string) bool // whether the flag was given (command line or environment)
	to             string
	recipients     []string
	recipientFiles []string
	passphraseFile string
	jobs           int
	blockSize      string
	segmentSize    string
	compress       string
	name           string
	stateDir       string
	noResume       bool
	base           string
	baseCheck      string
	signKey        string
	signer         *sendSigner // loaded from signKey
	run            runOptions
	retries        int
	force          bool
	libvirtDomain  string
	libvirtURI     string
	shutdown       bool
	shutdownWait   time.Duration
	noBackingChain bool
	hooks          hookOptions
	live           liveOptions
	transport      transportOptions
	output         outputOptions
}

func newSendCmd(s *streams) *cobra.Command {
	opts := &sendOptions{}
	c := &cobra.Command{
		Use:   "send SOURCE... --to DEST [-r RECIPIENT]... [-R FILE]... [--passphrase-file FILE]",
		Short: "Seal and ship images and VM directories to DEST",
		Long: `Seal SOURCE files, block devices and directories (sent recursively under
their base names) under a fresh shipment key wrapped for the recipients, and
ship them to DEST. The backing files of qcow2 images are shipped with them,
each once (--no-backing-chain: the images alone), and a vmdk descriptor's
extent files always.

Recipients: -r age1... (age X25519), -r "ssh-ed25519 ..." or "ssh-rsa ..."
(SSH public keys), -R FILE (one recipient per line), or a passphrase from
--passphrase-file, $COLDSHIP_PASSPHRASE or a prompt when stdin is a terminal.

--sign-key FILE (or $COLDSHIP_SIGN_KEY) signs the shipment with an SSH key
(an OpenSSH private key, or a public key whose private key is in ssh-agent)
so that receivers with --trusted-senders can tell it is yours.

stdout: exactly one line, the shipment id; with --json, JSON objects only
(the id is the summary's "shipment").`,
		Example: `  coldship send /var/lib/libvirt/images/web01.qcow2 /etc/libvirt/qemu/web01.xml --to s3://dr-bucket/web01 -r age1...
  coldship send --libvirt-domain web01 --to sftp://backup@dr.example.com/srv/coldship/web01 -R /etc/coldship/recipients --base latest
  coldship send --live /var/lib/libvirt/images/web01.qcow2 --to ssh://root@target.example.com/var/lib/libvirt/images`,
		Args: cobra.ArbitraryArgs,
		RunE: func(c *cobra.Command, args []string) error {
			opts.sources, opts.set = args, c.Flags().Changed
			return runSend(c.Context(), s, opts)
		},
	}
	f := c.Flags()
	f.StringVar(&opts.to, "to", "", "destination `DEST` (required)")
	f.StringArrayVarP(&opts.recipients, "recipient", "r", nil, "encrypt to `RECIPIENT` (repeatable)")
	f.StringArrayVarP(&opts.recipientFiles, "recipients-file", "R", nil, "encrypt to the recipients listed in `FILE` (repeatable)")
	f.StringVar(&opts.passphraseFile, "passphrase-file", "", "read the passphrase from the first line of `FILE`")
	f.IntVarP(&opts.jobs, "jobs", "j", 0, "parallel readers and sealers (default: all CPUs)")
	f.StringVar(&opts.blockSize, "block-size", "1M", "block `SIZE` (64K to 64M)")
	f.StringVar(&opts.segmentSize, "segment-size", "64M", "close segment objects at about `SIZE`")
	f.StringVar(&opts.compress, "compress", "zstd", "per-block compression where it saves at least 1/16: zstd or none")
	f.StringVar(&opts.name, "name", "", "a `LABEL` shown by list (stored in plaintext)")
	f.StringVar(&opts.stateDir, "state-dir", defaultStateDir(), "where resume journals (and DR state) are kept")
	f.BoolVar(&opts.noResume, "no-resume", false, "start a new shipment even if an interrupted one could be resumed")
	f.StringVar(&opts.signKey, "sign-key", "", "sign the shipment with the SSH private key in `FILE`, or with ssh-agent's key for the public key in FILE")
	f.StringVar(&opts.base, "base", "", "incremental: ship only blocks changed since shipment `latest|ID` of these sources (kept in --state-dir); none: a full one that starts a new chain")
	f.StringVar(&opts.baseCheck, "base-check", "content", "incremental: `MODE` of checking the base segments the shipment may use at the destination: content (read back, CRC32C) or size (presence and size only, nothing read back)")
	f.BoolVarP(&opts.force, "force", "f", false, "ship images that another process has locked or open for writing (a running VM)")
	f.StringVar(&opts.libvirtDomain, "libvirt-domain", "", "ship the disks and definition of libvirt domain `NAME` (it must be shut off)")
	f.StringVar(&opts.libvirtURI, "libvirt-uri", "", "libvirt connection `URI` (virsh -c)")
	f.BoolVar(&opts.shutdown, "shutdown", false, "with --libvirt-domain: shut a running domain down (virsh shutdown) and wait")
	f.DurationVar(&opts.shutdownWait, "shutdown-timeout", 5*time.Minute, "how long --shutdown waits for the domain to be shut off")
	f.BoolVar(&opts.noBackingChain, "no-backing-chain", false, "ship qcow2 overlays without their backing files (the restored overlays will need them)")
	addHookFlags(f, &opts.hooks)
	addLiveSendFlags(f, &opts.live)
	f.IntVar(&opts.retries, "retries", 5, "resume this many times after a transient failure (dropped connection), with backoff")
	addTransportFlags(f, &opts.transport)
	addRunFlags(f, &opts.run)
	addOutputFlags(f, &opts.output)
	commaList(f, "recipients-file")
	commaWords(f, "recipient")
	// A passphrase is the only recipient: --passphrase-file on the command
	// line wins over a site's COLDSHIP_RECIPIENT(S_FILE), not the reverse.
	exclusive(f, "passphrase-file", "recipient")
	exclusive(f, "passphrase-file", "recipients-file")
	return c
}

func runSend(ctx context.Context, s *streams, opts *sendOptions) error {
	if opts.live.enabled && opts.signKey != "" {
		return usagef("send --live: --sign-key does not apply: a live send stores no shipment to sign")
	} else if opts.live.enabled {
		return runLiveSend(ctx, s, opts)
	}
	if opts.to == "" {
		return usagef("send: --to DEST is required")
	}
	if err := checkDest(opts.to); err != nil {
		return err
	}
	if len(opts.sources) == 0 && opts.libvirtDomain == "" {
		return usagef("send: give SOURCE files or directories, or --libvirt-domain NAME")
	}
	if err := checkOutsideSources(opts.to, opts.stateDir, opts.sources); err != nil {
		return err
	}
	bs, segSize, err := sendSizes(opts)
	if err != nil {
		return err
	}
	recipients, err := s.sendRecipients(opts.recipients, opts.recipientFiles, opts.passphraseFile)
	if err != nil {
		return err
	}
	if err := opts.run.check(); err != nil {
		return err
	}
	// The journal must tell whether a resumed send wraps for the same
	// recipients; a passphrase cannot be fingerprinted without storing a
	// guessable hash of it, so passphrase sends resume only within one run.
	stateDir, rid := opts.stateDir, ""
	if len(opts.recipients)+len(opts.recipientFiles) == 0 {
		stateDir = ""
	} else if rid, err = recipientsID(opts.recipients, opts.recipientFiles); err != nil {
		return err
	}
	if err := checkBase(opts, rid); err != nil {
		return err
	}
	if opts.signer, err = s.signingKey(ctx, opts.signKey); err != nil {
		return err
	}
	defer opts.signer.Close()
	if opts.signer != nil && opts.stateDir == "" {
		return usagef("--sign-key needs a --state-dir: the chain of signed shipments is kept there%s", noStateDirWhy())
	}
	// One run per destination at a time: a nightly send that runs long
	// must not meet the next one, nor a prune.
	lock, err := opts.run.lockDest(ctx, opts.stateDir, opts.to)
	if err != nil {
		return err
	}
	defer lock.Release()
	runner, err := opts.hooks.runner(s)
	if err != nil {
		return err
	}
	env, lv, err := sendEnv(ctx, s, opts)
	if err != nil {
		return onFailure(ctx, s, runner, env, err)
	}
	id, err := sendShipment(ctx, s, opts, runner, lv, &env, recipients, bs, segSize, stateDir, rid, lock != nil)
	if err != nil {
		env.Shipment = id
		return onFailure(ctx, s, runner, env, err)
	}
	if !opts.output.json {
		fmt.Fprintln(s.out, id)
	}
	env.Shipment = id
	if err := runner.Run(ctx, hooks.PostSend, env); err != nil {
		err = fmt.Errorf("shipment %s is complete at %s, but %w", id, opts.to, err)
		return onFailure(ctx, s, runner, env, hookErr(err))
	}
	return nil
}

// sendEnv returns the hooks' environment of a send, and the libvirt
// connection of --libvirt-domain: the hooks see the domain's files from
// pre-send on (its definition names them: no image is read for that).
func sendEnv(ctx context.Context, s *streams, opts *sendOptions) (hooks.Env, *hooks.Libvirt, error) {
	env := hooks.Env{Dest: opts.to, Files: opts.sources}
	if opts.libvirtDomain == "" {
		return env, nil, nil
	}
	lv := &hooks.Libvirt{URI: opts.libvirtURI, Stderr: s.err}
	dom, err := lv.Domain(ctx, opts.libvirtDomain)
	if err != nil {
		return env, nil, err
	}
	env.Files = append(dom.Files(), opts.sources...)
	return env, lv, nil
}

// sendShipment runs the pre-send hooks, gathers and checks the sources
// (adding the backing files it finds to env's files), and ships them; it
// returns the shipment id.
func sendShipment(ctx context.Context, s *streams, opts *sendOptions, runner *hooks.Runner, lv *hooks.Libvirt, env *hooks.Env,
	recipients []age.Recipient, bs, segSize int64, stateDir, rid string, locked bool) (string, error) {
	if err := runner.Run(ctx, hooks.PreSend, *env); err != nil {
		return "", hookErr(fmt.Errorf("nothing was read or shipped: %w", err))
	}
	set, err := sendSources(ctx, s, opts, lv)
	if err != nil {
		return "", err
	}
	defer set.cleanup()
	for _, p := range set.layers {
		if !slices.Contains(env.Files, p) {
			env.Files = append(env.Files, p)
		}
	}
	sources := set.sources
	opts.transport.log = s.logf(opts.output)
	tr, err := openDest(ctx, s, opts.to, &opts.transport)
	if err != nil {
		return "", err
	}
	defer tr.Close()
	tr = opts.run.limit(tr)

	cnt := new(shipper.Counters)
	rep := startProgress(s, "send", opts.output, cnt, movedShipped)
	res, err := shipper.Send(ctx, tr, sources, shipper.SendOptions{
		Recipients: recipients, Jobs: opts.jobs, Streams: opts.transport.streams, BlockSize: bs, SegmentSize: segSize,
		Compress: opts.compress == "zstd", Label: opts.name, Counters: cnt,
		StateDir: stateDir, Dest: destKey(opts.to), RecipientsID: rid, NoResume: opts.noResume, Base: opts.base, BaseSizeOnly: opts.baseCheck == "size",
		Retries: opts.retries, CleanLeftovers: locked, Log: s.logf(opts.output),
	})
	if err != nil {
		rep.finish(false, nil, "")
		return "", fmt.Errorf("send to %s: %w", tr, err)
	}
	if opts.signer != nil {
		if err := opts.signer.sign(ctx, tr, res.ID, res.Inventory, opts.stateDir, destKey(opts.to), sources, opts.name, s.logf(opts.output)); err != nil {
			rep.finish(false, nil, "")
			return res.ID, fmt.Errorf("shipment %s is complete at %s but not signed: %w", res.ID, tr, err)
		}
	}
	summary := map[string]any{
		"mode": "stored", "shipment": res.ID, "files": res.Files, "bytes_total": cnt.Total.Load(), "bytes_read": cnt.Read.Load(),
		"bytes_hole": cnt.Hole.Load(), "bytes_zero": cnt.Zero.Load(), "bytes_data": cnt.Data.Load(),
		"bytes_unchanged": cnt.Unchanged.Load(), "bytes_skipped": cnt.Hole.Load() + cnt.Zero.Load() + cnt.Unchanged.Load(),
		"bytes_shipped": cnt.Shipped.Load(), "segments": cnt.Segments.Load(),
		"bytes_reused": cnt.Reused.Load(), "segments_reused": cnt.SegmentsReused.Load(),
		"incremental": res.Base != "",
	}
	line := fmt.Sprintf("shipped %s as %s: %s of data, %s holes and zeros skipped, %s sealed",
		humanBytes(cnt.Total.Load()), res.ID, humanBytes(cnt.Data.Load()),
		humanBytes(cnt.Hole.Load()+cnt.Zero.Load()), humanBytes(cnt.Shipped.Load()))
	if res.Base != "" {
		summary["base"] = res.Base
		line = fmt.Sprintf("shipped %s as %s, incremental on %s: %s changed, %s unchanged, %s holes and zeros skipped, %s sealed",
			humanBytes(cnt.Total.Load()), res.ID, res.Base, humanBytes(cnt.Data.Load()), humanBytes(cnt.Unchanged.Load()),
			humanBytes(cnt.Hole.Load()+cnt.Zero.Load()), humanBytes(cnt.Shipped.Load()))
	} else if res.FullReason != "" {
		summary["full_reason"] = res.FullReason
	}
	rep.finish(true, addLinkStats(summary, tr, cnt.Shipped.Load(), rep.start), line)
	return res.ID, nil
}

// recipientsID fingerprints the recipients given on the command line.
func recipientsID(rs, files []string) (string, error) {
	all := append([]string(nil), rs...)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("read recipients file: %w", err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				all = append(all, l)
			}
		}
	}
	return shipper.RecipientsFingerprint(all), nil
}

// defaultStateDir is $XDG_STATE_HOME/coldship, or ~/.local/state/coldship,
// the home directory taken from the password database when HOME is unset:
// without one, a run under cron or systemd would take no lock and keep no
// journal.
func defaultStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "coldship")
	}
	if h := home.Dir(); h != "" {
		return filepath.Join(h, ".local", "state", "coldship")
	}
	return ""
}

// noStateDirWhy says why there is no default state directory, when there
// is none.
func noStateDirWhy() string {
	if defaultStateDir() != "" {
		return ""
	}
	return " (there is no default: XDG_STATE_HOME and HOME are unset and the password database names no home)"
}

// runOptions are the flags of unattended runs shared by send, receive and
// prune: a bandwidth limit and how long to wait for another run's lock.
type runOptions struct {
	bwlimit  string
	rate     int64 // bytes per second; 0: no limit
	lockWait time.Duration
}

func addRunFlags(f *pflag.FlagSet, o *runOptions) {
	f.StringVar(&o.bwlimit, "bwlimit", "", "move at most `RATE` bytes per second over all streams (e.g. 50M)")
	f.DurationVar(&o.lockWait, "lock-wait", 0, "wait up to `DURATION` for another run on the same destination (receive --into: the same directory; send --live: the receiver waits for another receive into its folder) to finish (default: exit at once)")
}

func (o *runOptions) check() error {
	if o.bwlimit != "" {
		r, err := parseSize(o.bwlimit)
		if err != nil {
			return usagef("--bwlimit %s: want bytes per second such as 50M", o.bwlimit)
		}
		o.rate = r
	}
	if o.lockWait < 0 {
		return usagef("--lock-wait %s: give 0 (exit at once, the default) or a positive duration such as 10m", o.lockWait)
	}
	return nil
}

// limit wraps tr in the bandwidth limit, if any.
func (o *runOptions) limit(tr shipper.Transport) shipper.Transport {
	if o.rate <= 0 {
		return tr
	}
	return shipper.LimitBandwidth(tr, o.rate)
}

// lockDest takes the lock of destination dest in the state directory.
// Without a state directory there is nothing to lock with. A local
// folder is locked by its real path: the same folder through a symlink
// takes the same lock; an SFTP one by the account and host it reaches
// (sftp.Identity): with or without the user, by an alias.
func (o *runOptions) lockDest(ctx context.Context, stateDir, dest string) (*shipper.RunLock, error) {
	if stateDir == "" {
		return nil, nil
	}
	key := destKey(dest)
	lockKey := key
	if filepath.IsAbs(key) {
		if real, err := realPath(key); err == nil {
			lockKey = real
		}
	} else if strings.HasPrefix(key, "sftp://") {
		if cfg, err := sftp.ParseURL(key); err == nil {
			if id, err := sftp.Identity(cfg); err == nil {
				lockKey = id
			}
		}
	}
	return shipper.AcquireLock(ctx, shipper.DestLockPath(stateDir, lockKey), "destination "+key, o.lockWait)
}

// sendSizes checks send's numeric flags and returns the block and segment
// sizes.
func sendSizes(opts *sendOptions) (bs, segSize int64, err error) {
	bs, err = parseSize(opts.blockSize)
	if err != nil {
		return 0, 0, usagef("--block-size: %v", err)
	}
	if bs < archive.MinBlockSize || bs > archive.MaxBlockSize || bs%4096 != 0 {
		return 0, 0, usagef("--block-size %s: must be a multiple of 4 KiB between 64 KiB and 64 MiB", opts.blockSize)
	}
	segSize, err = parseSize(opts.segmentSize)
	if err != nil || segSize < 1<<20 {
		return 0, 0, usagef("--segment-size %s: want a size of at least 1M", opts.segmentSize)
	}
	if opts.compress != "zstd" && opts.compress != "none" {
		return 0, 0, usagef("--compress %q: want zstd or none", opts.compress)
	}
	if opts.jobs < 0 {
		return 0, 0, usagef("--jobs %d: give 0 (one per CPU, the default) or a positive number", opts.jobs)
	}
	if opts.retries < 0 {
		return 0, 0, usagef("--retries %d: give 0 (never retry) or a positive number", opts.retries)
	}
	return bs, segSize, nil
}

// checkBase checks --base: an incremental send needs recipients (rid is
// their fingerprint) and a state folder.
func checkBase(opts *sendOptions, rid string) error {
	if opts.baseCheck != "content" && opts.baseCheck != "size" {
		return usagef("--base-check %q: want content or size", opts.baseCheck)
	}
	if opts.base == "" {
		return nil
	}
	if opts.base != "latest" && opts.base != "none" && !archive.ValidID(opts.base) {
		return usagef("--base %q: want latest, none or a shipment id", opts.base)
	}
	if rid == "" {
		return usagef("--base needs recipients (-r or -R): incremental shipments copy the wrapped keys of their base, which a passphrase send cannot check")
	}
	if opts.stateDir == "" {
		return usagef("--base needs a --state-dir%s", noStateDirWhy())
	}
	return nil
}
