package sftp

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/kevinburke/ssh_config"

	"github.com/coldship/coldship/internal/home"
)

// When Config.Streams is zero a Transport picks the number of SFTP
// sessions (streams) from the round trip it measures on the first
// connection (AutoStreams), and spreads them over SSH connections (Plan).
//
// Each Put or Open of a segment runs on one session, a channel of its own,
// which moves at most its flow-control window per round trip: OpenSSH's
// sshd offers 2 MiB and tops it up when half is used, x/crypto/ssh's
// client window for downloads is 2 MiB too. Measured through the test
// harness's delay line, that is ~1.4 MiB per round trip per channel
// (15 MB/s at 100 ms, 7.5 MB/s at 200 ms), and it scales linearly with
// channels, whether they share a connection or not. Channels on one
// connection cost no handshake and no slot of sshd's MaxStartups; OpenSSH
// allows 10 per connection (MaxSessions).
//
// The number of streams covers the bandwidth-delay product of the most
// this machine can feed: feedRatePerCPU per CPU, times the round trip,
// over one channel's bytes per round trip. On a short link the window is
// no limit and a stream beyond what the sender's cores can fill costs CPU
// at both ends (a sync of every object; an sshd process per connection):
// one per CPU, from 2 to 4, each on a connection of its own so that sshd
// decrypts on every core.
const (
	// MaxAutoStreams bounds the automatic choice: connections and
	// channels cost the server. (The reads of all of them share one
	// budget, readBudget, which 32 channels' round trips fill.)
	MaxAutoStreams = 32

	// maxChannelsPerLink is OpenSSH's default MaxSessions.
	maxChannelsPerLink = 10

	// channelBytesPerRTT is what one SFTP channel moves per round trip.
	channelBytesPerRTT = 1400 << 10

	// feedRatePerCPU is what one CPU seals and encrypts for SSH, in bytes
	// per second (a 1 GiB send on loopback: ~530 MB/s on two cores, sshd
	// included).
	feedRatePerCPU = 256 << 20
)

// MinAutoStreams is the fewest streams of the automatic choice: one per
// CPU of this machine, at least 2 (one can wait on the server's sync of
// an object while the other moves data) and at most 4.
func MinAutoStreams() int { return min(max(runtime.NumCPU(), 2), 4) }

// AutoStreams is the number of streams for a measured round trip: enough
// channels to keep feedRatePerCPU per CPU in flight.
func AutoStreams(rtt time.Duration) int {
	bdp := float64(feedRatePerCPU*runtime.NumCPU()) * rtt.Seconds()
	n := int(math.Ceil(bdp / channelBytesPerRTT))
	return min(max(n, MinAutoStreams()), MaxAutoStreams)
}

// Plan spreads streams (0: AutoStreams of rtt) over SSH connections: at
// most maxChannelsPerLink to a connection, and at least MinAutoStreams
// connections, so that the server's side of each runs on a core of its
// own. A tunnelled connection (ProxyJump, ProxyCommand) travels in a
// channel of a jump host's connection, whose window would cap all of its
// channels at one's throughput: one stream each. It returns the number of
// streams of each connection.
func Plan(rtt time.Duration, streams int, tunnelled bool) []int {
	if streams <= 0 {
		streams = AutoStreams(rtt)
	}
	links := max((streams+maxChannelsPerLink-1)/maxChannelsPerLink, min(streams, MinAutoStreams()))
	if tunnelled {
		links = streams
	}
	return spread(streams, links)
}

// spread spreads streams over links connections as evenly as it can.
func spread(streams, links int) []int {
	per := make([]int, links)
	for i := range per {
		per[i] = streams / links
		if i < streams%links {
			per[i]++
		}
	}
	return per
}

func sum(xs []int) int {
	n := 0
	for _, x := range xs {
		n += x
	}
	return n
}

// handshakeRTTs is fewer round trips than the first connection's TCP
// connect, SSH handshake and authentication take (6 to 7 with Go's SSH
// library), so that the round trip guessed from their time is no longer
// than the real one (the handshake's CPU time adds to it).
const handshakeRTTs = 8

// AheadLinks is how many more connections to dial as soon as the first has
// authenticated, before the round trip is measured on its first session
// (3 round trips later): those that Plan gives for the round trip the
// handshake's duration suggests, less the first. On a long link they then
// carry data as soon as the first connection does.
func AheadLinks(handshake time.Duration, streams int, tunnelled bool) int {
	return len(Plan(handshake/handshakeRTTs, streams, tunnelled)) - 1
}

