package cipher

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// maxAllowedSigners bounds an allowed signers file (thousands of keys).
const maxAllowedSigners = 1 << 20

// AllowedSigners is an OpenSSH allowed_signers file (ssh-keygen(1),
// ALLOWED SIGNERS; the file git uses for SSH signatures): the keys whose
// signatures a destination trusts, each line
//
//	principals [options] keytype base64 [comment]
//
// principals is a comma-separated pattern list (`*` and `?` wildcards, `!`
// negation) or a double-quoted string; options are comma-separated:
// cert-authority, namespaces="list", valid-after="time",
// valid-before="time" (YYYYMMDD[HHMM[SS]], local time unless suffixed Z or
// UTC). Blank lines and lines starting with '#' are comments.
//
// It is parsed strictly: any line OpenSSH would not accept, and any option
// it does not know, is an error naming the line.
type AllowedSigners struct {
	name    string
	entries []allowedSigner
}

type allowedSigner struct {
	line          int
	principals    string // pattern list, as written (unquoted)
	ca            bool
	hasNamespaces bool
	namespaces    string // pattern list
	validAfter    int64  // Unix seconds; 0: none
	validBefore   int64
	key           ssh.PublicKey
}

// SignerInfo says who made a signature that verified.
type SignerInfo struct {
	// Principals are the principals of the line that vouched for the key,
	// as written there (negated patterns left out), or, for a certificate,
	// the certificate's principals that the line allows.
	Principals []string
	Key        ssh.PublicKey // the key that signed (a certificate for a cert-authority line)
	Line       int           // the line of the allowed signers file
}

// Principal returns the principals joined by commas, as OpenSSH prints them.
func (s *SignerInfo) Principal() string { return strings.Join(s.Principals, ",") }

// Fingerprint returns the signing key's SHA256 fingerprint.
func (s *SignerInfo) Fingerprint() string { return ssh.FingerprintSHA256(s.Key) }

// ReadAllowedSigners reads and parses an allowed signers file.
func ReadAllowedSigners(name string) (*AllowedSigners, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("read allowed signers file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxAllowedSigners+1))
	if err != nil {
		return nil, fmt.Errorf("read allowed signers file %s: %w", name, err)
	}
	return ParseAllowedSigners(name, b)
}

// ParseAllowedSigners parses the content of an allowed signers file; name
// is for messages. Times without a zone are in the local time zone.
func ParseAllowedSigners(name string, data []byte) (*AllowedSigners, error) {
	return parseAllowedSigners(name, data, time.Local)
}

func parseAllowedSigners(name string, data []byte, loc *time.Location) (*AllowedSigners, error) {
	if len(data) > maxAllowedSigners {
		return nil, fmt.Errorf("allowed signers file %s: larger than %d bytes", name, maxAllowedSigners)
	}
	a := &AllowedSigners{name: name}
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.Trim(line, " \t\r")
		if line == "" || line[0] == '#' {
			continue
		}
		e, err := parseAllowedSigner(line, loc)
		if err != nil {
			return nil, fmt.Errorf("allowed signers file %s line %d: %v", name, n+1, err)
		}
		e.line = n + 1
		a.entries = append(a.entries, e)
	}
	if len(a.entries) == 0 {
		return nil, fmt.Errorf("allowed signers file %s: no signers", name)
	}
	return a, nil
}

// parseAllowedSigner parses one line that is not blank or a comment.
func parseAllowedSigner(line string, loc *time.Location) (allowedSigner, error) {
	var e allowedSigner
	principals, rest, err := cutPrincipals(line)
	if err != nil {
		return e, err
	}
	e.principals = principals
	if rest == "" {
		return e, errors.New("missing key")
	}
	if first, _, _ := strings.Cut(strings.ReplaceAll(rest, "\t", " "), " "); !isKeyType(first) {
		var opts string
		if opts, rest, err = cutOptions(rest); err != nil {
			return e, err
		}
		if err := e.parseOptions(opts, loc); err != nil {
			return e, err
		}
		if rest == "" {
			return e, errors.New("missing key")
		}
	}
	e.key, err = parseSignerKey(rest)
	return e, err
}

