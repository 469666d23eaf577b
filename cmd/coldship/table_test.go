package main

import (
	"bytes"
	"context"
	"io"
	"regexp"
	"strings"
	"testing"

	"github.com/creack/pty"
)

// runOnTerminal runs coldship in-process with stdout on a pseudo
// terminal and returns what the terminal showed, lines ended by "\n".
func runOnTerminal(t *testing.T, args ...string) string {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatalf("open a pseudo terminal: %v", err)
	}
	defer ptmx.Close()
	var screen bytes.Buffer
	copied := make(chan struct{})
	go func() {
		io.Copy(&screen, ptmx) // ends with EIO once tty is closed
		close(copied)
	}()
	var errb bytes.Buffer
	code := execute(context.Background(), args, strings.NewReader(""), tty, &errb)
	tty.Close()
	<-copied
	if code != 0 {
		t.Fatalf("coldship %s on a terminal: exit %d: %s", strings.Join(args, " "), code, errb.String())
	}
	return strings.ReplaceAll(screen.String(), "\r\n", "\n")
}

// TestTableOnTerminal checks list and show on a terminal: sizes (and the
// other values coldship formats itself) are printed as they are, while a
// label or path holding a space is still quoted.
func TestTableOnTerminal(t *testing.T) {
	dest, key, _, _ := sendSample(t, "--name", "web 01")
	size := regexp.MustCompile(`\b\d+(\.\d)? (B|KiB|MiB|GiB)\b`)
	for _, tc := range []struct {
		args   []string
		header string
		quoted string
	}{
		{[]string{"list", dest}, "SIZE", `"web 01"`},
		{[]string{"show", dest, "-i", key}, "BLAKE3", `"vm/sub/my vm.xml"`},
	} {
		screen := runOnTerminal(t, tc.args...)
		if !strings.Contains(screen, tc.header) || !strings.Contains(screen, tc.quoted) {
			t.Errorf("%s on a terminal: want a header and %s quoted:\n%s", tc.args[0], tc.quoted, screen)
		}
		if !size.MatchString(screen) {
			t.Errorf("%s on a terminal shows no IEC size:\n%s", tc.args[0], screen)
		}
		if m := regexp.MustCompile(`"` + size.String() + `"`).FindString(screen); m != "" {
			t.Errorf("%s on a terminal quotes the size %s:\n%s", tc.args[0], m, screen)
		}
	}
}
