package cipher

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"

	"filippo.io/age"
	"filippo.io/age/armor"
	"golang.org/x/crypto/ssh"
)

func newKey(t testing.TB) *Key {
	t.Helper()
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestKeySealOpen(t *testing.T) {
	k := newKey(t)
	ctx := []byte("shipment/file 3/block 7")
	msg := bytes.Repeat([]byte("coldship "), 5000)
	rec, err := k.Seal(nil, ctx, msg)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(rec)) != SealedSize(int64(len(msg))) {
		t.Fatalf("record is %d bytes, SealedSize says %d", len(rec), SealedSize(int64(len(msg))))
	}
	got, err := k.Open(nil, ctx, rec)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("Open: %v", err)
	}

	for name, tc := range map[string]struct {
		key *Key
		ctx []byte
		rec []byte
	}{
		"flipped bit": {k, ctx, flip(rec, len(rec)/2)},
		"truncated":   {k, ctx, rec[:len(rec)-1]},
		"extended":    {k, ctx, append(bytes.Clone(rec), 0)},
		"context":     {k, []byte("shipment/file 3/block 8"), rec},
		"other key":   {newKey(t), ctx, rec},
		"empty":       {k, ctx, nil},
	} {
		if out, err := tc.key.Open(nil, tc.ctx, tc.rec); !errors.Is(err, ErrIntegrity) || out != nil {
			t.Errorf("%s: Open = %d bytes, %v; want ErrIntegrity", name, len(out), err)
		}
	}
}

func flip(b []byte, i int) []byte {
	b = bytes.Clone(b)
	b[i] ^= 1
	return b
}

func TestKeyStream(t *testing.T) {
	k := newKey(t)
	ctx := []byte("inventory")
	msg := bytes.Repeat([]byte("0123456789abcdef"), 3000)
	var buf bytes.Buffer
	w, err := k.NewWriter(ctx, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if int64(buf.Len()) != SealedSize(int64(len(msg))) {
		t.Fatalf("stream is %d bytes, SealedSize says %d", buf.Len(), SealedSize(int64(len(msg))))
	}
	r, err := k.NewReader(ctx, iotest.HalfReader(bytes.NewReader(buf.Bytes())))
	if err != nil {
		t.Fatal(err)
	}
	if err := iotest.TestReader(r, msg); err != nil {
		t.Fatal(err)
	}

	ct := buf.Bytes()
	for name, src := range map[string][]byte{
		"flipped":   flip(ct, len(ct)-5),
		"truncated": ct[:len(ct)-17],
		"extended":  append(bytes.Clone(ct), 1),
	} {
		r, err := k.NewReader(ctx, bytes.NewReader(src))
		if err != nil {
			t.Fatalf("%s: NewReader: %v", name, err)
		}
		_, err = io.ReadAll(r)
		if !errors.Is(err, ErrIntegrity) {
			t.Errorf("%s: read: %v, want ErrIntegrity", name, err)
		}
		if _, err2 := r.Read(make([]byte, 10)); err2 != err {
			t.Errorf("%s: error not sticky: %v then %v", name, err, err2)
		}
	}
	if _, err := k.NewReader([]byte("other"), bytes.NewReader(ct)); !errors.Is(err, ErrIntegrity) {
		t.Errorf("wrong context: NewReader: %v, want ErrIntegrity", err)
	}
	if _, err := k.NewReader(ctx, bytes.NewReader(ct[:20])); !errors.Is(err, ErrIntegrity) {
		t.Errorf("short header: NewReader: %v, want ErrIntegrity", err)
	}
	ioErr := errors.New("disk on fire")
	if _, err := k.NewReader(ctx, iotest.ErrReader(ioErr)); err != ioErr {
		t.Errorf("I/O error: NewReader: %v", err)
	}
}

func TestKeyNeverPrinted(t *testing.T) {
	k := newKey(t)
	secrets := []string{hex.EncodeToString(k.b[:]), string(k.b[:]), fmt.Sprint(k.b[:4]), fmt.Sprint(k.b[0])}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%q", "%d"} {
		for _, v := range []any{k, *k, []*Key{k}, struct{ K *Key }{k}} {
			out := fmt.Sprintf(verb, v)
			for _, s := range secrets[:2] {
				if strings.Contains(out, s) {
					t.Errorf("Sprintf(%q, %T) = %q shows the key", verb, v, out)
				}
			}
			if strings.Contains(out, secrets[2]) {
				t.Errorf("Sprintf(%q, %T) = %q shows key bytes", verb, v, out)
			}
		}
	}
}

