package sftp

import (
	"errors"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	sftpclient "github.com/pkg/sftp"

	"github.com/coldship/coldship/shipper"
)

func TestResolve(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	local := currentUser()
	sshConfig := filepath.Join(t.TempDir(), "config")
	os.WriteFile(sshConfig, []byte(`
Host backup
    HostName 192.0.2.7
    Port 2222
    User shipper
    IdentityFile ~/.ssh/backup_%r_%h
    IdentityFile /keys/%n.key
    UserKnownHostsFile ~/.ssh/kh1 /etc/kh2
    IdentitiesOnly yes
    HashKnownHosts yes
    ServerAliveInterval 1m30s
    ServerAliveCountMax 2
    ConnectTimeout 5

Host *.example.org
    HostName %h.internal
`), 0o600)

	tests := []struct {
		name string
		cfg  Config
		want destination
	}{
		{
			name: "alias",
			cfg:  Config{Host: "backup", Path: "/srv", SSHConfig: sshConfig},
			want: destination{
				alias: "backup", host: "192.0.2.7", port: 2222, user: "shipper", root: "/srv",
				keyFiles:  []string{home + "/.ssh/backup_shipper_192.0.2.7", "/keys/backup.key"},
				keySource: keysConfig, identitiesOnly: true,
				knownHosts:      []string{home + "/.ssh/kh1", "/etc/kh2", "/etc/ssh/ssh_known_hosts"},
				knownHostsWrite: home + "/.ssh/kh1", hashKnownHosts: true,
				alive: aliveCheck{interval: 90 * time.Second, countMax: 2}, connectTimeout: 5 * time.Second,
			},
		},
		{
			name: "URL wins over ssh_config",
			cfg: Config{Host: "backup", User: "alice", Port: 22, SSHConfig: sshConfig,
				KeyFiles: []string{"/k"}, KnownHosts: "/kh"},
			want: destination{
				alias: "backup", host: "192.0.2.7", port: 22, user: "alice",
				keyFiles: []string{"/k"}, keySource: keysFlag, identitiesOnly: true,
				knownHosts: []string{"/kh"}, knownHostsWrite: "/kh", hashKnownHosts: true,
				alive: aliveCheck{interval: 90 * time.Second, countMax: 2}, connectTimeout: 5 * time.Second,
			},
		},
		{
			name: "pattern with %h",
			cfg:  Config{Host: "vault.example.org", SSHConfig: sshConfig},
			want: destination{
				alias: "vault.example.org", host: "vault.example.org.internal", port: 22, user: local,
				keyFiles:   []string{home + "/.ssh/id_ed25519", home + "/.ssh/id_ecdsa", home + "/.ssh/id_rsa"},
				knownHosts: []string{home + "/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts"}, knownHostsWrite: home + "/.ssh/known_hosts",
				alive: defaultAliveCheck,
			},
		},
		{
			name: "no ssh_config",
			cfg:  Config{Host: "backup", SSHConfig: "none"},
			want: destination{
				alias: "backup", host: "backup", port: 22, user: local,
				keyFiles:   []string{home + "/.ssh/id_ed25519", home + "/.ssh/id_ecdsa", home + "/.ssh/id_rsa"},
				knownHosts: []string{home + "/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts"}, knownHostsWrite: home + "/.ssh/known_hosts",
				alive: defaultAliveCheck,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolve(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("resolve:\n got %+v\nwant %+v", *got, tc.want)
			}
		})
	}

	if _, err := resolve(Config{Host: "x", SSHConfig: filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Error("resolve with a missing explicit ssh_config succeeded")
	}
	// A default ~/.ssh/config that does not parse is ignored with a warning.
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	os.WriteFile(filepath.Join(home, ".ssh", "config"), []byte("Match exec true\n  User x\n"), 0o600)
	var warn strings.Builder
	if d, err := resolve(Config{Host: "x", Stderr: &warn}); err != nil || d.user != local {
		t.Errorf("resolve with an unparsable default ssh_config: %+v, %v", d, err)
	}
	if !strings.Contains(warn.String(), "ignoring") {
		t.Errorf("no warning about the unparsable ssh_config: %q", warn.String())
	}
}

// TestParseAliveCheck reads ssh_config's ServerAliveInterval and
// ServerAliveCountMax as OpenSSH does, keeping coldship's default for what
// is not given and for "never" (0).
func TestParseAliveCheck(t *testing.T) {
	for _, tc := range []struct {
		interval, countMax string
		want               aliveCheck
	}{
		{"", "", aliveCheck{15 * time.Second, 3}},
		{"5", "", aliveCheck{5 * time.Second, 3}},
		{"1m30s", "2", aliveCheck{90 * time.Second, 2}},
		{"2M", "1", aliveCheck{2 * time.Minute, 1}},
		{"1h", "", aliveCheck{time.Hour, 3}},
		{"0", "5", aliveCheck{15 * time.Second, 5}},
	} {
		got, err := parseAliveCheck(tc.interval, tc.countMax)
		if err != nil || got != tc.want {
			t.Errorf("parseAliveCheck(%q, %q) = %+v, %v; want %+v", tc.interval, tc.countMax, got, err, tc.want)
		}
	}
	for _, bad := range [][2]string{{"x", ""}, {"5x", ""}, {"-1", ""}, {"m", ""}, {"2d", ""}, {"", "0"}, {"", "many"}, {"", "-2"}} {
		if got, err := parseAliveCheck(bad[0], bad[1]); err == nil {
			t.Errorf("parseAliveCheck(%q, %q) = %+v, want an error", bad[0], bad[1], got)
		}
	}
	for _, key := range []string{"ServerAliveInterval", "ConnectTimeout"} {
		_, err := resolve(Config{Host: "h", SSHConfig: writeSSHConfig(t, "Host h\n  "+key+" soon\n")})
		if err == nil || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "Host h") {
			t.Errorf("resolve with a bad %s: %v", key, err)
		}
	}
}

func writeSSHConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestResolveProxy reads ProxyJump and ProxyCommand: each jump host
// resolved through ssh_config like a destination, the command's tokens
// expanded, whichever of the two comes first applying, "none" turning
// either off.
func TestResolveProxy(t *testing.T) {
	t.Setenv("HOME", "/home/op")
	sshConfig := filepath.Join(t.TempDir(), "config")
	os.WriteFile(sshConfig, []byte(`
Host target
    HostName 192.0.2.7
    Port 2200
    User shipper
    ProxyJump bastion, alice@192.0.2.1:2022
    ProxyCommand nc %h %p

Host cmd
    HostName 192.0.2.8
    ProxyCommand ssh -W %h:%p -l %r gw %n %% %d
    ProxyJump bastion

Host nojump
    ProxyJump none

Host bastion
    HostName gw.example.org
    User jumper
    IdentityFile ~/.ssh/gw
    UserKnownHostsFile ~/.ssh/gw_hosts

Host bad
    ProxyJump a,,b
`), 0o600)

	d, err := resolve(Config{Host: "target", SSHConfig: sshConfig})
	if err != nil {
		t.Fatal(err)
	}
	if d.proxyCommand != "" || len(d.jumps) != 2 {
		t.Fatalf("target: command %q, %d jump hosts; want ProxyJump's two (it comes first)", d.proxyCommand, len(d.jumps))
	}
	j0, j1 := d.jumps[0], d.jumps[1]
	if j0.alias != "bastion" || j0.host != "gw.example.org" || j0.port != 22 || j0.user != "jumper" ||
		!reflect.DeepEqual(j0.keyFiles, []string{"/home/op/.ssh/gw"}) || j0.knownHostsWrite != "/home/op/.ssh/gw_hosts" {
		t.Errorf("first jump host: %+v", *j0)
	}
	if j1.host != "192.0.2.1" || j1.port != 2022 || j1.user != "alice" || j1.keySource != keysDefault {
		t.Errorf("second jump host: %+v", *j1)
	}
	if len(j0.jumps) != 0 || j0.proxyCommand != "" {
		t.Errorf("a jump host has a route of its own: %+v", *j0)
	}

	d, err = resolve(Config{Host: "cmd", User: "bob", SSHConfig: sshConfig})
	if err != nil {
		t.Fatal(err)
	}
	if want := "ssh -W 192.0.2.8:22 -l bob gw cmd % /home/op"; d.proxyCommand != want || len(d.jumps) != 0 {
		t.Errorf("cmd: command %q, %d jump hosts; want %q alone (it comes first)", d.proxyCommand, len(d.jumps), want)
	}
	if d, err := resolve(Config{Host: "nojump", SSHConfig: sshConfig}); err != nil || len(d.jumps) != 0 || d.proxyCommand != "" {
		t.Errorf("ProxyJump none: %+v, %v", d, err)
	}
	if _, err := resolve(Config{Host: "bad", SSHConfig: sshConfig}); err == nil || !strings.Contains(err.Error(), "ProxyJump") {
		t.Errorf("an empty jump host: err = %v", err)
	}
	// --ssh-key and --known-hosts apply to every hop.
	d, err = resolve(Config{Host: "target", SSHConfig: sshConfig, KeyFiles: []string{"/k"}, KnownHosts: "/kh"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(d.jumps[0].keyFiles, []string{"/k"}) || d.jumps[0].knownHostsWrite != "/kh" {
		t.Errorf("the flags do not reach the jump host: %+v", *d.jumps[0])
	}
}

// TestHomeFromPasswd finds ~ in the password database when HOME is unset
// (cron, systemd units), for the default keys and known_hosts.
func TestHomeFromPasswd(t *testing.T) {
	u, err := user.Current()
	if err != nil || u.HomeDir == "" {
		t.Skipf("no home folder in the password database: %v", err)
	}
	t.Setenv("HOME", "")
	d, err := resolve(Config{Host: "h", SSHConfig: "none"})
	if err != nil {
		t.Fatal(err)
	}
	if d.keyFiles[0] != filepath.Join(u.HomeDir, ".ssh", "id_ed25519") || d.knownHostsWrite != filepath.Join(u.HomeDir, ".ssh", "known_hosts") {
		t.Errorf("without HOME: keys %v, known_hosts %s; want them under %s", d.keyFiles, d.knownHostsWrite, u.HomeDir)
	}
}

func TestClassify(t *testing.T) {
	tr := &Transport{dest: &destination{user: "u", alias: "h"}}
	tests := []struct {
		op        string
		err       error
		sentinel  error
		permanent bool
	}{
		{"open", fs.ErrNotExist, shipper.ErrNotFound, false},
		{"stat", &sftpclient.StatusError{Code: fxNoSuchPath}, shipper.ErrNotFound, false},
		{"create", fs.ErrPermission, shipper.ErrPermanent, true},
		{"write", &sftpclient.StatusError{Code: fxWriteProtect}, shipper.ErrPermanent, true},
		{"write", &sftpclient.StatusError{Code: fxNoSpace}, shipper.ErrPermanent, true},
		{"write", &sftpclient.StatusError{Code: fxQuotaExceeded}, shipper.ErrPermanent, true},
		{"create directory", &notDirError{"/r"}, shipper.ErrPermanent, true},
		// pwrite and fsync fail only for what a retry does not mend (OpenSSH
		// says "failure" for an exceeded quota); opening may fail for a
		// lack of descriptors on the server, which passes.
		{"write", &sftpclient.StatusError{Code: fxFailure}, shipper.ErrPermanent, true},
		{"sync", &sftpclient.StatusError{Code: fxFailure}, shipper.ErrPermanent, true},
		{"create", &sftpclient.StatusError{Code: fxFailure}, nil, false},
		{"write", sftpclient.ErrSSHFxConnectionLost, nil, false},
	}
	for _, tc := range tests {
		err := tr.classify(nil, tc.op, "/r/.x.tmp-1", tc.err)
		if tc.sentinel != nil && !errors.Is(err, tc.sentinel) {
			t.Errorf("classify(%v) = %v, want %v", tc.err, err, tc.sentinel)
		}
		if got := errors.Is(err, shipper.ErrPermanent); got != tc.permanent {
			t.Errorf("classify(%v) = %v: permanent = %v, want %v", tc.err, err, got, tc.permanent)
		}
		if !strings.Contains(err.Error(), "/r/.x.tmp-1") {
			t.Errorf("classify(%v) = %v does not name the file", tc.err, err)
		}
	}
	if !isConnError(sftpclient.ErrSSHFxConnectionLost) || isConnError(&sftpclient.StatusError{Code: fxFailure}) {
		t.Error("isConnError misclassifies")
	}
}

func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"sftp://u@h:22/p", "sftp://[::1]/~/x", "sftp://u:pw@h/", "sftp://h:99999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		cfg, err := ParseURL(raw)
		if err != nil {
			return
		}
		if cfg.Host == "" || cfg.Port < 0 || cfg.Port > 65535 {
			t.Errorf("ParseURL(%q) = %+v", raw, cfg)
		}
		again, err := ParseURL(cfg.String())
		if err != nil || again.User != cfg.User || again.Host != cfg.Host || again.Port != cfg.Port || again.Path != cfg.Path {
			t.Errorf("ParseURL(%q).String() = %q does not round-trip: %+v, %v", raw, cfg.String(), again, err)
		}
	})
}

