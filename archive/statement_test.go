package archive

import (
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testStatement() *Statement {
	d := func(b byte) Digest { var d Digest; d[0], d[31] = b, b; return d }
	return &Statement{
		ID:             "20261122T010540Z-16027945",
		Created:        time.Date(2026, 11, 22, 1, 5, 40, 0, time.UTC),
		Chain:          "0123456789abcdef0123456789abcdef",
		Previous:       "20261121T010540Z-0a1b2c3d",
		PreviousSHA256: d(9),
		Objects: []StatementEntry{
			{"manifest", d(1)}, {"header", d(2)}, {"keys/0000", d(3)}, {"inventory", d(4)},
			{"bases/20261120T010540Z-0a1b2c3d/keys/0000", d(5)}, {"blocks", d(6)},
		},
	}
}

func TestStatementRoundTrip(t *testing.T) {
	s := testStatement()
	b, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := "# coldship-signed-v1\n" +
		"# shipment 20261122T010540Z-16027945\n" +
		"# created 2026-11-22T01:05:40Z\n" +
		"# chain 0123456789abcdef0123456789abcdef\n" +
		"# previous 20261121T010540Z-0a1b2c3d 0900000000000000000000000000000000000000000000000000000000000009\n" +
		"0500000000000000000000000000000000000000000000000000000000000005  bases/20261120T010540Z-0a1b2c3d/keys/0000\n" +
		"0600000000000000000000000000000000000000000000000000000000000006  blocks\n" +
		"0200000000000000000000000000000000000000000000000000000000000002  header\n" +
		"0400000000000000000000000000000000000000000000000000000000000004  inventory\n" +
		"0300000000000000000000000000000000000000000000000000000000000003  keys/0000\n" +
		"0100000000000000000000000000000000000000000000000000000000000001  manifest\n"
	if string(b) != want {
		t.Fatalf("statement:\n%s\nwant:\n%s", b, want)
	}
	p, err := ParseStatement(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := p.Marshal()
	if string(b2) != want || p.Previous != s.Previous || !p.Created.Equal(s.Created) {
		t.Fatalf("does not round-trip: %+v", p)
	}
	if d, ok := p.Lookup("keys/0000"); !ok || d[0] != 3 {
		t.Fatal("Lookup keys/0000")
	}
	if _, ok := p.Lookup("keys/0001"); ok {
		t.Fatal("Lookup found a name that is not there")
	}

	first := testStatement()
	first.Previous, first.PreviousSHA256 = "", Digest{}
	b, err = first.Marshal()
	if err != nil || !strings.Contains(string(b), "\n# previous none\n") {
		t.Fatalf("first of a chain: %v\n%s", err, b)
	}
	if p, err := ParseStatement(b); err != nil || p.Previous != "" || p.PreviousSHA256 != (Digest{}) {
		t.Fatalf("first of a chain: %v", err)
	}
}

func TestStatementRefused(t *testing.T) {
	good, err := testStatement().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	g := string(good)
	line := func(n int) string { return strings.Split(g, "\n")[n] }
	hexA := strings.Repeat("a", 64)
	for name, b := range map[string]string{
		"CRLF":                strings.ReplaceAll(g, "\n", "\r\n"),
		"no final newline":    strings.TrimSuffix(g, "\n"),
		"blank line":          g + "\n",
		"other magic":         strings.Replace(g, "v1", "v2", 1),
		"comment among lines": g + "# more\n",
		"header lines order":  strings.Replace(strings.Replace(g, line(1), "X", 1), line(2), line(1), 1),
		"offset time":         strings.Replace(g, "01:05:40Z", "01:05:40+00:00", 1),
		"fractional time":     strings.Replace(g, "01:05:40Z", "01:05:40.5Z", 1),
		"short chain":         strings.Replace(g, "cdef\n", "cde\n", 1),
		"upper-case chain":    strings.Replace(g, "abcdef\n", "ABCDEF\n", 1),
		"previous no digest":  strings.Replace(g, line(4), "# previous 20261121T010540Z-0a1b2c3d", 1),
		"previous is itself":  strings.Replace(g, "20261121T010540Z-0a1b2c3d", "20261122T010540Z-16027945", 1),
		"previous bad id":     strings.Replace(g, "20261121T010540Z-0a1b2c3d", "yesterday", 1),
		"previous zero":       strings.Replace(g, line(4), "# previous 20261121T010540Z-0a1b2c3d "+strings.Repeat("0", 64), 1),
		"one space":           strings.Replace(g, "  manifest", " manifest", 1),
		"binary mode":         strings.Replace(g, "  manifest", " *manifest", 1),
		"upper-case hex":      strings.Replace(g, "\n01000000", "\n0A000000", 1),
		"unsorted":            g + hexA + "  blocks2\n",
		"duplicate":           g + hexA + "  manifest\n",
		"segment":             strings.Replace(g, "  keys/0000", "  segments/00000001", 1),
		"signed":              g + hexA + "  signed\n",
		"signature":           g + hexA + "  signature\n",
		"dot dot":             strings.Replace(g, "  keys/0000", "  keys/../0000", 1),
		"absolute":            strings.Replace(g, "  bases/", "  /bases/", 1),
		"hidden":              strings.Replace(g, "  keys/0000", "  keys/.0000", 1),
		"space in name":       strings.Replace(g, "  keys/0000", "  keys/00 00", 1),
		"no manifest":         strings.Replace(g, "  manifest", "  nanifest", 1),
		"no objects":          strings.Join(strings.Split(g, "\n")[:5], "\n") + "\n",
		"too many objects":    g + strings.Repeat(hexA+"  zz\n", maxStatementEntries),
		"too large":           g + strings.Repeat("#", MaxStatement),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseStatement([]byte(b)); err == nil {
				t.Fatalf("accepted:\n%.600s", b)
			} else if !strings.HasPrefix(err.Error(), "statement: ") || len(err.Error()) > 300 {
				t.Fatalf("error %q", err)
			}
		})
	}
	s := testStatement()
	s.Objects = append(s.Objects, s.Objects[0])
	if _, err := s.Marshal(); err == nil {
		t.Fatal("Marshal accepted a name twice")
	}
}