// lowScrypt makes passphrase wrapping cheap in tests.
func lowScrypt(t *testing.T, r age.Recipient) age.Recipient {
	t.Helper()
	s, ok := r.(*age.ScryptRecipient)
	if !ok {
		t.Fatalf("passphrase recipient is %T", r)
	}
	s.SetWorkFactor(10)
	return s
}

type testIdentity struct {
	recipient string // as a user would pass it
	file      string // identity file
	ids       []age.Identity
}

func x25519Identity(t *testing.T) testIdentity {
	t.Helper()
	id, rec, err := GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(id, "AGE-SECRET-KEY-1") || !strings.HasPrefix(rec, "age1") {
		t.Fatalf("GenerateIdentity = %.20s..., %s", id, rec)
	}
	file := writeFile(t, "key.txt", "# created: today\n# public key: "+rec+"\n\n"+id+"\n")
	ids, err := ParseIdentityFile(file, nil)
	if err != nil {
		t.Fatal(err)
	}
	return testIdentity{rec, file, ids}
}

func sshIdentity(t *testing.T, kind string, passphrase []byte, askPass func(string) ([]byte, error)) testIdentity {
	t.Helper()
	var priv crypto.Signer
	switch kind {
	case "ed25519":
		_, priv, _ = ed25519.GenerateKey(rand.Reader)
	case "rsa":
		var err error
		if priv, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			t.Fatal(err)
		}
	}
	var block *pem.Block
	var err error
	if passphrase == nil {
		block, err = ssh.MarshalPrivateKey(priv, "test")
	} else {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(priv, "test", passphrase)
	}
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ssh.NewPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	file := writeFile(t, "id_"+kind, string(pem.EncodeToMemory(block)))
	ids, err := ParseIdentityFile(file, askPass)
	if err != nil {
		t.Fatal(err)
	}
	return testIdentity{string(ssh.MarshalAuthorizedKey(pub)), file, ids}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func parseRecipient(t *testing.T, s string) age.Recipient {
	t.Helper()
	r, err := ParseRecipient(s)
	if err != nil {
		t.Fatalf("ParseRecipient(%q): %v", s, err)
	}
	return r
}

func wrapUnwrap(t *testing.T, k *Key, rs []age.Recipient, ids ...age.Identity) {
	t.Helper()
	wrapped, err := k.Wrap(rs...)
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnwrapKey(wrapped, ids...)
	if err != nil {
		t.Fatalf("UnwrapKey: %v", err)
	}
	if got.b != k.b {
		t.Fatal("unwrapped a different key")
	}
}

func TestWrap(t *testing.T) {
	k := newKey(t)
	x := x25519Identity(t)
	ed := sshIdentity(t, "ed25519", nil, nil)
	rs := sshIdentity(t, "rsa", nil, nil)
	for name, id := range map[string]testIdentity{"x25519": x, "ssh-ed25519": ed, "ssh-rsa": rs} {
		t.Run(name, func(t *testing.T) {
			wrapUnwrap(t, k, []age.Recipient{parseRecipient(t, id.recipient)}, id.ids...)

			// Any other identity does not match.
			other := x25519Identity(t)
			wrapped, _ := k.Wrap(parseRecipient(t, id.recipient))
			if _, err := UnwrapKey(wrapped, other.ids...); !errors.Is(err, ErrNoIdentity) {
				t.Fatalf("wrong identity: %v, want ErrNoIdentity", err)
			}
		})
	}

	t.Run("multiple recipients", func(t *testing.T) {
		all := []age.Recipient{parseRecipient(t, x.recipient), parseRecipient(t, ed.recipient), parseRecipient(t, rs.recipient)}
		for _, id := range []testIdentity{x, ed, rs} {
			wrapUnwrap(t, k, all, id.ids...)
		}
		other := sshIdentity(t, "ed25519", nil, nil)
		wrapUnwrap(t, k, all, append(other.ids, rs.ids...)...)
	})

	t.Run("post-quantum", func(t *testing.T) {
		id, err := age.GenerateHybridIdentity()
		if err != nil {
			t.Fatal(err)
		}
		r := parseRecipient(t, id.Recipient().String())
		wrapUnwrap(t, k, []age.Recipient{r}, id)
		if _, err := k.Wrap(r, parseRecipient(t, x.recipient)); err == nil {
			t.Fatal("post-quantum and classic recipients mixed")
		}
	})

	t.Run("no identities", func(t *testing.T) {
		wrapped, _ := k.Wrap(parseRecipient(t, x.recipient))
		if _, err := UnwrapKey(wrapped); !errors.Is(err, ErrNoIdentity) {
			t.Fatalf("UnwrapKey without identities: %v", err)
		}
		if _, err := k.Wrap(); err == nil {
			t.Fatal("Wrap without recipients succeeded")
		}
	})

	t.Run("armored", func(t *testing.T) {
		wrapped, _ := k.Wrap(parseRecipient(t, x.recipient))
		var buf bytes.Buffer
		w := armor.NewWriter(&buf)
		w.Write(wrapped)
		w.Close()
		got, err := UnwrapKey(buf.Bytes(), x.ids...)
		if err != nil || got.b != k.b {
			t.Fatalf("armored: %v", err)
		}
	})
}

