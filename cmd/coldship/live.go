package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/coldship/coldship/hooks"
	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/live"
	"github.com/coldship/coldship/shipper/sftp"
)

// liveOptions are the flags of live mode (send --live, receive --live).
type liveOptions struct {
	enabled bool

	// send
	remoteColdship string
	data           string
	rounds         int
	untilDirty     string
	remoteHooks    []string
	remoteHooksDir string
	remoteForce    bool

	// receive
	listen string
}

// defaultLiveStreams is the number of TCP lanes of --data tcp.
const defaultLiveStreams = 4

// liveDial, when set, opens the TCP lanes of --data tcp: tests put a
// tampering proxy there.
var liveDial func(ctx context.Context, network, addr string) (net.Conn, error)

func addLiveSendFlags(f *pflag.FlagSet, o *liveOptions) {
	f.BoolVar(&o.enabled, "live", false, "stream straight into \"coldship receive --live\" started over SSH at --to ssh://[user@]host[:port]/dir (no ciphertext at rest)")
	f.StringVar(&o.remoteColdship, "remote-coldship", "coldship", "live: the coldship `PATH` on the destination")
	f.StringVar(&o.data, "data", "ssh", "live: carry the sealed blocks over --streams SSH channels (ssh, default: from the round trip) or direct TCP connections (tcp, default 4)")
	f.IntVar(&o.rounds, "rounds", 0, "live: pre-copy `N` rounds while the VM runs, then run the pre-switchover hook and a final round")
	f.StringVar(&o.untilDirty, "until-dirty", "", "live: pre-copy until a round sends at most `SIZE` (at most --rounds rounds, default 30)")
	f.StringArrayVar(&o.remoteHooks, "remote-hook", nil, "live: run `PHASE=COMMAND` on the destination: pre-receive, post-receive, on-failure (repeatable)")
	f.StringVar(&o.remoteHooksDir, "remote-hooks-dir", "", "live: the destination's hooks directory `DIR` (receive --hooks-dir)")
	f.BoolVar(&o.remoteForce, "remote-force", false, "live: overwrite existing files at the destination (receive --force)")
}

func addLiveReceiveFlags(f *pflag.FlagSet, o *liveOptions) {
	f.BoolVar(&o.enabled, "live", false, "receive a live session on stdin and stdout (DEST -), as \"coldship send --live\" starts it over SSH")
	f.StringVar(&o.listen, "listen", "", "live, --data tcp: accept the data connections on `ADDR` (default: the address the SSH connection reached, any port)")
}

func runLiveSend(ctx context.Context, s *streams, opts *sendOptions) error {
	lo := &opts.live
	if opts.to == "" {
		return usagef("send --live: --to ssh://[user@]host[:port]/dir is required")
	}
	if !strings.HasPrefix(strings.ToLower(opts.to), "ssh://") {
		return usagef("send --live: --to %q: want ssh://[user@]host[:port]/dir, the directory to restore into", opts.to)
	}
	cfg, err := sftp.ParseSSHURL(opts.to)
	if err != nil {
		return usageError{err}
	}
	if opts.libvirtDomain != "" {
		return usagef("send --live: --libvirt-domain is not supported; give the images and the definition as SOURCEs and stop the domain in a pre-switchover hook")
	}
	if len(opts.sources) == 0 {
		return usagef("send --live: give SOURCE files or directories")
	}
	if given := givenFlags(opts, "recipient", "recipients-file", "passphrase-file"); given != "" {
		return usagef("send --live: %s: -r, -R and --passphrase-file do not apply: a one-time key is handed to the receiver over SSH", given)
	}
	if err := notLive(opts); err != nil {
		return err
	}
	// --lock-wait is the receiver's: how long it waits for another
	// receive into the destination folder.
	if err := opts.run.check(); err != nil {
		return err
	}
	bs, _, err := sendSizes(opts)
	if err != nil {
		return err
	}
	lanes, untilDirty, err := liveFlags(lo, opts.transport.streams)
	if err != nil {
		return err
	}
	if err := checkSSHKeys(opts.transport.sshKeys); err != nil {
		return err
	}
	runner, err := opts.hooks.runner(s)
	if err != nil {
		return err
	}
	env := hooks.Env{Dest: opts.to, Files: opts.sources}
	res, err := liveSend(ctx, s, opts, cfg, runner, &env, bs, lanes, untilDirty)
	if err != nil {
		if res != nil {
			env.Shipment = res.ID
		}
		return onFailure(ctx, s, runner, env, liveError(err))
	}
	printPaths(s, res.Files, false, opts.output.json)
	env.Shipment = res.ID
	if err := runner.Run(ctx, hooks.PostSend, env); err != nil {
		err = fmt.Errorf("shipment %s is restored at %s, but %w", res.ID, opts.to, err)
		return onFailure(ctx, s, runner, env, hookErr(err))
	}
	return nil
}

