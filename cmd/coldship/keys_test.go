package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/coldship/coldship/cipher"
)

// lastJSONError returns the "error" of the error object that ends stdout.
func lastJSONError(t *testing.T, stdout string) string {
	t.Helper()
	objs := jsonLines(t, stdout)
	last := objs[len(objs)-1]
	msg, _ := last["error"].(string)
	if last["type"] != "error" || msg == "" {
		t.Fatalf("last object %v, want an error object", last)
	}
	return msg
}

// TestRecipientErrorsShowNoSecret gives send a private key or a passphrase
// as a recipient: exit 2, and the message, on stderr and in the JSON error
// object, says what was given without showing it.
func TestRecipientErrorsShowNoSecret(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 64<<10, region{0, 64 << 10, "random"})
	dest := filepath.Join(dir, "dest")
	_, rcpt := keypair(t)
	ageKey, _, _ := cipher.GenerateIdentity()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	sshKey := string(pem.EncodeToMemory(block))
	sshBody := strings.Split(sshKey, "\n")[1]

	for name, tc := range map[string]struct {
		args []string
		env  string // COLDSHIP_RECIPIENT
		leak string // what must not appear
		want string
	}{
		"age key": {[]string{"-r", ageKey}, "", ageKey[16:],
			"-r: this is an age private key (AGE-SECRET-KEY-1...), not a recipient: give its public key (age1...)"},
		"second of two": {[]string{"-r", rcpt, "-r", ageKey}, "", ageKey[16:], "-r number 2 of 2: this is an age private key"},
		"ssh key":       {[]string{"-r", sshKey}, "", sshBody, "-r: this is a private key (-----BEGIN ...), not a recipient"},
		"passphrase":    {[]string{"-r", "correct horse battery staple"}, "", "battery staple", "-r: unknown recipient type"},
		"environment":   {nil, ageKey, ageKey[16:], "-r: this is an age private key"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(envName("recipient"), tc.env)
			r := run(t, append([]string{"send", src, "--to", dest, "--json"}, tc.args...)...)
			if r.code != exitUsage {
				t.Fatalf("exit %d, want %d; stderr %s", r.code, exitUsage, r.stderr)
			}
			if !strings.Contains(r.stderr, tc.want) || !strings.Contains(lastJSONError(t, r.stdout), tc.want) {
				t.Errorf("error does not say %q:\nstderr: %s\nstdout: %s", tc.want, r.stderr, r.stdout)
			}
			if strings.Contains(strings.ToUpper(r.stderr+r.stdout), strings.ToUpper(tc.leak)) {
				t.Errorf("the secret appears in the output:\nstderr: %s\nstdout: %s", r.stderr, r.stdout)
			}
		})
	}
}

// TestAuthorizedKeysAsRecipients ships to an authorized_keys file made of
// ssh-keygen keys, with options and comments, and restores with each
// private key; a key age cannot encrypt to is a usage error naming the
// file, the line and the key type.
func TestAuthorizedKeysAsRecipients(t *testing.T) {
	dir := t.TempDir()
	edKey, edPub := sshKeygen(t, "ed25519", "")
	rsaKey, rsaPub := sshKeygen(t, "rsa", "")
	_, ecdsaPub := sshKeygen(t, "ecdsa", "")
	authorized := filepath.Join(dir, "authorized_keys")
	os.WriteFile(authorized, []byte("# site B\n"+
		`from="10.0.0.1",no-pty `+edPub+" root@site-b\n"+
		`command="coldship receive --live",restrict `+rsaPub+"\n"), 0o600)

	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 128<<10, region{0, 128 << 10, "random"})
	dest := filepath.Join(dir, "dest")
	id := strings.TrimSpace(mustRun(t, "send", src, "--to", dest, "-q", "-R", authorized).stdout)
	for _, key := range []string{edKey, rsaKey} {
		out := filepath.Join(dir, "out-"+filepath.Base(key))
		mustRun(t, "receive", dest, id, "--out", out, "-i", key, "-q")
		sameFile(t, src, filepath.Join(out, "disk.img"))
	}

	os.WriteFile(authorized, []byte(edPub+"\n"+`no-pty `+ecdsaPub+"\n"), 0o600)
	r := run(t, "send", src, "--to", dest, "-q", "-R", authorized)
	want := "recipients file " + authorized + " line 2: ecdsa-sha2-nistp256 keys cannot be recipients (age encrypts to ssh-ed25519 and ssh-rsa keys only)"
	if r.code != exitUsage || !strings.Contains(r.stderr, want) {
		t.Errorf("an ecdsa key: exit %d, stderr %s; want exit %d and %q", r.code, r.stderr, exitUsage, want)
	}
}

