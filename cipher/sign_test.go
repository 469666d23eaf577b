package cipher

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hiddeco/sshsig"
	"golang.org/x/crypto/ssh"
)

// needTool returns the path of a command a test needs: missing, the test
// skips, or fails under CI=true where make test installs it.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed (make test installs it)", name)
		}
		t.Skipf("%s is not installed; run make test-deps", name)
	}
	return p
}

// signingKey is a test key: its signer, its OpenSSH private key file and
// its public key line.
type signingKey struct {
	signer ssh.Signer
	file   string
	pub    string // "ssh-ed25519 AAAA..."
}

func newSigningKey(t testing.TB, kind string) signingKey {
	t.Helper()
	var priv any
	var err error
	switch kind {
	case "ed25519":
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	case "ecdsa":
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "rsa":
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		t.Fatalf("unknown key kind %s", kind)
	}
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "test "+kind)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "id_"+kind)
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	pub := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	return signingKey{signer, file, pub}
}

func allowed(t testing.TB, content string) *AllowedSigners {
	t.Helper()
	a, err := parseAllowedSigners("allowed_signers", []byte(content), time.UTC)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestSignVerify(t *testing.T) {
	msg := []byte("# coldship-signed-v1\nsome statement\n")
	for _, kind := range []string{"ed25519", "ecdsa", "rsa"} {
		t.Run(kind, func(t *testing.T) {
			k := newSigningKey(t, kind)
			sig, err := Sign(k.signer, msg)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(sig, []byte("-----BEGIN SSH SIGNATURE-----\n")) {
				t.Fatalf("not armored: %q", sig[:40])
			}
			a := allowed(t, "# sites\nsite-a,backup@dr "+k.pub+"\n")
			info, err := a.Verify(msg, sig, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if info.Principal() != "site-a,backup@dr" || info.Line != 2 || info.Fingerprint() != ssh.FingerprintSHA256(k.signer.PublicKey()) {
				t.Fatalf("signer: %q line %d %s", info.Principal(), info.Line, info.Fingerprint())
			}
			var none *AllowedSigners
			if _, err := none.Verify(msg, sig, time.Now()); !errors.Is(err, ErrUntrustedSigner) {
				t.Fatalf("no allowed signers: %v", err)
			}
			if _, err := a.Verify(append(bytes.Clone(msg), 'x'), sig, time.Now()); !errors.Is(err, ErrBadSignature) {
				t.Fatalf("changed message: %v", err)
			}
		})
	}
}

func TestVerifyErrors(t *testing.T) {
	k, other := newSigningKey(t, "ed25519"), newSigningKey(t, "ed25519")
	msg := []byte("statement\n")
	sig, err := Sign(k.signer, msg)
	if err != nil {
		t.Fatal(err)
	}
	gitSig, err := sshsig.Sign(bytes.NewReader(msg), k.signer, sshsig.HashSHA512, "git")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(sig)
	withHeader := pem.EncodeToMemory(&pem.Block{Type: block.Type, Headers: map[string]string{"Proc-Type": "4"}, Bytes: block.Bytes})
	body := string(sig[len("-----BEGIN SSH SIGNATURE-----\n"):])
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	a := allowed(t, "site-a "+k.pub)
	for name, tc := range map[string]struct {
		allowed string
		sig     []byte
		want    error
	}{
		"empty":             {"", nil, ErrUnsigned},
		"white space":       {"", []byte("\n \n"), ErrUnsigned},
		"garbage":           {"", []byte("not a signature"), ErrBadSignature},
		"truncated":         {"", sig[:len(sig)/2], ErrBadSignature},
		"flipped signature": {"", flipSignature(t, sig), ErrBadSignature},
		"junk before":       {"", append([]byte("x\n"), sig...), ErrBadSignature},
		"junk after":        {"", append(bytes.Clone(sig), "x\n"...), ErrBadSignature},
		"two blocks":        {"", append(bytes.Clone(sig), sig...), ErrBadSignature},
		"PEM headers":       {"", withHeader, ErrBadSignature},
		"other PEM type":    {"", []byte("-----BEGIN PRIVATE KEY-----\n" + body[:len(body)-len("-----END SSH SIGNATURE-----\n")] + "-----END PRIVATE KEY-----\n"), ErrBadSignature},
		"namespace git":     {"", sshsig.Armor(gitSig), ErrBadSignature},
		"huge":              {"", append(bytes.Clone(sig), bytes.Repeat([]byte(" "), maxArmoredSignature)...), ErrBadSignature},
		"other key":         {"site-a " + other.pub, sig, ErrUntrustedSigner},
		"namespaces=git":    {`site-a namespaces="git" ` + k.pub, sig, ErrUntrustedSigner},
		"namespaces=!cold*": {`site-a namespaces="*,!cold*" ` + k.pub, sig, ErrUntrustedSigner},
		"expired":           {`site-a valid-before="20261122115959Z" ` + k.pub, sig, ErrUntrustedSigner},
		"not yet valid":     {`site-a valid-after="20261123" ` + k.pub, sig, ErrUntrustedSigner},
		"only negated":      {`!site-a ` + k.pub, sig, ErrUntrustedSigner},
		"key as CA":         {`site-a cert-authority ` + k.pub, sig, ErrUntrustedSigner},
		"valid window":      {`site-a valid-after="20261122",valid-before="20261122120000Z" ` + k.pub, sig, nil},
		"namespaces list":   {`site-a namespaces="git,cold?hip" ` + k.pub, sig, nil},
		"second line wins":  {`site-a namespaces="git" ` + k.pub + "\nsite-b " + k.pub, sig, nil},
	} {
		t.Run(name, func(t *testing.T) {
			as := a
			if tc.allowed != "" {
				as = allowed(t, tc.allowed)
			}
			_, err := as.Verify(msg, tc.sig, now)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Errorf("multi-line error: %q", err)
			}
		})
	}
}

// TestVerifyCertificate checks cert-authority lines with certificates made
// here, and that a CA line refuses what OpenSSH refuses.
func TestVerifyCertificate(t *testing.T) {
	ca, user := newSigningKey(t, "ed25519"), newSigningKey(t, "ecdsa")
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	msg := []byte("statement\n")
	cert := func(typ uint32, principals []string, after, before time.Time, crit map[string]string) []byte {
		c := &ssh.Certificate{
			Key: user.signer.PublicKey(), CertType: typ, KeyId: "test", ValidPrincipals: principals,
			ValidAfter: uint64(after.Unix()), ValidBefore: uint64(before.Unix()),
			Permissions: ssh.Permissions{CriticalOptions: crit},
		}
		if err := c.SignCert(rand.Reader, ca.signer); err != nil {
			t.Fatal(err)
		}
		cs, err := ssh.NewCertSigner(c, user.signer)
		if err != nil {
			t.Fatal(err)
		}
		sig, err := Sign(cs, msg)
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}
	hour := time.Hour
	a := allowed(t, `*@site-a,!eve@site-a cert-authority,namespaces="coldship" `+ca.pub)
	for name, tc := range map[string]struct {
		sig  []byte
		want error
	}{
		"user cert":           {cert(ssh.UserCert, []string{"vm@site-a", "x@other"}, now.Add(-hour), now.Add(hour), nil), nil},
		"host cert":           {cert(ssh.HostCert, []string{"vm@site-a"}, now.Add(-hour), now.Add(hour), nil), ErrUntrustedSigner},
		"no principals":       {cert(ssh.UserCert, nil, now.Add(-hour), now.Add(hour), nil), ErrUntrustedSigner},
		"principal not ok":    {cert(ssh.UserCert, []string{"vm@site-b"}, now.Add(-hour), now.Add(hour), nil), ErrUntrustedSigner},
		"negated principal":   {cert(ssh.UserCert, []string{"eve@site-a"}, now.Add(-hour), now.Add(hour), nil), ErrUntrustedSigner},
		"expired":             {cert(ssh.UserCert, []string{"vm@site-a"}, now.Add(-2*hour), now.Add(-hour), nil), ErrUntrustedSigner},
		"not yet valid":       {cert(ssh.UserCert, []string{"vm@site-a"}, now.Add(hour), now.Add(2*hour), nil), ErrUntrustedSigner},
		"critical option":     {cert(ssh.UserCert, []string{"vm@site-a"}, now.Add(-hour), now.Add(hour), map[string]string{"force-command": "x"}), ErrUntrustedSigner},
		"plain key of the CA": {mustSign(t, ca.signer, msg), ErrUntrustedSigner},
	} {
		t.Run(name, func(t *testing.T) {
			info, err := a.Verify(msg, tc.sig, now)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if err == nil && info.Principal() != "vm@site-a" {
				t.Fatalf("principals %q, want the certificate's that the line allows", info.Principals)
			}
		})
	}
	// As OpenSSH (sshkey_equal compares the key types): a line that lists
	// a plain key vouches for that key only, not for a certificate of it,
	// whose principals, validity and CA nobody checks.
	plain := allowed(t, "site-a "+user.pub)
	if _, err := plain.Verify(msg, cert(ssh.UserCert, []string{"x"}, now.Add(-hour), now.Add(hour), nil), now); !errors.Is(err, ErrUntrustedSigner) {
		t.Fatalf("a certificate of a key listed as a plain key: got %v, want %v", err, ErrUntrustedSigner)
	}
}

func writeAt(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// flipSignature changes one bit of the signature blob inside the armor.
func flipSignature(t *testing.T, armored []byte) []byte {
	t.Helper()
	block, _ := pem.Decode(armored)
	b := bytes.Clone(block.Bytes)
	b[len(b)-3] ^= 1 // in the signature, the last field
	return pem.EncodeToMemory(&pem.Block{Type: block.Type, Bytes: b})
}

func mustSign(t *testing.T, s ssh.Signer, msg []byte) []byte {
	t.Helper()
	sig, err := Sign(s, msg)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

// TestOpenSSHInterop signs with coldship and verifies with ssh-keygen, signs
// with ssh-keygen and verifies with coldship, for each key type, and checks
// that both accept and refuse the same allowed signers lines.
func TestOpenSSHInterop(t *testing.T) {
	keygen := needTool(t, "ssh-keygen")
	msg := []byte("# coldship-signed-v1\n0000000000000000000000000000000000000000000000000000000000000000  header\n")
	for _, kind := range []string{"ed25519", "ecdsa", "rsa"} {
		t.Run(kind, func(t *testing.T) {
			k, other := newSigningKey(t, kind), newSigningKey(t, "ed25519")
			dir := t.TempDir()
			msgFile := writeAt(t, filepath.Join(dir, "signed"), string(msg))
			ours := writeAt(t, filepath.Join(dir, "ours.sig"), string(mustSign(t, k.signer, msg)))
			theirs := filepath.Join(dir, "signed.sig")
			if out, err := exec.Command(keygen, "-Y", "sign", "-q", "-f", k.file, "-n", SignatureNamespace, msgFile).CombinedOutput(); err != nil {
				t.Fatalf("ssh-keygen -Y sign: %v\n%s", err, out)
			}
			gitSig := filepath.Join(dir, "git.sig")
			if out, err := exec.Command("sh", "-c", `"$0" -Y sign -q -f "$1" -n git < "$2" > "$3"`, keygen, k.file, msgFile, gitSig).CombinedOutput(); err != nil {
				t.Fatalf("ssh-keygen -Y sign -n git: %v\n%s", err, out)
			}
			for _, tc := range []struct {
				line string
				ok   bool
			}{
				{"site-a " + k.pub, true},
				{`site-a namespaces="coldship" ` + k.pub + " comment here", true},
				{`"site-a" NAMESPACES="git,coldship" ` + k.pub, true},
				{`site-?,*@dr valid-after="20000101",valid-before="29991231Z" ` + k.pub, true},
				{`site-a namespaces="git" ` + k.pub, false},
				{`site-a valid-before="20000101Z" ` + k.pub, false},
				{`site-a valid-after="29990101" ` + k.pub, false},
				{"site-a " + other.pub, false},
			} {
				file := writeAt(t, filepath.Join(dir, "allowed_signers"), tc.line+"\n")
				cmd := exec.Command(keygen, "-Y", "verify", "-f", file, "-I", "site-a", "-n", SignatureNamespace, "-s", ours)
				cmd.Stdin = bytes.NewReader(msg)
				out, err := cmd.CombinedOutput()
				if (err == nil) != tc.ok {
					t.Errorf("ssh-keygen -Y verify of coldship's signature with %q: %v (want ok=%v)\n%s", tc.line, err, tc.ok, out)
				}
				a, err := ReadAllowedSigners(file)
				if err != nil {
					t.Fatal(err)
				}
				sig, _ := os.ReadFile(theirs)
				if _, err := a.Verify(msg, sig, time.Now()); (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrUntrustedSigner)) {
					t.Errorf("coldship Verify of ssh-keygen's signature with %q: %v (want ok=%v)", tc.line, err, tc.ok)
				}
				sig, _ = os.ReadFile(gitSig)
				if _, err := a.Verify(msg, sig, time.Now()); !errors.Is(err, ErrBadSignature) {
					t.Errorf("a signature for namespace git passed for coldship: %v", err)
				}
			}
		})
	}
}

// TestOpenSSHCertificateInterop: a certificate made by ssh-keygen -s, a
// signature made with it by ssh-keygen -Y sign, verified by coldship
// against a cert-authority line.
func TestOpenSSHCertificateInterop(t *testing.T) {
	keygen := needTool(t, "ssh-keygen")
	ca, user := newSigningKey(t, "ed25519"), newSigningKey(t, "ed25519")
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca")
	os.Rename(ca.file, caFile)
	userFile := filepath.Join(dir, "user")
	os.Rename(user.file, userFile)
	writeAt(t, userFile+".pub", user.pub+"\n")
	if out, err := exec.Command(keygen, "-q", "-s", caFile, "-I", "vm01", "-n", "vm01@site-a", "-V", "-1h:+1h", userFile+".pub").CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -s: %v\n%s", err, out)
	}
	msg := []byte("statement\n")
	msgFile := writeAt(t, filepath.Join(dir, "signed"), string(msg))
	if out, err := exec.Command(keygen, "-Y", "sign", "-q", "-f", userFile+"-cert.pub", "-n", SignatureNamespace, msgFile).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -Y sign with a certificate: %v\n%s", err, out)
	}
	sig, err := os.ReadFile(msgFile + ".sig")
	if err != nil {
		t.Fatal(err)
	}
	info, err := allowed(t, "*@site-a cert-authority "+ca.pub).Verify(msg, sig, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if info.Principal() != "vm01@site-a" {
		t.Fatalf("principal %q", info.Principal())
	}
	if _, err := allowed(t, "*@site-b cert-authority "+ca.pub).Verify(msg, sig, time.Now()); !errors.Is(err, ErrUntrustedSigner) {
		t.Fatalf("a certificate without an allowed principal passed: %v", err)
	}
	if _, err := allowed(t, "*@site-a cert-authority "+ca.pub).Verify(msg, sig, time.Now().Add(2*time.Hour)); !errors.Is(err, ErrUntrustedSigner) {
		t.Fatalf("an expired certificate passed: %v", err)
	}
	// The certificate's key listed as a plain key: ssh-keygen refuses the
	// signature, and so does coldship.
	plainFile := writeAt(t, filepath.Join(dir, "allowed_plain"), "vm01@site-a "+user.pub+"\n")
	verify := exec.Command(keygen, "-Y", "verify", "-f", plainFile, "-I", "vm01@site-a", "-n", SignatureNamespace, "-s", msgFile+".sig")
	verify.Stdin = bytes.NewReader(msg)
	if out, err := verify.CombinedOutput(); err == nil {
		t.Fatalf("ssh-keygen -Y verify took a certificate for the plain key it certifies:\n%s", out)
	}
	if _, err := allowed(t, "vm01@site-a "+user.pub).Verify(msg, sig, time.Now()); !errors.Is(err, ErrUntrustedSigner) {
		t.Fatalf("a certificate of a key listed as a plain key passed: %v", err)
	}
}

func FuzzVerify(f *testing.F) {
	k := newSigningKey(f, "ed25519")
	msg := []byte("statement\n")
	sig, err := Sign(k.signer, msg)
	if err != nil {
		f.Fatal(err)
	}
	a := allowed(f, `site-a namespaces="coldship" `+k.pub)
	f.Add(msg, sig)
	f.Add(msg, []byte("-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n"))
	f.Add([]byte{}, []byte{})
	f.Fuzz(func(t *testing.T, msg, sig []byte) {
		info, err := a.Verify(msg, sig, time.Now())
		if err != nil {
			if !errors.Is(err, ErrUnsigned) && !errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrUntrustedSigner) {
				t.Fatalf("untyped error: %v", err)
			}
			return
		}
		// Whatever passes must be a real signature by the trusted key.
		s, err := parseSignature(msg, sig)
		if err != nil || !bytes.Equal(s.PublicKey.Marshal(), k.signer.PublicKey().Marshal()) || info.Principal() != "site-a" {
			t.Fatalf("accepted a signature not by the trusted key: %v", err)
		}
	})
}

