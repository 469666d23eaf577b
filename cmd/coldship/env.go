package main

import (
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Every flag of every command can be set in the environment, one rule for
// all: --flag-name is COLDSHIP_FLAG_NAME. A flag given on the command line
// wins. A repeatable flag takes a list, one value per line; the lists of
// files (annotated with envCommaList) may also be separated by commas.
const envPrefix = "COLDSHIP_"

// envCommaList marks a repeatable flag whose values may be separated by
// commas in its environment variable: file names. Recipients (SSH keys
// hold spaces and comments) and hooks (commands) are split on newlines only.
const envCommaList = "coldship-env-comma"

// envName is the environment variable of a flag.
func envName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// commaList marks flags whose environment lists may use commas.
func commaList(f *pflag.FlagSet, names ...string) {
	for _, n := range names {
		if err := f.SetAnnotation(n, envCommaList, []string{"true"}); err != nil {
			panic("commaList: " + err.Error())
		}
	}
}

// flagsWithoutEnv are cobra's own flags, which act before the environment
// is read.
var flagsWithoutEnv = map[string]bool{"help": true, "version": true}

// applyEnv sets every flag of cmd that the command line left alone from
// its environment variable, if that is set and not empty. A value the flag
// refuses is a usage error naming the variable.
func applyEnv(cmd *cobra.Command) error {
	var err error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed || flagsWithoutEnv[f.Name] {
			return
		}
		name := envName(f.Name)
		v, ok := os.LookupEnv(name)
		if !ok || strings.TrimSpace(v) == "" {
			return
		}
		for _, item := range envValues(f, v) {
			if serr := cmd.Flags().Set(f.Name, item); serr != nil {
				err = usagef("%s (for --%s): %v", name, f.Name, serr)
				return
			}
		}
	})
	return err
}

// envValues splits a repeatable flag's list; other flags take the value
// whole (trimmed, as an EnvironmentFile line may end in spaces).
func envValues(f *pflag.Flag, v string) []string {
	if !strings.HasSuffix(f.Value.Type(), "Array") && !strings.HasSuffix(f.Value.Type(), "Slice") {
		return []string{strings.TrimSpace(v)}
	}
	seps := "\n"
	if len(f.Annotations[envCommaList]) > 0 {
		seps = "\n,"
	}
	var out []string
	for _, item := range strings.FieldsFunc(v, func(r rune) bool { return strings.ContainsRune(seps, r) }) {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// envHelp is the part of every command's help that says so.
const envHelp = `
ENVIRONMENT
  Every flag can be set as COLDSHIP_<FLAG> (upper case, dashes as
  underscores: --state-dir is COLDSHIP_STATE_DIR); a flag on the command
  line wins. Repeatable flags take one value per line (files also
  comma-separated). COLDSHIP_PASSPHRASE holds a passphrase (no flag).
`
