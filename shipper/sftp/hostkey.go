package sftp

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/coldship/coldship/shipper"
)

// knownHostsMu serialises the appends of AcceptNewHostKey within the
// process.
var knownHostsMu sync.Mutex

// hostKeyChecker verifies servers' host keys against known_hosts files.
type hostKeyChecker struct {
	d      *destination
	accept bool
	stderr io.Writer
	log    func(format string, a ...any) // Config.Log; nil: stderr
}

// prepare reads the known_hosts files and returns the callback for one
// connection attempt, with the host key algorithms to ask for: those of the
// keys recorded for the host, so that a server with several host keys
// presents the one we know rather than one we would take for a change.
// refused returns the callback's last refusal, so that the caller can report
// it without the SSH library's decoration.
func (h *hostKeyChecker) prepare() (cb ssh.HostKeyCallback, algos []string, refused func() error, err error) {
	db, err := h.load()
	if err != nil {
		return nil, nil, nil, err
	}
	algos = knownAlgorithms(db, h.d.addr(), h.d.port)
	var mu sync.Mutex
	var refusal error
	cb = func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		err := h.check(db, hostname, remote, key)
		if err != nil {
			mu.Lock()
			refusal = err
			mu.Unlock()
		}
		return err
	}
	refused = func() error {
		mu.Lock()
		defer mu.Unlock()
		return refusal
	}
	return cb, algos, refused, nil
}

// load builds the known_hosts callback from the files that exist.
func (h *hostKeyChecker) load() (ssh.HostKeyCallback, error) {
	var files []string
	for _, f := range h.d.knownHosts {
		if _, err := os.Stat(f); err == nil {
			files = append(files, f)
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("known_hosts: %w", err)
		}
	}
	db, err := knownhosts.New(files...)
	if err != nil {
		return nil, fmt.Errorf("known_hosts: %w", err)
	}
	return db, nil
}

func (h *hostKeyChecker) check(db ssh.HostKeyCallback, hostname string, remote net.Addr, key ssh.PublicKey) error {
	err := db(hostname, remote, key)
	if err == nil {
		return nil
	}
	var keyErr *knownhosts.KeyError
	var revoked *knownhosts.RevokedError
	switch {
	case errors.As(err, &revoked):
		return fmt.Errorf("host key %s %s of %s is marked as revoked in %s:%d; refusing to connect: %w",
			key.Type(), ssh.FingerprintSHA256(key), knownhosts.Normalize(hostname),
			revoked.Revoked.Filename, revoked.Revoked.Line, shipper.ErrAuth)
	case errors.As(err, &keyErr) && len(keyErr.Want) > 0:
		return changedKeyError(hostname, key, keyErr.Want)
	case errors.As(err, &keyErr):
		if !h.accept {
			return h.unknownKeyError(hostname, key)
		}
		return h.add(hostname, remote, key)
	}
	return fmt.Errorf("check host key of %s: %v: %w", knownhosts.Normalize(hostname), err, shipper.ErrAuth)
}

func (h *hostKeyChecker) unknownKeyError(hostname string, key ssh.PublicKey) error {
	host, port := h.d.host, strconv.Itoa(h.d.port)
	scan := "ssh-keyscan "
	if port != "22" {
		scan += "-p " + port + " "
	}
	scan += host
	return fmt.Errorf("host %s is not in %s; it presents the %s key %s. "+
		"Make sure that is the server's key (ask its administrator, or run `ssh-keygen -lf` on the server's host key), "+
		"then trust it with `%s >> %s` or by running again with --accept-new-host-key: %w",
		knownhosts.Normalize(hostname), h.d.knownHostsWrite, key.Type(), ssh.FingerprintSHA256(key),
		scan, h.d.knownHostsWrite, shipper.ErrAuth)
}

func changedKeyError(hostname string, key ssh.PublicKey, want []knownhosts.KnownKey) error {
	w := want[0]
	for _, k := range want {
		if k.Key.Type() == key.Type() {
			w = k
			break
		}
	}
	host := knownhosts.Normalize(hostname)
	return fmt.Errorf("WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED for %s: it presents the %s key %s, "+
		"but %s:%d records the %s key %s. Someone could be intercepting the connection (man-in-the-middle attack), "+
		"or the server's host key was replaced. If the change is expected, remove the old entry with "+
		"`ssh-keygen -R '%s' -f %s` and check the new key before trusting it: %w",
		host, key.Type(), ssh.FingerprintSHA256(key), w.Filename, w.Line, w.Key.Type(), ssh.FingerprintSHA256(w.Key),
		host, w.Filename, shipper.ErrAuth)
}

