package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"filippo.io/age"
	"golang.org/x/term"

	"github.com/coldship/coldship/cipher"
)

// passphraseEnv holds a passphrase for unattended runs.
const passphraseEnv = "COLDSHIP_PASSPHRASE"

// readPassphraseFile reads the first line of a passphrase file.
func readPassphraseFile(name string) ([]byte, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, missingIsUsage(fmt.Errorf("read passphrase file: %w", err))
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) == 0 {
		return nil, usagef("passphrase file %s is empty", name)
	}
	return line, nil
}

// passphrase returns the passphrase from --passphrase-file or the
// environment, or nil when neither gives one.
func passphrase(file string) ([]byte, error) {
	if file != "" {
		return readPassphraseFile(file)
	}
	if p := os.Getenv(passphraseEnv); p != "" {
		return []byte(p), nil
	}
	return nil, nil
}

// prompt reads a secret from the terminal on stdin, prompting on stderr.
// A signal (Ctrl-C) ends it at once with the terminal's echo back on: the
// read itself cannot be interrupted, so it is left to the exiting process.
func (s *streams) prompt(msg string) ([]byte, error) {
	f, ok := s.in.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil, errors.New("no terminal to prompt on")
	}
	fd := int(f.Fd())
	saved, err := term.GetState(fd)
	if err != nil {
		return nil, fmt.Errorf("read passphrase: %w", err)
	}
	type read struct {
		p   []byte
		err error
	}
	done := make(chan read, 1)
	fmt.Fprint(s.err, msg)
	go func() {
		p, err := term.ReadPassword(fd)
		done <- read{p, err}
	}()
	ctx := s.context()
	select {
	case r := <-done:
		fmt.Fprintln(s.err)
		if r.err != nil {
			return nil, fmt.Errorf("read passphrase: %w", r.err)
		}
		return r.p, nil
	case <-ctx.Done():
		term.Restore(fd, saved)
		fmt.Fprintln(s.err)
		return nil, context.Cause(ctx)
	}
}

// askPass is the prompt callback for encrypted SSH keys: nil without a
// terminal, so that unattended runs never block on a prompt.
func (s *streams) askPass() func(string) ([]byte, error) {
	if !s.stdinIsTerminal() {
		return nil
	}
	return func(p string) ([]byte, error) { return s.prompt(p + ": ") }
}

// sendRecipients gathers -r, -R and the passphrase into age recipients.
func (s *streams) sendRecipients(rs, files []string, passFile string) ([]age.Recipient, error) {
	var out []age.Recipient
	for i, r := range rs {
		rec, err := cipher.ParseRecipient(r)
		if err != nil {
			// Never echo r: it may be a private key or a passphrase
			// given by mistake, and errors end up in logs.
			return nil, usageError{fmt.Errorf("%s: %w", nthFlag("-r", i, len(rs)), err)}
		}
		out = append(out, rec)
	}
	for _, f := range files {
		recs, err := cipher.ParseRecipientsFile(f)
		if err != nil {
			return nil, usageError{err}
		}
		out = append(out, recs...)
	}
	if len(out) > 0 {
		if passFile != "" {
			return nil, usagef("--passphrase-file cannot be combined with -r or -R: a passphrase must be the only recipient")
		}
		return out, nil
	}
	s.warnReadableByAll("passphrase file", passFile)
	pass, err := passphrase(passFile)
	if err != nil {
		return nil, err
	}
	if pass == nil {
		if !s.stdinIsTerminal() {
			return nil, usagef("no recipients: give -r RECIPIENT, -R FILE, --passphrase-file FILE or %s", passphraseEnv)
		}
		if pass, err = s.prompt("Passphrase for the shipment: "); err != nil {
			return nil, err
		}
		again, err := s.prompt("Confirm passphrase: ")
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(pass, again) {
			return nil, usagef("the two passphrases differ: run again and type the same passphrase twice")
		}
		if len(pass) == 0 {
			return nil, usagef("the passphrase is empty: type one, or encrypt to a recipient with -r instead")
		}
	}
	rec, err := cipher.PassphraseRecipient(pass)
	if err != nil {
		return nil, err
	}
	return []age.Recipient{rec}, nil
}

// nthFlag names the i-th of n values of a repeatable flag without quoting
// it: "-r", or "-r number 2 of 3".
func nthFlag(flag string, i, n int) string {
	if n == 1 {
		return flag
	}
	return fmt.Sprintf("%s number %d of %d", flag, i+1, n)
}

// identities gathers -i files and the passphrase into age identities. An
// -i file that cannot be used (missing, malformed, a public key, or
// passphrase-protected without a terminal to ask on) is a usage error,
// exit 2, as a bad -R file is: the command line cannot work as given, and
// a cron job must say so rather than look like a transient failure.
func (s *streams) identities(files []string, passFile string, required bool) ([]age.Identity, error) {
	var out []age.Identity
	for _, f := range files {
		s.warnReadableByAll("identity file", f)
		ids, err := cipher.ParseIdentityFile(f, s.askPass())
		if err != nil {
			return nil, usageError{err}
		}
		out = append(out, ids...)
	}
	s.warnReadableByAll("passphrase file", passFile)
	pass, err := passphrase(passFile)
	if err != nil {
		return nil, err
	}
	if pass == nil && len(out) == 0 && required {
		if !s.stdinIsTerminal() {
			return nil, usagef("no identity: give -i IDENTITY, --passphrase-file FILE or %s", passphraseEnv)
		}
		if pass, err = s.prompt("Passphrase for the shipment: "); err != nil {
			return nil, err
		}
	}
	if pass != nil {
		id, err := cipher.PassphraseIdentity(pass)
		if err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, nil
}

// warnReadableByAll warns, even with -q, when the secret file name can be
// read by every user of the machine (an identity written with `coldship
// keygen > FILE` under umask 022). It is used all the same, as age and
// ssh-keygen -Y do: refusing it would stop a nightly run that worked.
func (s *streams) warnReadableByAll(what, name string) {
	if name == "" {
		return
	}
	fi, err := os.Stat(name)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o004 == 0 {
		return
	}
	fmt.Fprintf(s.err, "coldship: warning: %s %s can be read by every user of this machine (mode %04o): chmod 600 %s\n",
		what, name, fi.Mode().Perm(), name)
}

// missingIsUsage makes a passphrase file that does not exist (or cannot
// be read) a usage error (exit 2), as a missing -R or -i file is: the
// command line names a file that is not there.
func missingIsUsage(err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
		return usageError{err}
	}
	return err
}