func TestPassphrase(t *testing.T) {
	k := newKey(t)
	r, err := PassphraseRecipient([]byte("correct horse battery staple"))
	if err != nil {
		t.Fatal(err)
	}
	lowScrypt(t, r)
	good, _ := PassphraseIdentity([]byte("correct horse battery staple"))
	bad, _ := PassphraseIdentity([]byte("correct horse battery stapler"))
	wrapUnwrap(t, k, []age.Recipient{r}, good)
	wrapUnwrap(t, k, []age.Recipient{r}, bad, good)

	wrapped, err := k.Wrap(r)
	if err != nil {
		t.Fatal(err)
	}
	_, err = UnwrapKey(wrapped, bad)
	if !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("wrong passphrase: %v, want ErrNoIdentity", err)
	}
	if strings.Contains(err.Error(), "stapler") {
		t.Fatalf("error shows the passphrase: %v", err)
	}
	x := x25519Identity(t)
	if _, err := UnwrapKey(wrapped, x.ids...); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("identity for a passphrase-wrapped key: %v, want ErrNoIdentity", err)
	}

	// A passphrase must be the only recipient.
	r2, _ := PassphraseRecipient([]byte("other"))
	for _, rs := range [][]age.Recipient{{r, parseRecipient(t, x.recipient)}, {r, lowScrypt(t, r2)}} {
		if err := CheckRecipients(rs); err == nil {
			t.Fatal("CheckRecipients accepted a passphrase with other recipients")
		}
		if _, err := k.Wrap(rs...); err == nil {
			t.Fatal("Wrap accepted a passphrase with other recipients")
		}
	}
	if _, err := PassphraseRecipient(nil); err == nil {
		t.Fatal("empty passphrase accepted")
	}
}