// TestStatementSHA256Sum checks the statement of a real shipment (the
// fixture) with coreutils' sha256sum -c, run inside the shipment folder.
func TestStatementSHA256Sum(t *testing.T) {
	sum, err := exec.LookPath("sha256sum")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("sha256sum is not installed")
		}
		t.Skip("sha256sum is not installed")
	}
	src := "testdata/fixture-incremental/20261122T012541Z-2f321b72"
	dir := t.TempDir()
	s := &Statement{ID: filepath.Base(src), Created: time.Date(2026, 11, 22, 1, 25, 41, 0, time.UTC), Chain: NewChainID()}
	err = filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		os.MkdirAll(filepath.Dir(filepath.Join(dir, rel)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, rel), b, 0o644); err != nil {
			return err
		}
		if InStatement(filepath.ToSlash(rel)) {
			s.Objects = append(s.Objects, StatementEntry{filepath.ToSlash(rel), sha256.Sum256(b)})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "  bases/20261122T012541Z-e618f7bb/keys/0000\n") || strings.Contains(string(b), "segments/") {
		t.Fatalf("statement of the fixture:\n%s", b)
	}
	os.WriteFile(filepath.Join(dir, SignedObject), b, 0o644)
	cmd := exec.Command(sum, "-c", "--strict", SignedObject)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil || strings.Count(string(out), ": OK\n") != len(s.Objects) {
		t.Fatalf("sha256sum -c: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(dir, "keys/0000"), []byte("swapped"), 0o644)
	cmd = exec.Command(sum, "-c", "--quiet", SignedObject)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "keys/0000: FAILED") {
		t.Fatalf("sha256sum -c passed a swapped key slot: %v\n%s", err, out)
	}
}

func FuzzParseStatement(f *testing.F) {
	b, _ := testStatement().Marshal()
	f.Add(b)
	s := testStatement()
	s.Previous, s.PreviousSHA256 = "", Digest{}
	b, _ = s.Marshal()
	f.Add(b)
	f.Add([]byte(statementMagic + "\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseStatement(b)
		if err != nil {
			return
		}
		// The encoding is canonical: what parses re-encodes to the same bytes.
		b2, err := s.Marshal()
		if err != nil || string(b2) != string(b) {
			t.Fatalf("does not round-trip: %v\n%q\n%q", err, b, b2)
		}
		for _, o := range s.Objects {
			if !InStatement(o.Name) || strings.Contains(o.Name, "..") || strings.HasPrefix(o.Name, "/") {
				t.Fatalf("accepted name %q", o.Name)
			}
		}
	})
}
