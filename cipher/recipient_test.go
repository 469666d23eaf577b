package cipher

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"golang.org/x/crypto/ssh"
)

// TestParseRecipientSecrets gives ParseRecipient secrets by mistake: the
// error says what was given, and never contains it.
func TestParseRecipientSecrets(t *testing.T) {
	x25519, _, _ := GenerateIdentity()
	pq, err := age.GenerateHybridIdentity()
	if err != nil {
		t.Fatal(err)
	}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(priv, "me@host")
	if err != nil {
		t.Fatal(err)
	}
	sshPEM := string(pem.EncodeToMemory(block))
	for name, tc := range map[string]struct {
		secret string
		want   string
	}{
		"age key":        {x25519, "age private key (AGE-SECRET-KEY-1...), not a recipient: give its public key (age1...)"},
		"age key lower":  {strings.ToLower(x25519), "age private key"},
		"pq key":         {pq.String(), "age private key"},
		"ssh key":        {sshPEM, "private key (-----BEGIN ...), not a recipient"},
		"passphrase":     {"correct horse battery staple", "unknown recipient type"},
		"ssh-passphrase": {"ssh-correct horse battery staple", "malformed or unsupported SSH public key"},
		"two lines":      {"correct horse\nbattery staple", "one line"},
	} {
		_, err := ParseRecipient(tc.secret)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q does not say %q", name, err, tc.want)
		}
		for _, part := range secretParts(tc.secret) {
			if strings.Contains(strings.ToUpper(err.Error()), strings.ToUpper(part)) {
				t.Errorf("%s: error %q shows %q of the secret", name, err, part)
			}
		}
	}
}

// secretParts are the pieces of s that an error must not show: its words
// past a well-known prefix, but not a PEM block's BEGIN and END lines.
func secretParts(s string) []string {
	var parts []string
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(line, "-----") {
			continue
		}
		for _, f := range strings.Fields(line) {
			f = strings.TrimPrefix(strings.TrimPrefix(strings.ToUpper(f), "AGE-SECRET-KEY-PQ-1"), "AGE-SECRET-KEY-1")
			if len(f) >= 6 {
				parts = append(parts, f)
			}
		}
	}
	return parts
}

// sshKeygenKey makes a key with ssh-keygen in dir and returns the path of
// its private key and its public key line.
func sshKeygenKey(t *testing.T, keygen, dir, kind string) (string, string) {
	t.Helper()
	file := filepath.Join(dir, "id_"+kind)
	args := []string{"-q", "-t", kind, "-N", "", "-C", kind + "@site-b", "-f", file}
	if kind == "rsa" {
		args = append(args, "-b", "2048")
	}
	if out, err := exec.Command(keygen, args...).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -t %s: %v\n%s", kind, err, out)
	}
	pub, err := os.ReadFile(file + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return file, strings.TrimSpace(string(pub))
}

// TestRecipientsFileAuthorizedKeys reads a typical authorized_keys, made
// by ssh-keygen: lines with options and comments are recipients, and a key
// age cannot encrypt to is refused by line and type, not skipped.
func TestRecipientsFileAuthorizedKeys(t *testing.T) {
	keygen := needTool(t, "ssh-keygen")
	dir := t.TempDir()
	edFile, edPub := sshKeygenKey(t, keygen, dir, "ed25519")
	rsaFile, rsaPub := sshKeygenKey(t, keygen, dir, "rsa")
	_, ecdsaPub := sshKeygenKey(t, keygen, dir, "ecdsa")

	good := writeFile(t, "authorized_keys", "# site B\n"+
		`from="10.0.0.1",no-pty,command="/usr/local/bin/coldship receive --live" `+edPub+"\n"+
		"\n"+
		`no-port-forwarding,restrict `+rsaPub+"\n")
	rs, err := ParseRecipientsFile(good)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 {
		t.Fatalf("got %d recipients, want 2", len(rs))
	}
	k := newKey(t)
	for _, file := range []string{edFile, rsaFile} {
		ids, err := ParseIdentityFile(file, nil)
		if err != nil {
			t.Fatal(err)
		}
		wrapUnwrap(t, k, rs, ids...)
	}

	// A certificate of the ed25519 key, signed by a CA made for the test.
	caFile, _ := sshKeygenKey(t, keygen, t.TempDir(), "ed25519")
	if out, err := exec.Command(keygen, "-q", "-s", caFile, "-I", "site-b", edFile+".pub").CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -s: %v\n%s", err, out)
	}
	cert, err := os.ReadFile(edFile + "-cert.pub")
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		content string
		want    string
	}{
		"ecdsa":        {edPub + "\n" + ecdsaPub + "\n", "line 2: ecdsa-sha2-nistp256 keys cannot be recipients (age encrypts to ssh-ed25519 and ssh-rsa keys only)"},
		"ecdsa option": {"# x\n" + `no-pty ` + ecdsaPub + "\n", "line 2: ecdsa-sha2-nistp256 keys cannot be recipients"},
		"certificate":  {string(cert), "line 1: ssh-ed25519-cert-v01@openssh.com is a certificate"},
		"sk key":       {skEd25519Line(t), "line 1: sk-ssh-ed25519@openssh.com keys cannot be recipients"},
		"truncated":    {edPub[:40] + "\n", "line 1: malformed or unsupported SSH public key"},
	} {
		file := writeFile(t, "authorized_keys", tc.content)
		_, err := ParseRecipientsFile(file)
		if err == nil || !strings.Contains(err.Error(), "recipients file "+file+" "+tc.want) {
			t.Errorf("%s: error %v, want %q", name, err, "recipients file "+file+" "+tc.want)
		}
	}
}

// skEd25519Line is the authorized_keys line of a security key (FIDO)
// ed25519 key, which ssh-keygen makes only with the token at hand.
func skEd25519Line(t *testing.T) string {
	t.Helper()
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	wire := ssh.Marshal(struct {
		Type string
		Key  []byte
		App  string
	}{ssh.KeyAlgoSKED25519, pub, "ssh:"})
	k, err := ssh.ParsePublicKey(wire)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) + " me@token\n"
}
