package main

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// errResolved stops a command once its flags are resolved.
var errResolved = errors.New("flags resolved")

// argsFor gives each command arguments it accepts, so that it reaches the
// point where the environment is applied.
var argsFor = map[string][]string{
	"receive": {"dest"}, "verify": {"dest"}, "list": {"dest"}, "prune": {"dest"}, "show": {"dest"}, "man": {"dir"},
}

// envCase is a value for a flag's variable and what the flag must then hold.
func envCase(f *pflag.Flag) (env string, want []string) {
	switch f.Value.Type() {
	case "bool":
		if f.DefValue == "true" {
			return "false", []string{"false"}
		}
		return "true", []string{"true"}
	case "int":
		return "7", []string{"7"}
	case "duration":
		return "3s", []string{"3s"}
	case "stringArray", "stringSlice":
		if len(f.Annotations[envCommaList]) > 0 {
			return "from env 1,from-env-2\n from-env-3 ", []string{"from env 1", "from-env-2", "from-env-3"}
		}
		return "from env, 1\nfrom-env-2", []string{"from env, 1", "from-env-2"}
	}
	return " from-env ", []string{"from-env"}
}

// resolved returns a flag's value(s) as the command sees them.
func resolved(fs *pflag.FlagSet, name string) []string {
	f := fs.Lookup(name)
	if v, err := fs.GetStringArray(name); err == nil {
		return v
	}
	return []string{f.Value.String()}
}

// TestEnvEveryFlag sets COLDSHIP_<FLAG> for every flag of every command and
// checks that the command sees it, and that the flag on the command line wins.
func TestEnvEveryFlag(t *testing.T) {
	var seen *pflag.FlagSet
	flagsResolved = func(c *cobra.Command) error {
		seen = c.Flags()
		return errResolved
	}
	defer func() { flagsResolved = nil }()
	root := newRootCmd(strings.NewReader(""), os.Stdout, os.Stderr)
	root.InitDefaultCompletionCmd()
	var cmds []*cobra.Command
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Runnable() && c.Name() != "help" && c != root {
			cmds = append(cmds, c)
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	tested := 0
	for _, c := range cmds {
		path := strings.Fields(c.CommandPath())[1:]
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if flagsWithoutEnv[f.Name] {
				return
			}
			tested++
			name := envName(f.Name)
			env, want := envCase(f)
			t.Setenv(name, env)
			args := append(append([]string{}, path...), argsFor[c.Name()]...)
			seen = nil
			r := run(t, args...)
			if seen == nil {
				t.Errorf("%s with %s: the command did not reach its flags (exit %d): %s", c.CommandPath(), name, r.code, r.stderr)
				return
			}
			if got := resolved(seen, f.Name); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("%s: %s=%q gives --%s %q, want %q", c.CommandPath(), name, env, f.Name, got, want)
			}
			// The command line wins.
			cli := "from-cli"
			switch f.Value.Type() {
			case "bool":
				cli = f.DefValue
			case "int":
				cli = "9"
			case "duration":
				cli = "5s"
			}
			seen = nil
			run(t, append(args, "--"+f.Name+"="+cli)...)
			if got := resolved(seen, f.Name); seen == nil || fmt.Sprint(got) != fmt.Sprint([]string{cli}) {
				t.Errorf("%s: --%s=%s with %s=%q set gives %q, want the flag's value", c.CommandPath(), f.Name, cli, name, env, got)
			}
			os.Unsetenv(name)
		})
	}
	if tested < 100 {
		t.Errorf("only %d flags tested; the walk missed commands", tested)
	}
}

func TestEnvBadValue(t *testing.T) {
	for _, tc := range []struct{ name, value, args string }{
		{"COLDSHIP_JOBS", "many", "verify dest"},
		{"COLDSHIP_LOCK_WAIT", "soon", "prune dest --keep-last 1"},
		{"COLDSHIP_JSON", "perhaps", "list dest"},
		{"COLDSHIP_STREAMS", "1.5", "list dest"},
	} {
		t.Setenv(tc.name, tc.value)
		r := run(t, strings.Fields(tc.args)...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tc.name) {
			t.Errorf("%s=%s: exit %d, want 2 naming the variable; %s", tc.name, tc.value, r.code, r.stderr)
		}
		os.Unsetenv(tc.name)
	}
}