// cutPrincipals splits off the principals field: a double-quoted string,
// or everything up to the first space or tab.
func cutPrincipals(line string) (principals, rest string, err error) {
	if line[0] == '"' {
		end := strings.IndexByte(line[1:], '"')
		if end < 0 {
			return "", "", errors.New("principals: missing end quote")
		}
		principals, rest = line[1:1+end], line[2+end:]
		if rest != "" && rest[0] != ' ' && rest[0] != '\t' {
			return "", "", errors.New("principals: no space after the closing quote")
		}
	} else {
		i := strings.IndexAny(line, " \t")
		if i < 0 {
			return "", "", errors.New("missing key")
		}
		principals, rest = line[:i], line[i:]
		if strings.IndexByte(principals, '"') >= 0 {
			return "", "", errors.New("principals: a quote inside an unquoted field")
		}
	}
	if err := checkPatternList("principals", principals); err != nil {
		return "", "", err
	}
	return principals, strings.TrimLeft(rest, " \t"), nil
}

// cutOptions splits off the options field: up to the first space or tab
// outside double quotes.
func cutOptions(s string) (opts, rest string, err error) {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && quoted && i+1 < len(s) && s[i+1] == '"':
			i++
		case c == '"':
			quoted = !quoted
		case (c == ' ' || c == '\t') && !quoted:
			return s[:i], strings.TrimLeft(s[i:], " \t"), nil
		}
	}
	if quoted {
		return "", "", errors.New("options: missing end quote")
	}
	return s, "", nil
}

// parseOptions parses cert-authority, namespaces=, valid-after= and
// valid-before= (case-insensitive names, quoted values), refusing anything
// else and any repeat.
func (e *allowedSigner) parseOptions(opts string, loc *time.Location) error {
	var after, before bool
	for opts != "" {
		name, _, _ := strings.Cut(opts, "=")
		name, _, _ = strings.Cut(name, ",")
		var err error
		var value string
		switch lower := strings.ToLower(name); {
		case lower == "cert-authority" && (len(opts) == len(name) || opts[len(name)] == ','):
			if e.ca {
				return errors.New(`repeated option "cert-authority"`)
			}
			e.ca, opts = true, opts[len(name):]
		case (lower == "namespaces" || lower == "valid-after" || lower == "valid-before") &&
			len(opts) > len(name) && opts[len(name)] == '=':
			if value, opts, err = dequote(opts[len(name)+1:]); err != nil {
				return fmt.Errorf("option %s: %v", lower, err)
			}
			if err := e.setOption(lower, value, &after, &before, loc); err != nil {
				return err
			}
		case lower == "namespaces" || lower == "valid-after" || lower == "valid-before":
			return fmt.Errorf("option %s needs a value (%s=\"...\")", lower, lower)
		default:
			return fmt.Errorf("unknown option %q", printable(name))
		}
		switch {
		case opts == "":
		case opts[0] != ',' || len(opts) == 1:
			return errors.New("options: want a comma between options and none at the end")
		default:
			opts = opts[1:]
		}
	}
	if e.validAfter != 0 && e.validBefore != 0 && e.validBefore <= e.validAfter {
		return errors.New("valid-before is not after valid-after")
	}
	return nil
}

func (e *allowedSigner) setOption(name, value string, after, before *bool, loc *time.Location) error {
	repeated := fmt.Errorf("repeated option %q", name)
	switch name {
	case "namespaces":
		if e.hasNamespaces {
			return repeated
		}
		if err := checkPatternList("namespaces", value); err != nil {
			return err
		}
		e.hasNamespaces, e.namespaces = true, value
		return nil
	case "valid-after":
		if *after {
			return repeated
		}
		*after = true
		return parseSignerTime(name, value, loc, &e.validAfter)
	default:
		if *before {
			return repeated
		}
		*before = true
		return parseSignerTime(name, value, loc, &e.validBefore)
	}
}

// dequote reads a double-quoted value at the start of s (\" stands for a
// quote) and returns it and what follows.
func dequote(s string) (value, rest string, err error) {
	if s == "" || s[0] != '"' {
		return "", "", errors.New("value must be in double quotes")
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s) && s[i+1] == '"':
			b.WriteByte('"')
			i++
		case s[i] == '"':
			return b.String(), s[i+1:], nil
		default:
			b.WriteByte(s[i])
		}
	}
	return "", "", errors.New("missing end quote")
}

