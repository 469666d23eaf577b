package main

import (
	"regexp"
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
}