// ignoresAlgorithm is an RSA signer such as an ssh-agent that does not
// know rsa-sha2-512: it signs with SHA-1 (ssh-rsa) whatever is asked.
type ignoresAlgorithm struct{ ssh.AlgorithmSigner }

func (s ignoresAlgorithm) SignWithAlgorithm(r io.Reader, data []byte, _ string) (*ssh.Signature, error) {
	return s.AlgorithmSigner.SignWithAlgorithm(r, data, ssh.KeyAlgoRSA)
}

// otherKey claims one key and signs with another (a confused agent or
// token).
type otherKey struct {
	ssh.Signer
	claimed ssh.PublicKey
}

func (s otherKey) PublicKey() ssh.PublicKey { return s.claimed }

// TestSignRefusesWhatDoesNotVerify: Sign checks the signature it made, so
// that send never reports a shipment signed with a signature every
// receiver refuses.
func TestSignRefusesWhatDoesNotVerify(t *testing.T) {
	msg := []byte("# coldship-signed-v1\n")
	rsaKey := newSigningKey(t, "rsa")
	a, b := newSigningKey(t, "ed25519"), newSigningKey(t, "ed25519")
	for name, s := range map[string]ssh.Signer{
		"SHA-1 RSA signature": ignoresAlgorithm{rsaKey.signer.(ssh.AlgorithmSigner)},
		"another key's":       otherKey{Signer: b.signer, claimed: a.signer.PublicKey()},
	} {
		t.Run(name, func(t *testing.T) {
			armored, err := Sign(s, msg)
			if err == nil {
				t.Fatalf("signed; the signature does not verify:\n%s", armored)
			}
			if !strings.Contains(err.Error(), ssh.FingerprintSHA256(s.PublicKey())) {
				t.Errorf("the error does not name the key: %v", err)
			}
		})
	}
}