// add records key for the host in the writable known_hosts file. It checks
// again under the lock, since another connection may have added the host
// meanwhile.
func (h *hostKeyChecker) add(hostname string, remote net.Addr, key ssh.PublicKey) error {
	knownHostsMu.Lock()
	defer knownHostsMu.Unlock()
	db, err := h.load()
	if err != nil {
		return err
	}
	var keyErr *knownhosts.KeyError
	err = db(hostname, remote, key)
	switch {
	case err == nil:
		return nil
	case errors.As(err, &keyErr) && len(keyErr.Want) == 0:
	default:
		return h.check(db, hostname, remote, key)
	}

	host := knownhosts.Normalize(hostname)
	field := host
	if h.d.hashKnownHosts {
		field = knownhosts.HashHostname(host)
	}
	line := knownhosts.Line([]string{field}, key) + "\n"

	file := h.d.knownHostsWrite
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return fmt.Errorf("record host key: %w", err)
	}
	f, err := os.OpenFile(file, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("record host key: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, fi.Size()-1); err == nil && last[0] != '\n' {
			line = "\n" + line
		}
	}
	if _, err := f.WriteString(line); err != nil {
		return fmt.Errorf("record host key in %s: %w", file, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("record host key in %s: %w", file, err)
	}
	h.added(host, key, file)
	return nil
}

// added tells the user that a host key was recorded, as ssh does: through
// Config.Log when set (so that it follows --quiet and --json like every
// notice), else on stderr.
func (h *hostKeyChecker) added(host string, key ssh.PublicKey, file string) {
	const msg = "Permanently added %s (%s %s) to the list of known hosts in %s."
	switch {
	case h.log != nil:
		h.log(msg, host, key.Type(), ssh.FingerprintSHA256(key), file)
	case h.stderr != nil:
		fmt.Fprintf(h.stderr, "Warning: "+msg+"\n", host, key.Type(), ssh.FingerprintSHA256(key), file)
	}
}

// probeKey is a key that is in no known_hosts file: checking it reveals the
// keys recorded for a host.
var probeKey, _ = ssh.NewPublicKey(ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)).Public())

// knownAlgorithms returns the host key algorithms of the keys recorded for
// addr, or nil (the library's defaults) if there are none or a
// @cert-authority line applies, since a certificate's algorithm differs
// from its authority's key type.
func knownAlgorithms(db ssh.HostKeyCallback, addr string, port int) []string {
	var keyErr *knownhosts.KeyError
	remote := &net.TCPAddr{IP: net.IPv4zero, Port: port}
	if !errors.As(db(addr, remote, probeKey), &keyErr) || len(keyErr.Want) == 0 {
		return nil
	}
	supported := ssh.SupportedAlgorithms().HostKeys
	var algos []string
	for _, k := range keyErr.Want {
		if isCertAuthorityLine(k.Filename, k.Line) {
			return nil
		}
		for _, a := range algorithmsForKey(k.Key.Type()) {
			if slices.Contains(supported, a) && !slices.Contains(algos, a) {
				algos = append(algos, a)
			}
		}
	}
	if len(algos) == 0 {
		return nil
	}
	return algos
}

// algorithmsForKey maps a key type to the signature algorithms that prove
// it. SHA-1 RSA signatures are not offered, as OpenSSH no longer does.
func algorithmsForKey(keyType string) []string {
	if keyType == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}
	}
	return []string{keyType}
}

func isCertAuthorityLine(file string, line int) bool {
	f, err := os.Open(file)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		if n == line {
			return bytes.HasPrefix(bytes.TrimSpace(sc.Bytes()), []byte("@cert-authority"))
		}
	}
	return false
}

// noCommonHostKeyError explains a handshake that failed because the server
// has none of the key types recorded for it.
func noCommonHostKeyError(d *destination, algos []string, err error) error {
	if !strings.Contains(err.Error(), "no common algorithm for host key") {
		return nil
	}
	return fmt.Errorf("%s presents none of the host key types recorded for it in known_hosts (%s); "+
		"the server's keys may have changed: %w", knownhosts.Normalize(d.addr()), strings.Join(algos, ", "), shipper.ErrAuth)
}