// TestIdentityFileExitStatus: an -i file that cannot be used exits 2, as
// the README says, whatever the reason and the command: the command line
// cannot work unattended.
func TestIdentityFileExitStatus(t *testing.T) {
	dest, key, id, _ := sendSample(t)
	dir := t.TempDir()
	encrypted, _ := sshKeygen(t, "ed25519", "open sesame")
	malformed := filepath.Join(dir, "malformed.key")
	os.WriteFile(malformed, []byte("# my key\nAGE-SECRET-KEY-1NOTAKEY\n"), 0o600)
	secret, _ := os.ReadFile(key)
	unknown := filepath.Join(dir, "unknown.key")
	os.WriteFile(unknown, []byte("\nhunter2\n"), 0o600)
	_, pub := sshKeygen(t, "ed25519", "")
	pubFile := filepath.Join(dir, "id_ed25519.pub")
	os.WriteFile(pubFile, []byte(pub+"\n"), 0o644)

	for name, tc := range map[string]struct {
		file, want string
	}{
		"encrypted SSH key": {encrypted, "SSH identity file " + encrypted + " is passphrase-protected and there is no terminal"},
		"malformed":         {malformed, "identity file " + malformed + " line 2: malformed secret key"},
		"unknown":           {unknown, "identity file " + unknown + " line 2: unknown identity type"},
		"public key":        {pubFile, "identity file " + pubFile + " line 1: this is an SSH public key, not an identity: give its private key"},
		"a directory":       {dir, "identity file " + dir},
	} {
		for _, args := range [][]string{
			{"verify", dest, id},
			{"receive", dest, id, "--out", filepath.Join(dir, "out")},
		} {
			r := run(t, append(args, "-i", tc.file, "--json")...)
			if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("%s: coldship %s: exit %d, stderr %s; want exit %d and %q", name, args[0], r.code, r.stderr, exitUsage, tc.want)
			}
			if msg := lastJSONError(t, r.stdout); !strings.Contains(msg, tc.want) || strings.Contains(msg, "hunter2") ||
				strings.Contains(r.stderr, "hunter2") || strings.Contains(r.stderr, string(secret[20:40])) {
				t.Errorf("%s: JSON error %q", name, msg)
			}
		}
	}
}

// TestWrongPassphraseSaysSo: a wrong passphrase exits 4 naming the key
// object and saying "wrong passphrase", not only that no identity matches.
func TestWrongPassphraseSaysSo(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 64<<10, region{0, 64 << 10, "random"})
	dest := filepath.Join(dir, "dest")
	right, wrong := filepath.Join(dir, "right"), filepath.Join(dir, "wrong")
	os.WriteFile(right, []byte("correct horse battery staple\n"), 0o600)
	os.WriteFile(wrong, []byte("wrong horse\n"), 0o600)
	id := strings.TrimSpace(mustRun(t, "send", src, "--to", dest, "--passphrase-file", right, "-q").stdout)

	r := run(t, "receive", dest, id, "--out", filepath.Join(dir, "out"), "--passphrase-file", wrong)
	want := filepath.Join(id, "keys", "0000") + ": unwrap key: no identity matches: wrong passphrase"
	if r.code != exitAuth || !strings.Contains(r.stderr, want) {
		t.Errorf("exit %d, stderr %s; want exit %d and %q", r.code, r.stderr, exitAuth, want)
	}
	if strings.Contains(r.stderr, "horse") {
		t.Errorf("a passphrase appears in the error: %s", r.stderr)
	}
}

