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
)

// TestSSHKeyRecipient ships to an OpenSSH public key and restores with its
// private key, as a destination host with only an SSH key would.
func TestSSHKeyRecipient(t *testing.T) {
	dir := t.TempDir()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sshPub, _ := ssh.NewPublicKey(pub)
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "id_ed25519")
	os.WriteFile(keyFile, pem.EncodeToMemory(block), 0o600)
	authorized := filepath.Join(dir, "authorized_keys")
	os.WriteFile(authorized, append([]byte("# the destination host\n"), ssh.MarshalAuthorizedKey(sshPub)...), 0o644)

	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 300<<10, region{0, 300 << 10, "random"})
	dest := filepath.Join(dir, "dest")
	for i, args := range [][]string{
		{"-r", strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub)))},
		{"-R", authorized},
	} {
		id := strings.TrimSpace(mustRun(t, append([]string{"send", src, "--to", dest, "-q"}, args...)...).stdout)
		out := filepath.Join(dir, "out", string(rune('a'+i)))
		mustRun(t, "receive", dest, id, "--out", out, "-i", keyFile, "-q")
		sameFile(t, src, filepath.Join(out, "disk.img"))
	}
}

func marshalAuthorizedKey(k ssh.PublicKey) []byte { return ssh.MarshalAuthorizedKey(k) }