func TestEncryptedSSHKey(t *testing.T) {
	pass := []byte("open sesame")
	for _, kind := range []string{"ed25519", "rsa"} {
		t.Run(kind, func(t *testing.T) {
			asked := 0
			askPass := func(prompt string) ([]byte, error) {
				asked++
				if !strings.Contains(prompt, "id_"+kind) {
					t.Errorf("prompt %q does not name the key file", prompt)
				}
				return bytes.Clone(pass), nil
			}
			id := sshIdentity(t, kind, pass, askPass)

			// Without a terminal the error says what to do.
			_, err := ParseIdentityFile(id.file, nil)
			if err == nil || !strings.Contains(err.Error(), id.file) || !strings.Contains(err.Error(), "passphrase") {
				t.Fatalf("ParseIdentityFile without askPass: %v", err)
			}

			// The passphrase is asked only for a key wrapped to this SSH key,
			// and only once.
			k := newKey(t)
			other := x25519Identity(t)
			wrappedOther, _ := k.Wrap(parseRecipient(t, other.recipient))
			if _, err := UnwrapKey(wrappedOther, id.ids...); !errors.Is(err, ErrNoIdentity) || asked != 0 {
				t.Fatalf("non-matching key: %v, asked %d times", err, asked)
			}
			wrapUnwrap(t, k, []age.Recipient{parseRecipient(t, id.recipient)}, id.ids...)
			wrapUnwrap(t, k, []age.Recipient{parseRecipient(t, id.recipient)}, id.ids...)
			if asked != 1 {
				t.Fatalf("asked for the passphrase %d times, want 1", asked)
			}

			// Wrong passphrase: no identity matches.
			wrong, err := ParseIdentityFile(id.file, func(string) ([]byte, error) { return []byte("nope"), nil })
			if err != nil {
				t.Fatal(err)
			}
			wrapped, _ := k.Wrap(parseRecipient(t, id.recipient))
			if _, err := UnwrapKey(wrapped, wrong...); !errors.Is(err, ErrNoIdentity) || !strings.Contains(err.Error(), "wrong passphrase") {
				t.Fatalf("wrong passphrase: %v, want ErrNoIdentity", err)
			}
			// A failing prompt is reported as it is.
			errTTY := errors.New("no tty")
			failing, _ := ParseIdentityFile(id.file, func(string) ([]byte, error) { return nil, errTTY })
			if _, err := UnwrapKey(wrapped, failing...); !errors.Is(err, errTTY) ||
				errors.Is(err, ErrIntegrity) || errors.Is(err, ErrNoIdentity) {
				t.Fatalf("failing askPass: %v", err)
			}
		})
	}
}

func TestEncryptedPEMKeyNeedsPub(t *testing.T) {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	//lint:ignore SA1019 legacy encrypted PEM keys are what this tests.
	block, err := x509.EncryptPEMBlock(rand.Reader, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(priv), []byte("pw"), x509.PEMCipherAES256) //nolint:staticcheck
	if err != nil {
		t.Fatal(err)
	}
	file := writeFile(t, "id_rsa", string(pem.EncodeToMemory(block)))
	askPass := func(string) ([]byte, error) { return []byte("pw"), nil }
	if _, err := ParseIdentityFile(file, askPass); err == nil || !strings.Contains(err.Error(), file+".pub") {
		t.Fatalf("without .pub: %v", err)
	}
	pub, _ := ssh.NewPublicKey(&priv.PublicKey)
	if err := os.WriteFile(file+".pub", ssh.MarshalAuthorizedKey(pub), 0o644); err != nil {
		t.Fatal(err)
	}
	ids, err := ParseIdentityFile(file, askPass)
	if err != nil {
		t.Fatal(err)
	}
	wrapUnwrap(t, newKey(t), []age.Recipient{parseRecipient(t, string(ssh.MarshalAuthorizedKey(pub)))}, ids...)
}

func TestRecipientsFile(t *testing.T) {
	x, y := x25519Identity(t), x25519Identity(t)
	ed := sshIdentity(t, "ed25519", nil, nil)
	good := writeFile(t, "recipients", "# team\n"+x.recipient+"\r\n\n  # laptop\n"+strings.TrimSpace(ed.recipient)+" me@laptop\n"+y.recipient+"\n")
	rs, err := ParseRecipientsFile(good)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 3 {
		t.Fatalf("got %d recipients, want 3", len(rs))
	}
	k := newKey(t)
	wrapUnwrap(t, k, rs, ed.ids...)
	wrapUnwrap(t, k, rs, y.ids...)

	secret, _, _ := GenerateIdentity()
	for name, tc := range map[string]struct {
		content string
		want    []string
	}{
		"bad line":   {"# ok\n" + x.recipient + "\nage1notakey\n", []string{"line 3"}},
		"unknown":    {"\n\nhello world\n", []string{"line 3", "unknown recipient type"}},
		"secret key": {x.recipient + "\n" + secret + "\n", []string{"line 2", "private key"}},
		"empty":      {"# nothing\n\n", []string{"no recipients"}},
	} {
		file := writeFile(t, "recipients", tc.content)
		_, err := ParseRecipientsFile(file)
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		for _, want := range append(tc.want, file) {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: error %q does not mention %q", name, err, want)
			}
		}
		if strings.Contains(err.Error(), secret[16:]) {
			t.Errorf("%s: error shows a secret key", name)
		}
	}
	missing := filepath.Join(t.TempDir(), "nope")
	if _, err := ParseRecipientsFile(missing); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: %v", err)
	}
}