// TestIdentity: the spellings of one destination (with or without the
// local user, the default port, an ssh_config alias for the host, the
// host's name in capitals) have one identity; another user, port, host or
// folder has another.
func TestIdentity(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	local := currentUser()
	cfgFile := writeSSHConfig(t, "Host vault\n    HostName backup.example.org\n    User "+local+"\n\nHost other\n    HostName backup.example.org\n    User someone-else\n")
	id := func(raw string) string {
		t.Helper()
		cfg, err := ParseURL(raw)
		if err != nil {
			t.Fatal(err)
		}
		cfg.SSHConfig = cfgFile
		s, err := Identity(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	want := id("sftp://" + local + "@backup.example.org:22/srv/vms")
	for _, same := range []string{"sftp://backup.example.org/srv/vms", "sftp://vault/srv/vms", "sftp://BACKUP.example.org:22/srv/vms"} {
		if got := id(same); got != want {
			t.Errorf("Identity(%s) = %s, want %s", same, got, want)
		}
	}
	for _, other := range []string{"sftp://other/srv/vms", "sftp://backup.example.org:2222/srv/vms", "sftp://backup2.example.org/srv/vms",
		"sftp://backup.example.org/srv/vms2"} {
		if got := id(other); got == want {
			t.Errorf("Identity(%s) = %s, the same as another destination's", other, got)
		}
	}
}