// TestHooksDoNotSeeThePassphrase runs the sysadmin's check: a hook that
// greps its environment for PASS finds nothing of COLDSHIP_PASSPHRASE, at
// send and at receive, from --hook and from --hooks-dir.
func TestHooksDoNotSeeThePassphrase(t *testing.T) {
	t.Setenv(passphraseEnv, "correct horse battery staple")
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 64<<10, region{0, 64 << 10, "random"})
	dest := filepath.Join(dir, "dest")
	hooksDir := filepath.Join(dir, "hooks")
	os.MkdirAll(hooksDir, 0o755)
	os.WriteFile(filepath.Join(hooksDir, "post-receive"), []byte("#!/bin/sh\nenv | grep PASS >&2\necho dir hook ran >&2\n"), 0o755)
	show := func(phase string) []string {
		return []string{"--hook", phase + "=env | grep PASS >&2; echo " + phase + " ran >&2"}
	}

	r := mustRun(t, append(append([]string{"send", src, "--to", dest, "-q"}, show("pre-send")...), show("post-send")...)...)
	id := strings.TrimSpace(r.stdout)
	stderr := r.stderr
	r = mustRun(t, append([]string{"receive", dest, id, "--out", filepath.Join(dir, "out"), "--hooks-dir", hooksDir}, show("pre-receive")...)...)
	stderr += r.stderr
	for _, ran := range []string{"pre-send ran", "post-send ran", "pre-receive ran", "dir hook ran"} {
		if !strings.Contains(stderr, ran) {
			t.Errorf("%q missing: the hook did not run\n%s", ran, stderr)
		}
	}
	if strings.Contains(stderr, "COLDSHIP_PASSPHRASE") || strings.Contains(stderr, "horse") {
		t.Errorf("a hook saw the passphrase:\n%s", stderr)
	}
}

// TestSecretFileReadableByAllWarns: a secret file that every user of the
// machine can read (an identity written with `coldship keygen > FILE`
// under umask 022, a passphrase file copied without care) is used, as age
// does, but with a warning naming it, even with -q, that a cron mail or a
// journal shows.
func TestSecretFileReadableByAllWarns(t *testing.T) {
	dest, key, id, _ := sendSample(t)
	dir := t.TempDir()
	pass := filepath.Join(dir, "pass")
	os.WriteFile(pass, []byte("correct horse\n"), 0o600)
	open := filepath.Join(dir, "open.key")
	b, _ := os.ReadFile(key)
	os.WriteFile(open, b, 0o644)
	os.Chmod(open, 0o644) // whatever the umask
	openPass := filepath.Join(dir, "open.pass")
	os.WriteFile(openPass, []byte("correct horse\n"), 0o604)
	os.Chmod(openPass, 0o604)
	for _, tc := range []struct {
		args []string
		warn string // "" for none
	}{
		{[]string{"verify", dest, id, "-i", key, "-q"}, ""},
		{[]string{"verify", dest, id, "-i", open, "-q"}, "identity file " + open + " can be read by every user of this machine (mode 0644): chmod 600 " + open},
		{[]string{"show", dest, id, "-i", open, "--json"}, "identity file " + open + " can be read by every user"},
		{[]string{"verify", dest, id, "-i", key, "--passphrase-file", openPass, "-q"}, "passphrase file " + openPass + " can be read by every user of this machine (mode 0604)"},
		{[]string{"verify", dest, id, "-i", key, "--passphrase-file", pass, "-q"}, ""},
	} {
		r := mustRun(t, tc.args...)
		if tc.warn == "" && strings.Contains(r.stderr, "every user") || tc.warn != "" && !strings.Contains(r.stderr, "coldship: warning: "+tc.warn) {
			t.Errorf("coldship %s: stderr %q; want warning %q", strings.Join(tc.args, " "), r.stderr, tc.warn)
		}
	}
}
