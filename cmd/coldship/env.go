package main

import (
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Every flag of every command can be set in the environment, one rule for
// all: --flag-name is COLDSHIP_FLAG_NAME. A flag given on the command line
// wins, over its own variable and over those of the flags it excludes
// (annotated with envExcludes). A repeatable flag takes a list, one value
// per line; the lists of files (annotated with envCommaList) may also be
// separated by commas, and so may recipients on a line where each is one
// word (envCommaWords).
const envPrefix = "COLDSHIP_"

// envExcludes lists, on a flag, the flags a command refuses to take with
// it (receive's --out and --into). Given on the command line, the flag
// wins over their variables too, which are ignored: hooks run with
// COLDSHIP_OUT set, and "receive --into DIR" in one means --into.
const envExcludes = "coldship-env-excludes"

// envCommaList marks a repeatable flag whose values may be separated by
// commas in its environment variable: file names. Recipients (SSH keys
// hold spaces and comments) and hooks (commands) are split on newlines only.
const envCommaList = "coldship-env-comma"

// envCommaWords marks a repeatable flag whose variable may separate values
// with commas on a line where every value is one word (see commaWords).
const envCommaWords = "coldship-env-comma-words"

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

// exclusive marks flags of which a command takes at most one.
func exclusive(f *pflag.FlagSet, names ...string) {
	for _, n := range names {
		fl := f.Lookup(n)
		if fl == nil {
			panic("exclusive: no flag --" + n)
		}
		others := fl.Annotations[envExcludes]
		for _, o := range names {
			if o != n {
				others = append(others, o)
			}
		}
		if err := f.SetAnnotation(n, envExcludes, others); err != nil {
			panic("exclusive: " + err.Error())
		}
	}
}

// flagsWithoutEnv are cobra's own flags, which act before the environment
// is read.
var flagsWithoutEnv = map[string]bool{"help": true, "version": true}

// applyEnv sets every flag of cmd that the command line left alone from
// its environment variable, if that is set and not empty, unless the
// command line gave a flag that excludes it. A value the flag refuses, or
// variables of two flags that exclude each other, are usage errors naming
// the variables.
func applyEnv(cmd *cobra.Command) error {
	fs := cmd.Flags()
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *pflag.Flag) { onCommandLine[f.Name] = true })
	fromEnv := map[string]bool{}
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed || flagsWithoutEnv[f.Name] || excluded(f, onCommandLine) {
			return
		}
		name := envName(f.Name)
		v, ok := os.LookupEnv(name)
		if !ok || strings.TrimSpace(v) == "" {
			return
		}
		for _, item := range envValues(f, v) {
			if serr := fs.Set(f.Name, item); serr != nil {
				err = usagef("%s (for --%s): %v", name, f.Name, serr)
				return
			}
		}
		fromEnv[f.Name] = true
	})
	if err != nil {
		return err
	}
	return envConflict(fs, fromEnv)
}

// excluded reports whether a flag in set excludes f.
func excluded(f *pflag.Flag, set map[string]bool) bool {
	for _, o := range f.Annotations[envExcludes] {
		if set[o] {
			return true
		}
	}
	return false
}

// envConflict is the usage error of two variables set for flags that
// exclude each other, or nil: neither wins over the other.
func envConflict(fs *pflag.FlagSet, fromEnv map[string]bool) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || !fromEnv[f.Name] {
			return
		}
		for _, o := range f.Annotations[envExcludes] {
			if fromEnv[o] {
				err = usagef("%s and %s are both set, but --%s and --%s exclude each other: unset one, or give the flag you mean on the command line",
					envName(f.Name), envName(o), f.Name, o)
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
		item = strings.TrimSpace(item)
		if words := commaSeparatedWords(item); len(f.Annotations[envCommaWords]) > 0 && words != nil {
			out = append(out, words...)
		} else if item != "" {
			out = append(out, item)
		}
	}
	return out
}

// commaSeparatedWords splits line on its commas if every part is one word
// (no space inside), or returns nil.
func commaSeparatedWords(line string) []string {
	var words []string
	for _, w := range strings.Split(line, ",") {
		w = strings.TrimSpace(w)
		if strings.ContainsAny(w, " \t") {
			return nil
		}
		if w != "" {
			words = append(words, w)
		}
	}
	return words
}

// envHelp is the part of every command's help that says so.
const envHelp = `
ENVIRONMENT
  Every flag can be set as COLDSHIP_<FLAG> (upper case, dashes as
  underscores: --state-dir is COLDSHIP_STATE_DIR); a flag on the command
  line wins, also over the variable of a flag it cannot go with (receive
  --into over COLDSHIP_OUT). Repeatable flags take one value per line
  (files, and recipients without spaces such as age1..., also
  comma-separated). COLDSHIP_PASSPHRASE holds a passphrase (no flag).
`

// commaWords marks flags whose environment lists may use commas between
// values that hold no space (age recipients): a line whose comma-separated
// parts all are single words is split on its commas; another line (an SSH
// key with its comment) is one value.
func commaWords(f *pflag.FlagSet, names ...string) {
	for _, n := range names {
		if err := f.SetAnnotation(n, envCommaWords, []string{"true"}); err != nil {
			panic("commaWords: " + err.Error())
		}
	}
}
