package sftp

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// ParseSSHURL parses ssh://[user@]host[:port][/path] with the rules of
// ParseURL: "/x" is the absolute path /x, "/~/x" is x relative to the login
// directory, and no path at all means the login directory.
func ParseSSHURL(raw string) (Config, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok || !strings.EqualFold(scheme, "ssh") {
		return Config{}, errors.New("invalid ssh URL: want ssh://[user@]host[:port]/path")
	}
	cfg, err := ParseURL("sftp://" + rest)
	if err != nil {
		return Config{}, errors.New(strings.ReplaceAll(err.Error(), "sftp", "ssh"))
	}
	return cfg, nil
}

// DialSSH resolves cfg through ssh_config as Dial does and opens one SSH
// connection under the same rules: keys from ssh-agent, cfg.KeyFiles,
// ssh_config or the OpenSSH defaults (an encrypted key asked for through
// cfg.AskPass); the host key checked against known_hosts, an unknown one
// recorded only with cfg.AcceptNewHostKey, a changed one always refused;
// errors that wrap shipper.ErrAuth for both. cfg.Path and cfg.Streams are
// not used. The connection answers no SFTP: the caller opens its own
// sessions on it. It is kept alive with keepalive@openssh.com requests and
// closed when they go unanswered. The caller closes it.
func DialSSH(ctx context.Context, cfg Config) (*ssh.Client, error) {
	d, err := resolve(cfg)
	if err != nil {
		return nil, err
	}
	// A Transport without streams lends its route, host key checking,
	// authentication and banner to the one connection.
	t, err := newTransport(d, cfg)
	if err != nil {
		return nil, err
	}
	client, err := t.connect(ctx)
	if err != nil {
		t.route.close()
		return nil, err
	}
	go func() {
		client.Wait()
		t.route.close()
	}()
	go keepAliveClient(client, d.alive)
	return client, nil
}

// AliveTimeout is how long a connection to cfg's destination may go
// unanswered before it is given up: ServerAliveInterval ×
// ServerAliveCountMax of ssh_config (45 s by default), as DialSSH's
// keepalives do. Connections to the same host that carry no keepalives
// (send --live's TCP lanes) are given up by the same rule.
func AliveTimeout(cfg Config) (time.Duration, error) {
	d, err := resolve(cfg)
	if err != nil {
		return 0, err
	}
	return d.alive.timeout(), nil
}

// keepAliveClient closes client when it stops answering keepalive
// requests: a peer that vanished without closing the connection (a NAT
// that forgot it) would otherwise leave reads and writes waiting forever.
func keepAliveClient(client *ssh.Client, a aliveCheck) {
	done := make(chan struct{})
	go func() {
		client.Wait()
		close(done)
	}()
	keepAlive(client, done, func() { client.Close() }, a)
}

// aliveCheck is how a connection is found dead: a keepalive request every
// interval, and the connection closed when one has no answer within
// interval × countMax (ssh_config's ServerAliveInterval and
// ServerAliveCountMax; by default 15 s and 3, so a dead link is found
// within a minute).
type aliveCheck struct {
	interval time.Duration
	countMax int
}

var defaultAliveCheck = aliveCheck{interval: keepaliveInterval, countMax: keepaliveCountMax}

func (a aliveCheck) timeout() time.Duration { return a.interval * time.Duration(a.countMax) }

// parseAliveCheck reads ssh_config's ServerAliveInterval (OpenSSH's time
// format: seconds, or a number with s, m, h, d or w, several in a row) and
// ServerAliveCountMax; an empty value keeps the default. An interval of 0
// (OpenSSH's "never") keeps the default too: a transfer must not wait
// forever on a link that died silently.
func parseAliveCheck(interval, countMax string) (aliveCheck, error) {
	a := defaultAliveCheck
	if interval != "" {
		d, err := parseSSHTime(interval)
		if err != nil {
			return a, fmt.Errorf("bad ServerAliveInterval %q: %w", interval, err)
		}
		if d > 0 {
			a.interval = d
		}
	}
	if countMax != "" {
		n, err := strconv.Atoi(countMax)
		if err != nil || n < 1 || n > 1000 {
			return a, fmt.Errorf("bad ServerAliveCountMax %q: want a whole number from 1 to 1000", countMax)
		}
		a.countMax = n
	}
	return a, nil
}

// parseSSHTime parses OpenSSH's time format (sshd_config(5), TIME
// FORMATS): "90", "90s", "1m30s", "1h"; at most a day.
func parseSSHTime(s string) (time.Duration, error) {
	units := map[byte]time.Duration{'s': time.Second, 'm': time.Minute, 'h': time.Hour, 'd': 24 * time.Hour, 'w': 7 * 24 * time.Hour}
	var total time.Duration
	for rest := strings.ToLower(s); rest != ""; {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 0 || i > 6 {
			return 0, errors.New("want seconds, or a time such as 30s or 1m30s")
		}
		n, _ := strconv.Atoi(rest[:i])
		unit := time.Second
		rest = rest[i:]
		if rest != "" {
			u, ok := units[rest[0]]
			if !ok {
				return 0, errors.New("want seconds, or a time such as 30s or 1m30s")
			}
			unit, rest = u, rest[1:]
		}
		total += time.Duration(n) * unit
		if total > 24*time.Hour {
			return 0, errors.New("more than a day")
		}
	}
	return total, nil
}

// keepAlive sends a keepalive request every a.interval until done is
// closed, and calls closeConn when one fails or has no answer within
// a.timeout().
func keepAlive(client *ssh.Client, done <-chan struct{}, closeConn func(), a aliveCheck) {
	if a.interval <= 0 || a.countMax < 1 {
		a = defaultAliveCheck
	}
	tick := time.NewTicker(a.interval)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		reply := make(chan error, 1)
		go func() {
			_, _, err := client.SendRequest("keepalive@openssh.com", true, nil)
			reply <- err
		}()
		timeout := time.NewTimer(a.timeout())
		select {
		case err := <-reply:
			timeout.Stop()
			if err != nil {
				closeConn()
				return
			}
		case <-timeout.C:
			closeConn()
			return
		case <-done:
			timeout.Stop()
			return
		}
	}
}