// parseSignerTime parses YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS,
// suffixed Z or UTC for UTC, in loc otherwise, as OpenSSH does.
func parseSignerTime(name, s string, loc *time.Location, out *int64) error {
	v := s
	if u := strings.ToUpper(v); strings.HasSuffix(u, "UTC") && len(v) > 3 {
		v, loc = v[:len(v)-3], time.UTC
	} else if strings.HasSuffix(u, "Z") && len(v) > 1 {
		v, loc = v[:len(v)-1], time.UTC
	}
	layouts := map[int]string{8: "20060102", 12: "200601021504", 14: "20060102150405"}
	layout, ok := layouts[len(v)]
	if ok && strings.Trim(v, "0123456789") != "" {
		ok = false
	}
	var t time.Time
	var err error
	if ok {
		t, err = time.ParseInLocation(layout, v, loc)
	}
	if !ok || err != nil || t.Unix() <= 0 {
		return fmt.Errorf("option %s: invalid time %q (want YYYYMMDD[HHMM[SS]][Z])", name, printable(s))
	}
	*out = t.Unix()
	return nil
}

// checkPatternList refuses empty lists, empty elements and control
// characters.
func checkPatternList(what, list string) error {
	for _, p := range strings.Split(list, ",") {
		if strings.TrimPrefix(p, "!") == "" {
			return fmt.Errorf("%s: empty pattern", what)
		}
		for _, c := range []byte(p) {
			if c < 0x20 || c == 0x7f {
				return fmt.Errorf("%s: control character", what)
			}
		}
	}
	return nil
}

// keyAlgoDSA is refused: DSA is only defined at insecure sizes.
const keyAlgoDSA = "ssh-dss"

// isKeyType reports whether s names an SSH public key or certificate type.
func isKeyType(s string) bool {
	switch strings.TrimSuffix(s, "-cert-v01@openssh.com") {
	case ssh.KeyAlgoED25519, ssh.KeyAlgoRSA, keyAlgoDSA, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384,
		ssh.KeyAlgoECDSA521, "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com":
		return true
	}
	return strings.HasSuffix(s, "-cert-v01@openssh.com")
}

// parseSignerKey parses "keytype base64 [comment]".
func parseSignerKey(s string) (ssh.PublicKey, error) {
	f := strings.Fields(s)
	if len(f) < 2 {
		return nil, errors.New("missing key")
	}
	if !isKeyType(f[0]) {
		return nil, fmt.Errorf("unknown key type %q", printable(f[0]))
	}
	if strings.TrimSuffix(f[0], "-cert-v01@openssh.com") == keyAlgoDSA {
		return nil, errors.New("DSA keys are not accepted")
	}
	if strings.HasSuffix(f[0], "-cert-v01@openssh.com") {
		return nil, errors.New("a certificate cannot be an allowed signer: list its CA's key with the cert-authority option")
	}
	blob, err := base64.StdEncoding.DecodeString(f[1])
	if err != nil {
		return nil, errors.New("key: invalid base64")
	}
	key, err := ssh.ParsePublicKey(blob)
	if err != nil {
		return nil, fmt.Errorf("key: %v", err)
	}
	if key.Type() != f[0] {
		return nil, fmt.Errorf("key: type %s does not match its key (%s)", f[0], key.Type())
	}
	return key, nil
}

// Verify checks that armored is an SSH signature of message, in namespace
// coldship, by a key that a line of the file trusts at time now (for a
// certificate: signed by a cert-authority line's key, a user certificate
// valid at now with a principal the line allows). Errors wrap
// ErrUnsigned (armored is empty), ErrBadSignature (malformed, another
// namespace, or not a signature of message), or ErrUntrustedSigner (a
// valid signature by a key the file does not list, or lists only for
// other namespaces or times), and say which key and why.
func (a *AllowedSigners) Verify(message, armored []byte, now time.Time) (*SignerInfo, error) {
	sig, err := parseSignature(message, armored)
	if err != nil {
		return nil, err
	}
	if a == nil {
		return nil, fmt.Errorf("%w: no allowed signers", ErrUntrustedSigner)
	}
	var refusals []string
	for _, e := range a.entries {
		principals, refusal := e.vouch(sig.PublicKey, now)
		if refusal != "" {
			refusals = append(refusals, fmt.Sprintf("line %d %s", e.line, refusal))
			continue
		}
		if principals != nil {
			return &SignerInfo{Principals: principals, Key: sig.PublicKey, Line: e.line}, nil
		}
	}
	why := "is not listed"
	if len(refusals) > 0 {
		why = "is listed, but " + strings.Join(refusals, "; ")
	}
	return nil, fmt.Errorf("%w: %s key %s %s in allowed signers file %s", ErrUntrustedSigner,
		sig.PublicKey.Type(), ssh.FingerprintSHA256(sig.PublicKey), why, a.name)
}