// startReceiver starts `coldship receive --live` at the destination and
// returns it, the peer to send to and the lanes to open: those of --data
// tcp as given, those of --data ssh as sshLanes says. lockWait is the
// receiver's --lock-wait: how long it waits for another receive into dir.
func startReceiver(client *ssh.Client, cfg sftp.Config, lo *liveOptions, lockWait time.Duration, lanes int, stderr io.Writer,
	logf func(string, ...any)) (*live.Remote, live.Peer, int, error) {
	dir := cfg.Path
	if dir == "" {
		dir = "."
	}
	// --json=false: the remote's stdout is the session, whatever its
	// environment says.
	argv := []string{lo.remoteColdship, "receive", "--live", "-", "--out", dir, "--quiet", "--json=false"}
	if lo.remoteForce {
		argv = append(argv, "--force")
	}
	for _, h := range lo.remoteHooks {
		argv = append(argv, "--hook", h)
	}
	if lo.remoteHooksDir != "" {
		argv = append(argv, "--hooks-dir", lo.remoteHooksDir)
	}
	if lockWait > 0 {
		argv = append(argv, "--lock-wait", lockWait.String())
	}
	if lo.data == "ssh" {
		// The lanes reach the receiver through the SSH server, on its
		// loopback, where nothing else can connect.
		argv = append(argv, "--listen", "127.0.0.1:0")
	}
	remote, err := live.StartRemote(client, argv, stderr)
	if err != nil {
		return nil, live.Peer{}, 0, err
	}
	peer := remote.Peer()
	peer.Host = cfg.Host
	peer.Dial = liveDial
	if lo.data == "ssh" {
		var forwards bool
		if lanes, forwards = sshLanes(client, lanes); forwards {
			peer.Dial = client.DialContext
		} else {
			lanes = 0
			logf("notice: %s does not forward TCP connections (sshd's AllowTcpForwarding): the blocks travel in the one SSH channel, which a long link slows down", cfg.Host)
		}
	}
	return remote, peer, lanes, nil
}

// sshLanes says how many lanes --data ssh opens (want, or 0: as many as
// the round trip needs, as for SFTP streams) and whether the SSH server
// forwards TCP connections to carry them: each lane is a direct-tcpip
// channel, with a flow-control window of its own, to the receiver's
// listener on the server's loopback. A channel to port 0 there tells at
// once: refused as administratively prohibited when forwarding is off, a
// failed connection when it is on. Both requests go out together, once the
// receiver is started (the first request after authentication waits for
// the server's own setup, which the round trip must not count).
func sshLanes(client *ssh.Client, want int) (int, bool) {
	rtt := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		client.SendRequest("keepalive@openssh.com", true, nil)
		rtt <- time.Since(start)
	}()
	forwards := true
	c, err := client.Dial("tcp", "127.0.0.1:0")
	var refused *ssh.OpenChannelError
	switch {
	case err == nil:
		c.Close()
	case errors.As(err, &refused) && refused.Reason == ssh.Prohibited:
		forwards = false
	}
	if want == 0 {
		want = sftp.AutoStreams(<-rtt)
	}
	return want, forwards
}

// liveError gives a receiver's failure the exit status it had there.
func liveError(err error) error {
	var re *live.RemoteError
	if errors.As(err, &re) && re.Code == exitHook && !errors.Is(err, errHook) {
		return remoteHookError{err}
	}
	return err
}

// remoteHookError is a hook that failed at the destination: exit 3, and
// its message says so already.
type remoteHookError struct{ error }

func (e remoteHookError) Unwrap() error        { return e.error }
func (e remoteHookError) Is(target error) bool { return target == errHook }