// maxHandshakes is how many connections of one Transport authenticate at
// once, so that sshd's default MaxStartups (10 unauthenticated
// connections) never refuses one.
const maxHandshakes = 8

// Config is everything needed to reach an SFTP destination.
type Config struct {
	// User, Host and Port come from the URL, then from ssh_config (Host may
	// be an alias whose HostName is the real address), then the defaults:
	// the current user and port 22.
	User string
	Host string
	Port int

	// Path is the remote root directory, absolute or relative to the login
	// directory. Empty means the login directory.
	Path string

	// KeyFiles are private key files to authenticate with (--ssh-key). If
	// empty, the IdentityFile entries of ssh_config are used, or else the
	// OpenSSH defaults ~/.ssh/id_ed25519, id_ecdsa and id_rsa. Keys held by
	// the agent (SSH_AUTH_SOCK) are always tried first.
	KeyFiles []string

	// KnownHosts is the known_hosts file (--known-hosts). If empty, the
	// UserKnownHostsFile entries of ssh_config are used, or else
	// ~/.ssh/known_hosts; /etc/ssh/ssh_known_hosts is also read then.
	KnownHosts string

	// AcceptNewHostKey trusts and records the key of a host that has no
	// entry in known_hosts, like StrictHostKeyChecking=accept-new. A key
	// that differs from a recorded one is refused regardless.
	AcceptNewHostKey bool

	// Streams is the number of SSH connections used concurrently; 0 means
	// AutoStreams of the round trip measured on the first connection.
	Streams int

	// SSHConfig is the ssh_config file to read: "" means ~/.ssh/config if
	// it exists, "none" means none.
	SSHConfig string

	// AskPass asks for the passphrase of an encrypted private key. If nil,
	// encrypted keys are skipped (and named in the error if nothing else
	// authenticates).
	AskPass func(prompt string) ([]byte, error)

	// Stderr receives warnings such as a newly recorded host key. It may be
	// nil.
	Stderr io.Writer

	// Log receives notices about faults the transport gets over by
	// itself (a connection dialled again, a channel the server refused),
	// one message a call, without a trailing newline. If nil, they are
	// lines on Stderr.
	Log func(format string, a ...any)
}

// ParseURL parses sftp://[user@]host[:port][/path]. An IPv6 host is written
// in brackets. "/x" is the absolute path /x; "/~/x" is x relative to the
// login directory, and no path at all means the login directory.
func ParseURL(raw string) (Config, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error repeats the whole URL, which could hold a password.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return Config{}, fmt.Errorf("invalid sftp URL: %v", err)
	}
	if !strings.EqualFold(u.Scheme, "sftp") {
		return Config{}, fmt.Errorf("invalid sftp URL %s: scheme must be sftp", u.Redacted())
	}
	if u.Opaque != "" || u.RawQuery != "" || u.Fragment != "" {
		return Config{}, fmt.Errorf("invalid sftp URL %s: want sftp://[user@]host[:port]/path", u.Redacted())
	}
	var cfg Config
	if u.User != nil {
		if _, ok := u.User.Password(); ok {
			return Config{}, fmt.Errorf("invalid sftp URL %s: passwords are not supported, use a key or the ssh agent", u.Redacted())
		}
		cfg.User = u.User.Username()
	}
	cfg.Host = u.Hostname()
	if cfg.Host == "" {
		return Config{}, fmt.Errorf("invalid sftp URL %s: no host", u.Redacted())
	}
	if strings.Contains(cfg.Host, ":") {
		if _, err := netip.ParseAddr(cfg.Host); err != nil {
			return Config{}, fmt.Errorf("invalid sftp URL %s: bad IPv6 address %q", u.Redacted(), cfg.Host)
		}
	}
	if p := u.Port(); p != "" {
		cfg.Port, err = strconv.Atoi(p)
		if err != nil || cfg.Port < 1 || cfg.Port > 65535 {
			return Config{}, fmt.Errorf("invalid sftp URL %s: bad port %q", u.Redacted(), p)
		}
	}
	switch p := u.Path; {
	case p == "" || p == "/~" || p == "/~/":
		cfg.Path = ""
	case strings.HasPrefix(p, "/~/"):
		cfg.Path = path.Clean(p[len("/~/"):])
	default:
		cfg.Path = path.Clean(p)
	}
	return cfg, nil
}