func TestParseIdentityFileErrors(t *testing.T) {
	secret, _, _ := GenerateIdentity()
	garbled := secret[:30] + "x" + secret[31:]
	for name, content := range map[string]string{
		"garbled":  "# mine\n" + garbled + "\n",
		"empty":    "# nothing\n",
		"pem":      "-----BEGIN OPENSSH PRIVATE KEY-----\nnot base64\n-----END OPENSSH PRIVATE KEY-----\n",
		"age file": "age-encryption.org/v1\n-> scrypt abc 18\n",
	} {
		file := writeFile(t, "identity", content)
		_, err := ParseIdentityFile(file, nil)
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		if !strings.Contains(err.Error(), file) {
			t.Errorf("%s: error %q does not name the file", name, err)
		}
		if strings.Contains(err.Error(), garbled[16:]) || strings.Contains(err.Error(), secret[16:]) {
			t.Errorf("%s: error shows the secret key", name)
		}
	}
	if _, err := ParseIdentityFile(filepath.Join(t.TempDir(), "nope"), nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestUnwrapMalformed(t *testing.T) {
	k := newKey(t)
	x := x25519Identity(t)
	wrapped, err := k.Wrap(parseRecipient(t, x.recipient))
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, b []byte) {
		t.Helper()
		key, err := UnwrapKey(b, x.ids...)
		if err == nil || key != nil {
			t.Fatalf("%s: UnwrapKey succeeded", what)
		}
		if !errors.Is(err, ErrIntegrity) && !errors.Is(err, ErrNoIdentity) {
			t.Fatalf("%s: %v, want ErrIntegrity or ErrNoIdentity", what, err)
		}
	}
	for n := range len(wrapped) {
		check(fmt.Sprintf("truncated to %d", n), wrapped[:n])
	}
	for i := range wrapped {
		check(fmt.Sprintf("byte %d flipped", i), flip(wrapped, i))
	}
	check("garbage", []byte("age-encryption.org/v1\n-> X25519 !!\n--- x\n"))
	check("extended", append(bytes.Clone(wrapped), 0))

	// The payload must be exactly a key.
	for _, n := range []int{0, 31, 33, 1000} {
		var buf bytes.Buffer
		w, _ := age.Encrypt(&buf, parseRecipient(t, x.recipient))
		w.Write(make([]byte, n))
		w.Close()
		if _, err := UnwrapKey(buf.Bytes(), x.ids...); !errors.Is(err, ErrIntegrity) {
			t.Fatalf("%d-byte payload: %v, want ErrIntegrity", n, err)
		}
	}
}

func TestParseRecipient(t *testing.T) {
	secret, rec, _ := GenerateIdentity()
	for _, s := range []string{rec, " " + rec + "\n"} {
		if _, err := ParseRecipient(s); err != nil {
			t.Errorf("ParseRecipient(%q): %v", s, err)
		}
	}
	for _, s := range []string{"", "age1", "ssh-ed25519 AAAA", "ssh-dss AAAAB3NzaC1kc3MAAACBAP", secret, strings.ToLower(secret)} {
		_, err := ParseRecipient(s)
		if err == nil {
			t.Errorf("ParseRecipient(%q) succeeded", s)
		} else if len(s) > 20 && strings.Contains(strings.ToUpper(err.Error()), strings.ToUpper(secret[20:])) {
			t.Errorf("ParseRecipient error shows a secret key: %v", err)
		}
	}
}

// FuzzUnwrapKey feeds arbitrary bytes to the wrapped key parser.
func FuzzUnwrapKey(f *testing.F) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		f.Fatal(err)
	}
	k, _ := NewKey()
	wrapped, _ := k.Wrap(id.Recipient())
	f.Add(wrapped)
	f.Add([]byte(armor.Header + "\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		key, err := UnwrapKey(b, id)
		if err == nil {
			if key == nil {
				t.Fatal("nil key without error")
			}
			return
		}
		if !errors.Is(err, ErrIntegrity) && !errors.Is(err, ErrNoIdentity) {
			t.Fatalf("unclassified error: %v", err)
		}
	})
}
