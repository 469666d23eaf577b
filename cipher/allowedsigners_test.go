package cipher

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseAllowedSigners(t *testing.T) {
	k := newSigningKey(t, "ed25519")
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		t.Skip("no time zone database")
	}
	good := map[string]struct {
		line       string
		principals string
		ca         bool
		namespaces string
		after      string // RFC 3339 UTC, "" none
		before     string
	}{
		"plain":            {"site-a " + k.pub, "site-a", false, "", "", ""},
		"comment":          {"site-a " + k.pub + " the source, 2026", "site-a", false, "", "", ""},
		"leading blanks":   {" \tsite-a\t " + k.pub + "\r", "site-a", false, "", "", ""},
		"patterns":         {"*@site-a,!eve@site-a,dr? " + k.pub, "*@site-a,!eve@site-a,dr?", false, "", "", ""},
		"quoted":           {`"site a,b" ` + k.pub, "site a,b", false, "", "", ""},
		"cert-authority":   {"*@a cert-authority " + k.pub, "*@a", true, "", "", ""},
		"upper case":       {`a CERT-AUTHORITY,Namespaces="coldship" ` + k.pub, "a", true, "coldship", "", ""},
		"namespaces":       {`a namespaces="coldship,git" ` + k.pub, "a", false, "coldship,git", "", ""},
		"escaped quote":    {`a namespaces="x\"y" ` + k.pub, "a", false, `x"y`, "", ""},
		"space in options": {`a namespaces="x y" ` + k.pub, "a", false, "x y", "", ""},
		"dates UTC":        {`a valid-after="20260101Z",valid-before="20270101120000UTC" ` + k.pub, "a", false, "", "2026-01-01T00:00:00Z", "2027-01-01T12:00:00Z"},
		"local time":       {`a valid-after="202601011200" ` + k.pub, "a", false, "", "2026-01-01T11:00:00Z", ""},
	}
	for name, tc := range good {
		t.Run(name, func(t *testing.T) {
			a, err := parseAllowedSigners("f", []byte("# comment\n\n"+tc.line+"\n"), paris)
			if err != nil {
				t.Fatal(err)
			}
			e := a.entries[0]
			if len(a.entries) != 1 || e.line != 3 || e.principals != tc.principals || e.ca != tc.ca ||
				e.namespaces != tc.namespaces || e.hasNamespaces != (tc.namespaces != "") || e.key.Type() != "ssh-ed25519" {
				t.Fatalf("parsed %+v", e)
			}
			for _, c := range []struct {
				got  int64
				want string
			}{{e.validAfter, tc.after}, {e.validBefore, tc.before}} {
				got := ""
				if c.got != 0 {
					got = time.Unix(c.got, 0).UTC().Format(time.RFC3339)
				}
				if got != c.want {
					t.Errorf("time %s, want %s", got, c.want)
				}
			}
		})
	}
	bad := map[string]string{
		"no key":            "site-a",
		"only options":      "site-a cert-authority",
		"empty principal":   `"" ` + k.pub,
		"empty pattern":     "a,,b " + k.pub,
		"unclosed quote":    `"site-a ` + k.pub,
		"quote inside":      `si"te-a ` + k.pub,
		"unknown option":    "a no-touch-required " + k.pub,
		"restrict":          "a restrict " + k.pub,
		"unquoted value":    "a namespaces=coldship " + k.pub,
		"no value":          "a namespaces " + k.pub,
		"bare name":         "a namespaces",
		"repeated":          `a namespaces="x",namespaces="y" ` + k.pub,
		"repeated ca":       `a cert-authority,cert-authority ` + k.pub,
		"trailing comma":    `a cert-authority, ` + k.pub,
		"no comma":          `a namespaces="x"cert-authority ` + k.pub,
		"bad date":          `a valid-after="2026-01-01" ` + k.pub,
		"short date":        `a valid-after="202601" ` + k.pub,
		"epoch":             `a valid-after="19700101Z" ` + k.pub,
		"reversed validity": `a valid-after="20270101",valid-before="20260101" ` + k.pub,
		"bad base64":        "a ssh-ed25519 !!!!",
		"wrong type":        "a ssh-rsa " + strings.Fields(k.pub)[1],
		"unknown type":      "a ssh-foo AAAA",
		"certificate":       "a ssh-ed25519-cert-v01@openssh.com AAAA",
		"DSA":               "a ssh-dss AAAAB3NzaC1kc3MAAACBAP",
		"control char":      "a\x01b " + k.pub,
	}
	for name, line := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := parseAllowedSigners("f", []byte("# ok\n"+line+"\n"), time.UTC)
			if err == nil || !strings.Contains(err.Error(), "allowed signers file f line 2: ") {
				t.Fatalf("got %v, want an error naming line 2", err)
			}
		})
	}
	for name, data := range map[string]string{
		"empty":         "",
		"only comments": "# nobody\n\n",
		"too large":     strings.Repeat("#", maxAllowedSigners+1),
	} {
		if _, err := parseAllowedSigners("f", []byte(data), time.UTC); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestReadAllowedSigners(t *testing.T) {
	k := newSigningKey(t, "ed25519")
	dir := t.TempDir()
	if _, err := ReadAllowedSigners(filepath.Join(dir, "missing")); !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("missing file: %v", err)
	}
	p := writeAt(t, filepath.Join(dir, "allowed"), "a "+k.pub+"\n")
	if _, err := ReadAllowedSigners(p); err != nil {
		t.Fatal(err)
	}
	big := writeAt(t, filepath.Join(dir, "big"), strings.Repeat("#\n", maxAllowedSigners))
	if _, err := ReadAllowedSigners(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("large file: %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func TestMatchPattern(t *testing.T) {
	for _, tc := range []struct {
		s, p string
		want bool
	}{
		{"site-a", "site-a", true},
		{"site-a", "site-b", false},
		{"site-a", "site-?", true},
		{"site-ab", "site-?", false},
		{"vm@site-a", "*@site-a", true},
		{"vm@site-a.example", "*@site-a", false},
		{"", "*", true},
		{"", "?", false},
		{"abc", "a*b*c", true},
		{"abcbc", "a*bc", true},
		{"ab", "a*b*c", false},
		{"a[b]", "a[b]", true},
		{strings.Repeat("a", 2000), strings.Repeat("*a", 1000) + "b", false},
	} {
		if got := matchPattern(tc.s, tc.p); got != tc.want {
			t.Errorf("matchPattern(%q, %q) = %v", tc.s, tc.p, got)
		}
	}
	for _, tc := range []struct {
		s, list string
		want    int
	}{
		{"coldship", "coldship", 1},
		{"coldship", "git,cold*", 1},
		{"coldship", "*,!coldship", -1},
		{"coldship", "git,file", 0},
		{"coldship", "!git", 0},
	} {
		if got := matchPatternList(tc.s, tc.list); got != tc.want {
			t.Errorf("matchPatternList(%q, %q) = %d", tc.s, tc.list, got)
		}
	}
}

func FuzzParseAllowedSigners(f *testing.F) {
	k := newSigningKey(f, "ed25519")
	f.Add([]byte("site-a " + k.pub + "\n"))
	f.Add([]byte(`*@a,!b cert-authority,namespaces="coldship",valid-after="20260101Z",valid-before="202701011200" ` + k.pub + " c\n"))
	f.Add([]byte(`"a b" namespaces="x\"y" ` + k.pub))
	f.Add([]byte("# only a comment\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := parseAllowedSigners("f", data, time.UTC)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "allowed signers file f") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if len(a.entries) == 0 {
			t.Fatal("parsed a file with no signers")
		}
		for _, e := range a.entries {
			if e.key == nil || e.principals == "" || checkPatternList("p", e.principals) != nil {
				t.Fatalf("line %d parsed into %+v", e.line, e)
			}
			if e.validAfter != 0 && e.validBefore != 0 && e.validBefore <= e.validAfter {
				t.Fatalf("line %d: empty validity window accepted", e.line)
			}
		}
	})
}
