package main

import (
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// kindOf finds the schema of an object: by its type (and op and mode for
// summaries), or for list and prune lines by their fields.
func kindOf(o map[string]any) *jsonKind {
	for i := range jsonSchema {
		k := &jsonSchema[i]
		switch {
		case k.Type == "" && o["type"] == nil:
			if _, isPrune := o["delete"]; isPrune == (k.Name == "decision (prune)") {
				return k
			}
		case k.Type != "" && o["type"] == k.Type && (k.Op == "" || o["op"] == k.Op) && (k.Mode == "" || o["mode"] == k.Mode):
			return k
		}
	}
	return nil
}

// checkSchema fails the test unless o is an object the schema documents:
// every field known, of its documented type, every required one present.
func checkSchema(t *testing.T, o map[string]any) {
	t.Helper()
	k := kindOf(o)
	if k == nil {
		t.Errorf("JSON object of no documented kind: %v", o)
		return
	}
	known := map[string]bool{}
	for _, f := range k.Fields {
		known[f.Name] = true
		v, present := o[f.Name]
		typ, optional := strings.CutSuffix(f.Type, "?")
		if !present {
			if !optional {
				t.Errorf("%s: field %q missing in %v", k.Name, f.Name, o)
			}
			continue
		}
		ok := false
		switch x := v.(type) {
		case string:
			ok = typ == "string"
		case bool:
			ok = typ == "boolean"
		case float64:
			ok = typ == "number" || typ == "integer" && x == math.Trunc(x)
		case []any:
			ok = typ == "array"
		case map[string]any:
			ok = typ == "object"
		}
		if !ok {
			t.Errorf("%s: field %q = %v (%T), documented as %s", k.Name, f.Name, v, v, f.Type)
		}
	}
	for name := range o {
		if !known[name] {
			t.Errorf("%s: field %q is not documented", k.Name, name)
		}
	}
}

// TestJSONSchemaInREADME checks that the README documents every object of
// the schema, field by field, in the order and with the types and meaning
// of jsonSchema: the one source of truth.
func TestJSONSchemaInREADME(t *testing.T) {
	path := filepath.Join("..", "..", "README.md")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	if *updateReadme {
		readme = rewriteSchemaTables(readme)
		if err := os.WriteFile(path, []byte(readme), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range jsonSchema {
		want := readmeTable(k)
		if !strings.Contains(readme, want) {
			t.Errorf("README does not document %q as the schema says; want this block:\n%s", k.Name, want)
		}
	}
	// And no field is documented there that the schema does not know.
	row := regexp.MustCompile("(?m)^\\| `([a-z_0-9]+)` \\| ")
	known := map[string]bool{}
	for _, k := range jsonSchema {
		for _, f := range k.Fields {
			known[f.Name] = true
		}
	}
	_, section, _ := strings.Cut(readme, "## Scripting and JSON")
	section, _, _ = strings.Cut(section, "\n## ")
	for _, m := range row.FindAllStringSubmatch(section, -1) {
		if !known[m[1]] {
			t.Errorf("README documents a field %q that no object has", m[1])
		}
	}
}

var updateReadme = flag.Bool("update-readme", false, "rewrite the README's JSON tables from jsonSchema")

// rewriteSchemaTables replaces each object's table in the README by the
// one jsonSchema gives (for -update-readme).
func rewriteSchemaTables(readme string) string {
	for _, k := range jsonSchema {
		head := "#### " + k.Name + "\n\n| field | type | meaning |\n|---|---|---|\n"
		i := strings.Index(readme, head)
		if i < 0 {
			continue
		}
		j := i + len(head)
		for strings.HasPrefix(readme[j:], "| `") {
			j += strings.Index(readme[j:], "\n") + 1
		}
		readme = readme[:i] + readmeTable(k) + readme[j:]
	}
	return readme
}

// readmeTable is how the README shows one kind of object.
func readmeTable(k jsonKind) string {
	var b strings.Builder
	fmt.Fprintf(&b, "#### %s\n\n| field | type | meaning |\n|---|---|---|\n", k.Name)
	for _, f := range k.Fields {
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", f.Name, f.Type, strings.ReplaceAll(f.Meaning, "|", "\\|"))
	}
	return b.String()
}

// TestJSONEveryCommand runs every command with --json and checks that its
// stdout holds only documented JSON objects, ending in its summary, or in
// an error object when it fails, usage errors included.
func TestJSONEveryCommand(t *testing.T) {
	dest, key, id, vm := sendSample(t)
	dir := t.TempDir()
	_, rcpt := keypair(t)
	cases := [][]string{
		{"keygen"}, {"keygen", "-o", filepath.Join(dir, "k", "id.key")},
		{"send", vm, "--to", dest, "-r", rcpt},
		{"receive", dest, id, "-i", key, "--out", filepath.Join(dir, "out")},
		{"receive", dest, id, "-i", key, "--into", filepath.Join(dir, "into")},
		{"receive", dest, id, "-i", key, "--into", filepath.Join(dir, "into")},
		{"verify", dest}, {"verify", dest, id, "-i", key}, {"verify", "--all", dest},
		{"list", dest}, {"show", dest, id, "-i", key}, {"prune", dest, "--keep-last", "5", "--dry-run"},
		{"version"}, {"man", filepath.Join(dir, "man")},
	}
	for _, args := range cases {
		r := run(t, append(args, "--json")...)
		if r.code != 0 {
			t.Errorf("coldship %s --json: exit %d; %s", strings.Join(args, " "), r.code, r.stderr)
			continue
		}
		objs := jsonLines(t, r.stdout)
		for _, o := range objs {
			checkSchema(t, o)
		}
		last := objs[len(objs)-1]
		if want := map[string]string{"list": "", "show": "file", "version": "version"}[args[0]]; want != "" || args[0] == "list" {
			if last["type"] != nil && last["type"] != want {
				t.Errorf("coldship %s --json: last object %v", args[0], last)
			}
		} else if last["type"] != "summary" || last["op"] != args[0] {
			t.Errorf("coldship %s --json: last object %v, want its summary", args[0], last)
		}
	}
	// Failures: an error object on stdout with the exit status and its
	// category, even when the command line does not parse.
	for _, tc := range []struct {
		args     []string
		env      string
		code     int
		category string
	}{
		{[]string{"list", "s3:/typo", "--json"}, "", exitUsage, "usage"},
		{[]string{"list", "--no-such-flag", "--json"}, "", exitUsage, "usage"},
		{[]string{"nosuchcommand", "--json"}, "", exitUsage, "usage"},
		{[]string{"list", filepath.Join(dir, "missing")}, "1", exitError, "other"},
		{[]string{"receive", dest, id, "--out", filepath.Join(dir, "o2"), "-i", filepath.Join(dir, "k", "id.key"), "--json"}, "", exitAuth, "auth"},
		{[]string{"prune", dest, "--json", "--keep-within", "soon"}, "", exitUsage, "usage"},
		{[]string{"list", dest, "--json=false"}, "1", 0, ""},
	} {
		t.Setenv(envName("json"), tc.env)
		r := run(t, tc.args...)
		if r.code != tc.code {
			t.Errorf("coldship %s: exit %d, want %d; %s", strings.Join(tc.args, " "), r.code, tc.code, r.stderr)
			continue
		}
		if tc.code == 0 {
			if strings.HasPrefix(r.stdout, "{") {
				t.Errorf("--json=false on the command line lost to COLDSHIP_JSON: %s", r.stdout)
			}
			continue
		}
		objs := jsonLines(t, r.stdout)
		last := objs[len(objs)-1]
		checkSchema(t, last)
		if last["type"] != "error" || last["exit_code"] != float64(tc.code) || last["category"] != tc.category || last["error"] == "" {
			t.Errorf("coldship %s: error object %v, want exit_code %d category %s", strings.Join(tc.args, " "), last, tc.code, tc.category)
		}
	}
}

func TestErrorCategories(t *testing.T) {
	for code, want := range map[int]string{0: "other", 1: "other", 2: "usage", 3: "hook", 4: "auth", 5: "integrity", 6: "busy", 130: "interrupted"} {
		if got := errorCategory(code); got != want {
			t.Errorf("errorCategory(%d) = %q, want %q", code, got, want)
		}
	}
}

// TestDurationCountsTheWholeCommand: the summary's duration_s is the whole
// command's, as documented, not only its transfer: a pre-send hook that
// sleeps half a second before anything is read counts in it.
func TestDurationCountsTheWholeCommand(t *testing.T) {
	vm := filepath.Join(t.TempDir(), "vm.img")
	if err := os.WriteFile(vm, []byte("a small disk"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, rcpt := keypair(t)
	dest := t.TempDir()
	r := run(t, "send", vm, "--to", dest, "-r", rcpt, "--json", "--state-dir", t.TempDir(), "--hook", "pre-send=sleep 0.5")
	if r.code != 0 {
		t.Fatalf("send: exit %d; %s", r.code, r.stderr)
	}
	objs := jsonLines(t, r.stdout)
	last := objs[len(objs)-1]
	if d, _ := last["duration_s"].(float64); d < 0.5 {
		t.Errorf("duration_s = %v after a pre-send hook of 0.5 s: %v", last["duration_s"], last)
	}
}

// TestJSONQuiet: --json with --quiet prints the summary alone (or the
// error object): no notices, no progress, as -q prints only errors.
func TestJSONQuiet(t *testing.T) {
	id, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 4<<20, region{0, 1 << 20, "random"})
	send := func(dest string, extra ...string) []map[string]any {
		r := run(t, append([]string{"send", src, "--to", dest, "-r", rcpt, "--base", "latest",
			"--state-dir", filepath.Join(dir, "state"), "--json"}, extra...)...)
		if r.code != 0 {
			t.Fatalf("send %v: exit %d: %s", extra, r.code, r.stderr)
		}
		return jsonLines(t, r.stdout)
	}
	if objs := send(filepath.Join(dir, "a")); len(objs) < 2 || objs[0]["type"] != "notice" {
		t.Fatalf("without -q, want a notice (a first full send) before the summary: %v", objs)
	}
	objs := send(filepath.Join(dir, "b"), "-q")
	if len(objs) != 1 || objs[0]["type"] != "summary" {
		t.Errorf("send --json -q: %v; want the summary alone", objs)
	}
	r := run(t, "receive", filepath.Join(dir, "b"), "-i", id, "--out", filepath.Join(dir, "out"), "--json", "-q")
	if objs := jsonLines(t, r.stdout); r.code != 0 || len(objs) != 1 || objs[0]["type"] != "summary" {
		t.Errorf("receive --json -q: exit %d, %v; want the summary alone", r.code, objs)
	}
	r = run(t, "receive", filepath.Join(dir, "nowhere"), "-i", id, "--out", filepath.Join(dir, "out2"), "--json", "-q")
	if objs := jsonLines(t, r.stdout); r.code == 0 || len(objs) != 1 || objs[0]["type"] != "error" {
		t.Errorf("failing receive --json -q: exit %d, %v; want the error object alone", r.code, objs)
	}
}
