package sftp

import (
	"context"
	"errors"
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
	go keepAliveClient(client)
	return client, nil
}

// keepAliveClient closes client when it stops answering keepalive
// requests: a peer that vanished without closing the connection (a NAT
// that forgot it) would otherwise leave reads and writes waiting forever.
func keepAliveClient(client *ssh.Client) {
	done := make(chan struct{})
	go func() {
		client.Wait()
		close(done)
	}()
	keepAlive(client, done, func() { client.Close() })
}

// keepAlive sends a keepalive request every keepaliveInterval until done
// is closed, and calls closeConn when one fails or has no answer within
// keepaliveTimeout.
func keepAlive(client *ssh.Client, done <-chan struct{}, closeConn func()) {
	tick := time.NewTicker(keepaliveInterval)
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
		timeout := time.NewTimer(keepaliveTimeout)
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