// Identity names the account and folder that cfg reaches once ssh_config
// (User, HostName, Port) and the defaults (the local user, port 22)
// apply: one name for every spelling of one destination, with or without
// the user, by an alias or by the host's name. Locks use it, so that two
// runs never write one folder at once because it was spelled two ways.
func Identity(cfg Config) (string, error) {
	d, err := resolve(cfg)
	if err != nil {
		return "", err
	}
	return Config{User: d.user, Host: strings.ToLower(d.host), Port: d.port, Path: d.root}.String(), nil
}

// String returns the destination as an sftp URL.
func (c Config) String() string {
	u := url.URL{Scheme: "sftp", Host: c.Host}
	if c.Port != 0 {
		u.Host = net.JoinHostPort(c.Host, strconv.Itoa(c.Port))
	} else if strings.Contains(c.Host, ":") {
		u.Host = "[" + c.Host + "]"
	}
	if c.User != "" {
		u.User = url.User(c.User)
	}
	switch {
	case c.Path == "":
	case strings.HasPrefix(c.Path, "/"):
		u.Path = c.Path
	default:
		u.Path = "/~/" + c.Path
	}
	return u.String()
}

// destination is a Config resolved through ssh_config and the defaults.
type destination struct {
	alias string // Config.Host as given, for messages
	host  string // the address to dial (HostName)
	port  int
	user  string
	root  string

	keyFiles       []string
	keySource      keySource
	identitiesOnly bool

	knownHosts      []string // read for verification
	knownHostsWrite string   // where AcceptNewHostKey appends
	hashKnownHosts  bool

	jumps        []*destination // ProxyJump's hosts, in order
	proxyCommand string         // ProxyCommand, its tokens expanded

	alive          aliveCheck    // ServerAliveInterval and ServerAliveCountMax
	connectTimeout time.Duration // ConnectTimeout; 0: handshakeTimeout
}

// handshakeTimeout is how long connecting and the SSH handshake may take:
// ssh_config's ConnectTimeout, else coldship's default.
func (d *destination) handshakeTimeout() time.Duration {
	if d.connectTimeout > 0 {
		return d.connectTimeout
	}
	return handshakeTimeout
}

// keySource says where the key files come from: a missing file named on
// the command line is an error, one named in ssh_config is skipped with a
// note, a missing default is nothing to mention.
type keySource int

const (
	keysDefault keySource = iota
	keysConfig
	keysFlag
)

func (d *destination) addr() string { return net.JoinHostPort(d.host, strconv.Itoa(d.port)) }

func (d *destination) String() string {
	return Config{User: d.user, Host: d.alias, Port: d.port, Path: d.root}.String()
}

// ErrConfig marks an error in the ssh_config that coldship reads for the
// destination (a value it cannot use, a file named that cannot be read or
// parsed): the operator's to fix, not a fault of the destination.
var ErrConfig = errors.New("ssh_config error")

// configError is an error in ssh_config: its message as it is, and
// ErrConfig.
type configError struct{ err error }

func (e configError) Error() string   { return e.err.Error() }
func (e configError) Unwrap() []error { return []error{e.err, ErrConfig} }

func configErrorf(format string, a ...any) error { return configError{fmt.Errorf(format, a...)} }

// resolve applies ssh_config and the defaults to cfg, and to each of its
// jump hosts.
func resolve(cfg Config) (*destination, error) {
	if cfg.Host == "" {
		return nil, errors.New("sftp: no host")
	}
	homeDir := home.Dir()
	sc, file, err := loadSSHConfig(cfg.SSHConfig, homeDir, cfg.Stderr)
	if err != nil {
		return nil, err
	}
	d, err := resolveHost(cfg, sc, file, homeDir)
	if err != nil {
		return nil, err
	}
	switch proxyKey(sc, cfg.Host) {
	case "proxycommand":
		v, _ := sc.Get(cfg.Host, "ProxyCommand")
		if v = strings.TrimSpace(v); !strings.EqualFold(v, "none") {
			tokens := tokenExpander{home: homeDir, local: currentUser(), host: d.host, alias: cfg.Host, user: d.user, port: d.port}
			d.proxyCommand = tokens.expand(v)
		}
	case "proxyjump":
		v, _ := sc.Get(cfg.Host, "ProxyJump")
		if v = strings.TrimSpace(v); strings.EqualFold(v, "none") || v == "" {
			break
		}
		for _, spec := range strings.Split(v, ",") {
			hop, err := parseHop(strings.TrimSpace(spec))
			if err != nil {
				return nil, configErrorf("ssh_config %s: Host %s: ProxyJump: %w", file, cfg.Host, err)
			}
			hop.KeyFiles, hop.KnownHosts, hop.Stderr = cfg.KeyFiles, cfg.KnownHosts, cfg.Stderr
			jd, err := resolveHost(hop, sc, file, homeDir)
			if err != nil {
				return nil, fmt.Errorf("ProxyJump %s: %w", spec, err)
			}
			d.jumps = append(d.jumps, jd)
		}
	}
	return d, nil
}