// liveSend connects, starts the receiver and runs the session. The result
// carries the shipment id, once known, even on failure.
func liveSend(ctx context.Context, s *streams, opts *sendOptions, cfg sftp.Config, runner *hooks.Runner, env *hooks.Env,
	bs int64, lanes int, untilDirty int64) (*live.SendResult, error) {
	lo := &opts.live
	if err := runner.Run(ctx, hooks.PreSend, *env); err != nil {
		return nil, hookErr(fmt.Errorf("nothing was read or shipped: %w", err))
	}
	set, err := gatherSources(ctx, s, opts, nil)
	if err != nil {
		return nil, err
	}
	defer set.cleanup()
	sources := set.sources
	env.Files = append(env.Files, set.layers...)
	preCopy := lo.rounds > 0 || untilDirty > 0
	if preCopy && !runner.Has(hooks.PreSwitchover) {
		s.logf(opts.output)("warning: pre-copy without a pre-switchover hook: the final round runs while the VM may still write, and fails if it does")
	}

	cfg.KeyFiles, cfg.KnownHosts, cfg.AcceptNewHostKey = opts.transport.sshKeys, opts.transport.knownHosts, opts.transport.acceptNew
	logf := s.logf(opts.output)
	cfg.AskPass, cfg.Stderr, cfg.Log = s.askPass(), s.err, logf
	client, err := sftp.DialSSH(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer client.Close()
	// TCP lanes carry no keepalives: one that takes nothing for as long as
	// the SSH connection may go unanswered is given up by the same rule.
	stall, err := sftp.AliveTimeout(cfg)
	if err != nil {
		return nil, err
	}
	remoteLog := &lineWriter{emit: func(line string) { logf("remote: %s", line) }}
	defer remoteLog.flush()
	remote, peer, lanes, err := startReceiver(client, cfg, lo, opts.run.lockWait, lanes, remoteLog, logf)
	if err != nil {
		return nil, err
	}

	var id string
	cnt := new(shipper.Counters)
	rep := startProgress(s, "send", opts.output, cnt, movedShipped)
	res, err := live.Send(ctx, peer, sources, live.SendOptions{
		Version: version,
		Jobs:    opts.jobs, Lanes: lanes, StallTimeout: stall, BlockSize: bs, Compress: opts.compress == "zstd", Label: opts.name,
		Rounds: lo.rounds, UntilDirty: untilDirty, Counters: cnt, Log: logf,
		Switchover: func(ctx context.Context, shipment string) error {
			id = shipment
			env.Shipment = shipment
			if err := runner.Run(ctx, hooks.PreSwitchover, *env); err != nil {
				return hookErr(fmt.Errorf("the destination keeps nothing: %w", err))
			}
			// Without pre-copy this is an ordinary cold send: refuse an
			// image a running VM holds. With pre-copy, a paused VM still
			// holds its images: the final round's check that nothing
			// changed while it read them is what guards the copy.
			if !preCopy && !opts.force {
				if err := checkSourcesNotInUse(sources); err != nil {
					return err
				}
			}
			return nil
		},
		OnRound: func(st live.RoundStats) {
			what := "pre-copy"
			if st.Final {
				what = "final"
			}
			logf("round %d (%s): %s in %s sent (%s on the wire) in %s", st.Round, what,
				humanBytes(st.Data), plural(int(st.Blocks), "block", "blocks"), humanBytes(st.Wire), st.Duration.Round(time.Millisecond))
		},
	})
	err = remote.Finish(err)
	if err != nil {
		rep.finish(false, nil, "")
		return &live.SendResult{ID: id}, fmt.Errorf("send --live to %s: %w", opts.to, err)
	}
	reportLiveSend(rep, res, opts, lanes, runner.Has(hooks.PreSwitchover))
	return res, nil
}

func runLiveReceive(ctx context.Context, s *streams, opts *receiveOptions) error {
	if opts.dest != "-" {
		return usagef("receive --live: DEST must be - (the session arrives on stdin and answers on stdout)")
	}
	if opts.shipment != "" || opts.trust.label != "" {
		return usagef("receive --live: no SHIPMENT or --name: the sender names the shipment")
	}
	if opts.output.json || opts.null {
		return usagef("receive --live: --json and -z do not apply: stdout carries the live session")
	}
	if opts.out == "" {
		return usagef("receive: --out DIR is required")
	}
	if opts.jobs < 0 {
		return usagef("--jobs %d: give 0 (the default: one per CPU to send, one more to receive) or a positive number", opts.jobs)
	}
	if opts.libvirtDefine {
		return usagef("receive --live: --libvirt-define is not supported; define the domain in a post-receive hook")
	}
	if len(opts.include) > 0 || len(opts.outDevices) > 0 || opts.into != "" {
		return usagef("receive --live: --include, --out-device and --into do not apply (a live session restores everything into --out)")
	}
	listen, advertise, err := liveListener(opts.live.listen)
	if err != nil {
		return err
	}
	runner, err := opts.hooks.runner(s)
	if err != nil {
		return err
	}
	// stdout is the session: a sender that went away must be an error to
	// handle (and temporaries to remove), not a SIGPIPE that kills us.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	// A larger pipe from sshd lets it hand over the stream in bigger
	// pieces, rather than whenever we are scheduled (best effort).
	if f, ok := s.in.(*os.File); ok {
		unix.FcntlInt(f.Fd(), unix.F_SETPIPE_SZ, 1<<20)
	}

	env := hooks.Env{Dest: opts.dest, Out: opts.out}
	cnt := new(shipper.Counters)
	rep := startProgress(s, "receive", opts.output, cnt, movedShipped)
	// The receiver's heartbeats go on through its post-receive hooks, until
	// the sender is told the outcome.
	out := live.NewReplies(s.out)
	res, err := live.Receive(ctx, s.in, out, live.ReceiveOptions{
		Version: version,
		Dir:     opts.out, Force: opts.force, Jobs: opts.jobs, Listen: listen, Advertise: advertise,
		ReadBack: opts.readBack, NoSameOwner: opts.noSameOwner, LockWait: opts.run.lockWait,
		Counters: cnt, Log: s.logf(opts.output),
		PreReceive: func(ctx context.Context, id string) error {
			env.Shipment = id
			if err := runner.Run(ctx, hooks.PreReceive, env); err != nil {
				return hookErr(fmt.Errorf("nothing was written: %w", err))
			}
			return nil
		},
	})
	if err != nil {
		rep.finish(false, nil, "")
		live.ReplyError(out, exitCode(err), err)
		return onFailure(ctx, s, runner, env, err)
	}
	rep.finish(true, map[string]any{
		"shipment": res.ID, "files": len(res.Files), "rounds": res.Rounds, "bytes_total": cnt.Total.Load(),
	}, fmt.Sprintf("restored %s (%s) into %s in %s", res.ID, plural(len(res.Files), "path", "paths"), opts.out,
		plural(res.Rounds, "round", "rounds")))
	env.Files = res.Files
	if err := runner.Run(ctx, hooks.PostReceive, env); err != nil {
		err = hookErr(fmt.Errorf("shipment %s is restored in %s and kept, but %w", res.ID, opts.out, err))
		live.ReplyError(out, exitCode(err), err)
		return onFailure(ctx, s, runner, env, err)
	}
	return live.ReplyDone(out, res.Files)
}

// liveListener returns how to listen for TCP lanes, and the host to tell
// the sender when the listening address names one.
func liveListener(flag string) (func() (net.Listener, error), string, error) {
	addr, advertise := flag, ""
	if addr == "" {
		host := "127.0.0.1"
		// The address the SSH connection reached: the sender can reach it.
		if f := strings.Fields(os.Getenv("SSH_CONNECTION")); len(f) == 4 {
			host = f[2]
		}
		addr = net.JoinHostPort(host, "0")
	} else {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, "", usagef("--listen %q: want HOST:PORT or :PORT", flag)
		}
		if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
			advertise = host
		}
	}
	return func() (net.Listener, error) { return net.Listen("tcp", addr) }, advertise, nil
}