// TestEnvDefaultsRun runs a real send and receive from the environment
// alone, as a systemd EnvironmentFile sets it, the passphrase included.
func TestEnvDefaultsRun(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 1<<20, region{0, 200 << 10, "random"})
	t.Setenv("COLDSHIP_TO", filepath.Join(dir, "dest"))
	t.Setenv("COLDSHIP_PASSPHRASE", "correct horse battery staple")
	t.Setenv("COLDSHIP_BLOCK_SIZE", "64K")
	t.Setenv("COLDSHIP_NAME", "nightly")
	t.Setenv("COLDSHIP_QUIET", "true")
	id := strings.TrimSpace(mustRun(t, "send", src).stdout)
	r := mustRun(t, "list", filepath.Join(dir, "dest"))
	if !strings.Contains(r.stdout, id) || !strings.Contains(r.stdout, "nightly") {
		t.Errorf("list after a send from the environment: %s", r.stdout)
	}
	t.Setenv("COLDSHIP_OUT", filepath.Join(dir, "out"))
	mustRun(t, "receive", filepath.Join(dir, "dest"))
	sameFile(t, src, filepath.Join(dir, "out", "disk.img"))
}

// TestEnvExclusiveFlags checks receive's --out and --into, which exclude
// each other: one on the command line wins over the other's variable (a
// hook runs with COLDSHIP_OUT set, and "receive --into" in one must work),
// and the two variables together are a usage error naming both.
func TestEnvExclusiveFlags(t *testing.T) {
	var seen *pflag.FlagSet
	flagsResolved = func(c *cobra.Command) error {
		seen = c.Flags()
		return errResolved
	}
	defer func() { flagsResolved = nil }()
	for _, tc := range []struct {
		name      string
		env       map[string]string
		args      []string
		out, into string // what the command sees
		err       string // a usage error holding this instead
	}{
		{"--into over COLDSHIP_OUT", map[string]string{"COLDSHIP_OUT": "/env-out"}, []string{"--into", "/cli"}, "", "/cli", ""},
		{"--out over COLDSHIP_INTO", map[string]string{"COLDSHIP_INTO": "/env-into"}, []string{"--out", "/cli"}, "/cli", "", ""},
		{"-o over COLDSHIP_INTO", map[string]string{"COLDSHIP_INTO": "/env-into"}, []string{"-o", "/cli"}, "/cli", "", ""},
		{"COLDSHIP_OUT alone", map[string]string{"COLDSHIP_OUT": "/env-out"}, nil, "/env-out", "", ""},
		{"both variables", map[string]string{"COLDSHIP_OUT": "/env-out", "COLDSHIP_INTO": "/env-into"}, nil, "", "",
			"COLDSHIP_INTO and COLDSHIP_OUT are both set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			seen = nil
			r := run(t, append([]string{"receive", "dest"}, tc.args...)...)
			if tc.err != "" {
				if r.code != exitUsage || !strings.Contains(r.stderr, tc.err) {
					t.Errorf("exit %d, want 2 saying %q: %s", r.code, tc.err, r.stderr)
				}
				return
			}
			if seen == nil {
				t.Fatalf("the command did not reach its flags (exit %d): %s", r.code, r.stderr)
			}
			if out, into := resolved(seen, "out")[0], resolved(seen, "into")[0]; out != tc.out || into != tc.into {
				t.Errorf("--out %q --into %q, want %q and %q", out, into, tc.out, tc.into)
			}
		})
	}
	// The command line alone still conflicts: neither is the environment's.
	flagsResolved = nil
	if r := run(t, "receive", t.TempDir(), "--out", "/a", "--into", "/b"); r.code != exitUsage || !strings.Contains(r.stderr, "not both") {
		t.Errorf("--out and --into: exit %d, want 2: %s", r.code, r.stderr)
	}
}