// vouch returns the principals the line gives a signature by key at now;
// nil and no refusal if the line is not about key; a refusal if it is but
// does not allow it.
func (e *allowedSigner) vouch(key ssh.PublicKey, now time.Time) (principals []string, refusal string) {
	cert, isCert := key.(*ssh.Certificate)
	switch {
	case !e.ca && isCert:
		// As OpenSSH: a plain key's line vouches for that key, not for a
		// certificate of it (whose CA, principals and validity it does not
		// check).
		if !bytes.Equal(cert.Key.Marshal(), e.key.Marshal()) {
			return nil, ""
		}
		return nil, "lists the certificate's key, not the certificate: a signature by a certificate needs its CA's key on a cert-authority line"
	case !e.ca:
		if !bytes.Equal(key.Marshal(), e.key.Marshal()) {
			return nil, ""
		}
		for _, p := range strings.Split(e.principals, ",") {
			if !strings.HasPrefix(p, "!") {
				principals = append(principals, p)
			}
		}
		if principals == nil {
			return nil, "names no principal"
		}
	case !isCert || !bytes.Equal(cert.SignatureKey.Marshal(), e.key.Marshal()):
		return nil, ""
	default:
		var reason string
		if principals, reason = e.certPrincipals(cert, now); reason != "" {
			return nil, reason
		}
	}
	if e.hasNamespaces && matchPatternList(SignatureNamespace, e.namespaces) != 1 {
		return nil, fmt.Sprintf("allows it only for namespaces %q", e.namespaces)
	}
	if e.validAfter != 0 && now.Unix() < e.validAfter {
		return nil, "makes it valid only from " + time.Unix(e.validAfter, 0).UTC().Format(time.RFC3339)
	}
	if e.validBefore != 0 && now.Unix() > e.validBefore {
		return nil, "made it expire at " + time.Unix(e.validBefore, 0).UTC().Format(time.RFC3339)
	}
	return principals, ""
}

// certPrincipals checks a certificate signed by the line's CA key as
// OpenSSH does for signatures: a user certificate with principals, valid
// at now, with a valid CA signature; it returns those of its principals
// the line allows.
func (e *allowedSigner) certPrincipals(cert *ssh.Certificate, now time.Time) ([]string, string) {
	if cert.CertType != ssh.UserCert || len(cert.ValidPrincipals) == 0 {
		return nil, "(cert-authority) does not accept a host certificate or one without principals"
	}
	var principals []string
	for _, p := range cert.ValidPrincipals {
		if matchPatternList(p, e.principals) == 1 {
			principals = append(principals, p)
		}
	}
	if principals == nil {
		return nil, fmt.Sprintf("(cert-authority) allows none of the certificate's principals %q", cert.ValidPrincipals)
	}
	checker := ssh.CertChecker{Clock: func() time.Time { return now }}
	if err := checker.CheckCert(principals[0], cert); err != nil {
		return nil, fmt.Sprintf("(cert-authority) refuses the certificate: %v", err)
	}
	return principals, ""
}

// matchPatternList matches s against a comma-separated OpenSSH pattern
// list: 1 if a pattern matches and no negated one does, -1 if a negated one
// matches, 0 otherwise.
func matchPatternList(s, list string) int {
	got := 0
	for _, p := range strings.Split(list, ",") {
		neg := strings.HasPrefix(p, "!")
		if !matchPattern(s, strings.TrimPrefix(p, "!")) {
			continue
		}
		if neg {
			return -1
		}
		got = 1
	}
	return got
}

// matchPattern matches s against an OpenSSH pattern: '*' matches any run
// of bytes, '?' any one byte, everything else itself. It runs in time
// proportional to len(s)*len(p) at worst.
func matchPattern(s, p string) bool {
	si, pi := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		switch {
		case pi < len(p) && (p[pi] == '?' || p[pi] == s[si]):
			si++
			pi++
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}