// lineWriter hands each complete line written to it to emit.
type lineWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	emit func(string)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for {
		line, err := w.buf.ReadString('\n')
		if err == io.EOF {
			w.buf.WriteString(line)
			return len(p), nil
		}
		w.emit(strings.TrimRight(line, "\r\n"))
	}
}

func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.buf.Len() > 0 {
		w.emit(w.buf.String())
		w.buf.Reset()
	}
}

// liveFlags checks the flags of send --live and returns the number of
// data lanes and the --until-dirty bound.
// storedOnly are the flags of send that only a stored shipment has a use
// for: a live send given one would ignore it silently (a --bwlimit that
// does not limit, say).
var storedOnly = []string{"bwlimit", "base", "base-check", "segment-size", "retries", "no-resume"}

// notLive refuses, naming them, the flags of storedOnly that were given
// (on the command line or as COLDSHIP_* variables) to a live send.
func notLive(opts *sendOptions) error {
	given := givenFlags(opts, storedOnly...)
	if given == "" {
		return nil
	}
	return usagef("send --live: %s: only for stored shipments (a live send does not limit its rate, keep DR state, cut segments or resume)", given)
}

// givenFlags names those of the flags that were given, on the command
// line or as COLDSHIP_* variables, with their variable: a site's
// environment may set one the user did not type.
func givenFlags(opts *sendOptions, names ...string) string {
	var given []string
	for _, name := range names {
		if opts.set != nil && opts.set(name) {
			given = append(given, "--"+name+" ("+envName(name)+")")
		}
	}
	return strings.Join(given, ", ")
}