// proxyKey says which of ProxyJump and ProxyCommand applies to alias,
// "proxyjump", "proxycommand" or "": whichever comes first, as OpenSSH
// takes the first value it obtains and either one prevents the other.
func proxyKey(sc *ssh_config.Config, alias string) string {
	if sc == nil {
		return ""
	}
	for _, h := range sc.Hosts {
		if !h.Matches(alias) {
			continue
		}
		for _, n := range h.Nodes {
			switch n := n.(type) {
			case *ssh_config.KV:
				if k := strings.ToLower(n.Key); k == "proxyjump" || k == "proxycommand" {
					return k
				}
			case *ssh_config.Include:
				if n.Get(alias, "ProxyJump") != "" {
					return "proxyjump"
				}
				if n.Get(alias, "ProxyCommand") != "" {
					return "proxycommand"
				}
			}
		}
	}
	return ""
}

// parseHop parses one jump host of ProxyJump: [user@]host[:port] or
// ssh://[user@]host[:port].
func parseHop(spec string) (Config, error) {
	if spec == "" {
		return Config{}, errors.New("an empty jump host")
	}
	raw := spec
	if !strings.Contains(spec, "://") {
		raw = "ssh://" + spec
	}
	cfg, err := ParseSSHURL(raw)
	if err != nil || cfg.Path != "" {
		return Config{}, fmt.Errorf("jump host %q: want [user@]host[:port]", spec)
	}
	return cfg, nil
}

// resolveHost applies the ssh_config entry of cfg.Host and the defaults.
func resolveHost(cfg Config, sc *ssh_config.Config, file, home string) (*destination, error) {
	local := currentUser()
	var err error
	get := func(key string) string {
		if sc == nil {
			return ""
		}
		v, _ := sc.Get(cfg.Host, key)
		return strings.TrimSpace(v)
	}
	getAll := func(key string) []string {
		if sc == nil {
			return nil
		}
		v, _ := sc.GetAll(cfg.Host, key)
		return v
	}

	d := &destination{alias: cfg.Host, host: cfg.Host, port: cfg.Port, user: cfg.User, root: cfg.Path}
	if h := get("HostName"); h != "" {
		d.host = strings.ReplaceAll(h, "%h", cfg.Host)
	}
	if d.port == 0 {
		if p := get("Port"); p != "" {
			d.port, err = strconv.Atoi(p)
			if err != nil || d.port < 1 || d.port > 65535 {
				return nil, configErrorf("ssh_config %s: Host %s: bad Port %q", file, cfg.Host, p)
			}
		}
	}
	if d.port == 0 {
		d.port = 22
	}
	if d.user == "" {
		d.user = get("User")
	}
	if d.user == "" {
		d.user = local
	}
	if d.user == "" {
		return nil, errors.New("sftp: no user name: give one in the URL (sftp://user@host/path)")
	}

	if d.alive, err = parseAliveCheck(get("ServerAliveInterval"), get("ServerAliveCountMax")); err != nil {
		return nil, configErrorf("ssh_config %s: Host %s: %w", file, cfg.Host, err)
	}
	if v := get("ConnectTimeout"); v != "" && !strings.EqualFold(v, "none") {
		if d.connectTimeout, err = parseSSHTime(v); err != nil {
			return nil, configErrorf("ssh_config %s: Host %s: bad ConnectTimeout %q: %w", file, cfg.Host, v, err)
		}
	}
	tokens := tokenExpander{home: home, local: local, host: d.host, alias: cfg.Host, user: d.user, port: d.port}
	d.resolveFiles(cfg, get, getAll, tokens, home)
	d.hashKnownHosts = strings.EqualFold(get("HashKnownHosts"), "yes")
	return d, nil
}

