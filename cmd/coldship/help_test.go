package main

import (
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestShowHelpOwners checks that show's help says what show prints of
// owners: uid:gid, "-" only for the formats that record none (it said they
// were all "-").
func TestShowHelpOwners(t *testing.T) {
	r := mustRun(t, "show", "--help")
	if strings.Contains(r.stdout, "until shipments record them") || !strings.Contains(r.stdout, "uid:gid") {
		t.Errorf("show --help misdescribes owners:\n%s", r.stdout)
	}
}

// TestPruneUsageRules checks that prune's usage line shows the --keep-*
// rules as alternatives, any one enough, and none of them as required.
func TestPruneUsageRules(t *testing.T) {
	r := mustRun(t, "prune", "--help")
	usage := regexp.MustCompile(`(?m)^  coldship prune .*$`).FindString(r.stdout)
	rules := "(--keep-last N | --keep-daily N | --keep-weekly N | --keep-monthly N | --keep-yearly N | --keep-within SPAN)..."
	if !strings.Contains(usage, rules) {
		t.Errorf("prune usage %q: want the rules as alternatives, %s", usage, rules)
	}
	if rest := strings.Replace(usage, rules, "", 1); strings.Contains(rest, "--keep-") {
		t.Errorf("prune usage %q shows a rule outside the alternatives", usage)
	}
	if r := run(t, "prune", t.TempDir()); r.code != exitUsage || !strings.Contains(r.stderr, "give at least one of") {
		t.Errorf("prune without a rule: exit %d, %s", r.code, r.stderr)
	}
	if r := run(t, "prune", t.TempDir(), "--keep-daily", "-2"); r.code != exitUsage || !strings.Contains(r.stderr, "-1 for all") {
		t.Errorf("prune --keep-daily -2: exit %d, %s; want 2 naming -1", r.code, r.stderr)
	}
	if r := run(t, "prune", t.TempDir(), "--keep-last", "1", "--keep-daily", "-1", "--dry-run"); r.code != 0 {
		t.Errorf("prune --keep-last -1 (restic's unlimited): exit %d, %s", r.code, r.stderr)
	}
}

// TestUnknownCommandMessages checks what a mistyped command or flag is
// reported as: an unknown command is one, even with flags after it that
// only the real command has, and the hint names the program once.
func TestUnknownCommandMessages(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"recieve", "x", "--json"}, `unknown command "recieve" for "coldship": did you mean "receive"?`},
		{[]string{"recieve", "x"}, `unknown command "recieve" for "coldship": did you mean "receive"?`},
		{[]string{"--json", "recieve", "x"}, `unknown command "recieve" for "coldship": did you mean "receive"?`},
		{[]string{"--bogus", "send"}, "unknown flag: --bogus (see coldship --help)"},
		{[]string{"frobnicate", "--out", "x"}, `unknown command "frobnicate" for "coldship": run "coldship help"`},
		{[]string{"--bogus"}, "unknown flag: --bogus (see coldship --help)"},
		{[]string{"list", "--bogus", "x"}, "unknown flag: --bogus (see coldship list --help)"},
		{[]string{"keygen", "extra"}, "(see coldship keygen --help)"},
	} {
		r := run(t, tc.args...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) || strings.Contains(r.stderr, "coldship coldship") {
			t.Errorf("coldship %s: exit %d, %q; want 2 and %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.want)
		}
		if slices.Contains(tc.args, "--json") {
			o := jsonLines(t, r.stdout)
			if len(o) != 1 || o[0]["type"] != "error" || !strings.Contains(o[0]["error"].(string), tc.want) || o[0]["category"] != "usage" {
				t.Errorf("coldship %s: JSON %v, want one usage error object", strings.Join(tc.args, " "), o)
			}
		}
	}
}