func liveFlags(lo *liveOptions, streams int) (lanes int, untilDirty int64, err error) {
	lanes = streams
	switch lo.data {
	case "ssh", "tcp":
		if lanes < 0 || lanes > 64 {
			return 0, 0, usagef("--streams %d: want 1 to 64", lanes)
		}
		if lanes == 0 && lo.data == "tcp" {
			lanes = defaultLiveStreams
		}
	default:
		return 0, 0, usagef("--data %q: want ssh or tcp", lo.data)
	}
	if lo.rounds < 0 {
		return 0, 0, usagef("--rounds %d: give 0 (no pre-copy) or a positive number", lo.rounds)
	}
	if lo.untilDirty != "" {
		if untilDirty, err = parseSize(lo.untilDirty); err != nil {
			return 0, 0, usagef("--until-dirty: %v", err)
		}
	}
	for _, h := range lo.remoteHooks {
		hk, err := hooks.ParseHook(h)
		if err != nil {
			return 0, 0, usageError{fmt.Errorf("--remote-hook %s: %w", h, err)}
		}
		if hk.Phase != hooks.PreReceive && hk.Phase != hooks.PostReceive && hk.Phase != hooks.OnFailure {
			return 0, 0, usagef("--remote-hook %s: the destination runs pre-receive, post-receive and on-failure hooks only", h)
		}
	}
	return lanes, untilDirty, nil
}

// reportLiveSend ends the progress of a live send that succeeded with its
// summary: the rounds, the switch-over and the bytes. Without a
// pre-switchover hook, the time res.Hook measured is coldship's own checks:
// no hook's share, so 0 in JSON and not shown.
func reportLiveSend(rep *reporter, res *live.SendResult, opts *sendOptions, lanes int, hookRan bool) {
	hook, hookNote := time.Duration(0), ""
	if hookRan {
		hook = res.Hook
		hookNote = fmt.Sprintf(" (pre-switchover hook %s)", hook.Round(time.Millisecond))
	}
	var data, wire int64
	rounds := make([]map[string]any, len(res.Rounds))
	for i, r := range res.Rounds {
		data += r.Data
		wire += r.Wire
		rounds[i] = map[string]any{"round": r.Round, "final": r.Final, "blocks": r.Blocks, "bytes_data": r.Data,
			"bytes_shipped": r.Wire, "bytes_read": r.Read, "duration_s": r.Duration.Seconds()}
	}
	rep.finish(true, map[string]any{
		"mode": "live", "shipment": res.ID, "files": len(res.Files), "rounds": rounds,
		"switchover_s": res.Switchover.Seconds(), "pre_switchover_hook_s": hook.Seconds(),
		"bytes_total": res.Total, "bytes_hole": res.Hole, "bytes_zero": res.Zero,
		"bytes_data": data, "bytes_shipped": wire, "paths": nonNil(res.Files), "data": opts.live.data, "lanes": lanes,
	}, fmt.Sprintf("restored %s (%s) at %s as %s in %s, %s sent; switch-over %s%s",
		humanBytes(res.Total), plural(len(res.Files), "path", "paths"), opts.to, res.ID,
		plural(len(res.Rounds), "round", "rounds"), humanBytes(wire), res.Switchover.Round(time.Millisecond), hookNote))
}