// resolveFiles sets the key files and known_hosts files of d: the flags'
// (cfg), else ssh_config's (get, getAll; tokens expanded), else OpenSSH's
// defaults under home.
func (d *destination) resolveFiles(cfg Config, get func(string) string, getAll func(string) []string, tokens tokenExpander, home string) {
	switch {
	case len(cfg.KeyFiles) > 0:
		d.keyFiles, d.keySource = cfg.KeyFiles, keysFlag
	case len(getAll("IdentityFile")) > 0:
		for _, f := range getAll("IdentityFile") {
			if strings.EqualFold(f, "none") {
				continue
			}
			d.keyFiles = append(d.keyFiles, tokens.expand(f))
		}
		d.keySource = keysConfig
	default:
		d.keySource = keysDefault
		for _, name := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			d.keyFiles = append(d.keyFiles, filepath.Join(home, ".ssh", name))
		}
	}
	d.identitiesOnly = strings.EqualFold(get("IdentitiesOnly"), "yes")

	switch {
	case cfg.KnownHosts != "":
		d.knownHosts = []string{cfg.KnownHosts}
	default:
		for _, v := range getAll("UserKnownHostsFile") {
			for _, f := range strings.Fields(v) {
				if !strings.EqualFold(f, "none") {
					d.knownHosts = append(d.knownHosts, tokens.expand(f))
				}
			}
		}
		if len(d.knownHosts) == 0 {
			d.knownHosts = []string{filepath.Join(home, ".ssh", "known_hosts")}
		}
	}
	d.knownHostsWrite = d.knownHosts[0]
	if cfg.KnownHosts == "" {
		// Read, never written, like OpenSSH's GlobalKnownHostsFile.
		d.knownHosts = append(d.knownHosts, "/etc/ssh/ssh_known_hosts")
	}
}

func currentUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return os.Getenv("USER")
}

// loadSSHConfig reads the ssh_config named by name, and returns it with
// its path (for messages). A default file that is missing is no error; one
// that cannot be parsed is ignored with a warning, since OpenSSH would
// still be usable with it and refusing to run would surprise; a file named
// explicitly must parse.
func loadSSHConfig(name, home string, stderr io.Writer) (*ssh_config.Config, string, error) {
	explicit := name != ""
	switch {
	case strings.EqualFold(name, "none"):
		return nil, "", nil
	case name == "":
		if home == "" {
			return nil, "", nil
		}
		name = filepath.Join(home, ".ssh", "config")
	}
	f, err := os.Open(name)
	if err != nil {
		if !explicit && errors.Is(err, os.ErrNotExist) {
			return nil, "", nil
		}
		return nil, "", configErrorf("ssh_config: %w", err)
	}
	defer f.Close()
	sc, err := ssh_config.Decode(f)
	if err != nil {
		if explicit {
			return nil, "", configErrorf("ssh_config %s: %w", name, err)
		}
		if stderr != nil {
			fmt.Fprintf(stderr, "warning: ignoring %s: %v\n", name, err)
		}
		return nil, "", nil
	}
	return sc, name, nil
}

// tokenExpander expands the ssh_config(5) tokens that make sense for file
// names, and a leading ~.
type tokenExpander struct {
	home, local, host, alias, user string
	port                           int
}

func (e tokenExpander) expand(s string) string {
	if s == "~" {
		s = e.home
	} else if strings.HasPrefix(s, "~/") {
		s = filepath.Join(e.home, s[2:])
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		i++
		switch s[i] {
		case '%':
			b.WriteByte('%')
		case 'd':
			b.WriteString(e.home)
		case 'u':
			b.WriteString(e.local)
		case 'h':
			b.WriteString(e.host)
		case 'n':
			b.WriteString(e.alias)
		case 'r':
			b.WriteString(e.user)
		case 'p':
			b.WriteString(strconv.Itoa(e.port))
		case 'i':
			b.WriteString(strconv.Itoa(os.Getuid()))
		default:
			b.WriteByte('%')
			b.WriteByte(s[i])
		}
	}
	return b.String()
}