// TestEnvPassphraseFileOverRecipients: send --passphrase-file on the
// command line wins over recipients in the environment (a site's
// COLDSHIP_RECIPIENT), as any flag wins over a variable.
func TestEnvPassphraseFileOverRecipients(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	pass := filepath.Join(dir, "pass")
	os.WriteFile(img, []byte("a small disk"), 0o600)
	os.WriteFile(pass, []byte("correct horse battery staple\n"), 0o600)
	_, rcpt := keypair(t)
	rfile := filepath.Join(dir, "recipients")
	os.WriteFile(rfile, []byte(rcpt+"\n"), 0o600)
	for _, env := range []string{"COLDSHIP_RECIPIENT", "COLDSHIP_RECIPIENTS_FILE"} {
		t.Run(env, func(t *testing.T) {
			t.Setenv(env, map[string]string{"COLDSHIP_RECIPIENT": rcpt, "COLDSHIP_RECIPIENTS_FILE": rfile}[env])
			dest := filepath.Join(t.TempDir(), "dest")
			r := run(t, "send", img, "--to", dest, "--passphrase-file", pass)
			if r.code != 0 {
				t.Fatalf("send --passphrase-file with %s set: exit %d: %s", env, r.code, r.stderr)
			}
			out := filepath.Join(t.TempDir(), "out")
			if r := run(t, "receive", dest, "--passphrase-file", pass, "--out", out); r.code != 0 {
				t.Errorf("the shipment does not open with the passphrase: exit %d: %s", r.code, r.stderr)
			}
		})
	}
}

// TestStateDirWithoutHOME: cron and systemd units may start coldship
// without HOME. The state directory (the lock of DEST, resume journals,
// the incremental state) is then under the password database's home, not
// missing: without it send and prune took no lock, a killed send could not
// resume and --base failed with "--base needs a --state-dir".
func TestStateDirWithoutHOME(t *testing.T) {
	u, err := user.Current()
	if err != nil || u.HomeDir == "" {
		t.Skipf("no home folder in the password database: %v", err)
	}
	t.Setenv("HOME", "")
	t.Setenv("XDG_STATE_HOME", "")
	want := fmt.Sprintf("(default %q)", filepath.Join(u.HomeDir, ".local", "state", "coldship"))
	for _, cmd := range []string{"send", "prune"} {
		if r := mustRun(t, cmd, "--help"); !strings.Contains(r.stdout, want) {
			t.Errorf("%s --help without HOME: --state-dir is not %s:\n%s", cmd, want, r.stdout)
		}
	}
}

// TestEnvRecipientsCommaSeparated: COLDSHIP_RECIPIENT=age1...,age1... (one
// line, as a systemd EnvironmentFile writes it) names two recipients; a
// recipient with spaces (an SSH key and its comment) is one per line.
func TestEnvRecipientsCommaSeparated(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 1<<20, region{0, 200 << 10, "random"})
	k1, r1 := keypair(t)
	k2, r2 := keypair(t)
	dest := filepath.Join(dir, "dest")
	t.Setenv("COLDSHIP_RECIPIENT", r1+", "+r2)
	mustRun(t, "send", src, "--to", dest, "-q", "--state-dir", filepath.Join(dir, "state"))
	os.Unsetenv("COLDSHIP_RECIPIENT")
	for i, k := range []string{k1, k2} {
		out := filepath.Join(dir, fmt.Sprintf("out%d", i))
		mustRun(t, "receive", dest, "latest", "--out", out, "-i", k, "-q")
		sameFile(t, src, filepath.Join(out, "disk.img"))
	}
	fs := pflag.NewFlagSet("send", pflag.ContinueOnError)
	fs.StringArray("recipient", nil, "")
	commaWords(fs, "recipient")
	f := fs.Lookup("recipient")
	if got := envValues(f, "ssh-ed25519 AAAA x, y\n"+r1+","+r2); len(got) != 3 || got[0] != "ssh-ed25519 AAAA x, y" {
		t.Errorf("recipient list split as %q", got)
	}
}
