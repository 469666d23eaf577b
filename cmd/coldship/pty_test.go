package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// TestProgressBarOnTerminal runs the built command with stderr on a
// pseudo terminal and reads the bar it draws: IEC units only, and a rate
// that counts bytes shipped, not the holes skipped, so that a 1 GiB sparse
// image holding 4 MiB of data, sent under --bwlimit 1M, never shows a
// rate far above the limit.
func TestProgressBarOnTerminal(t *testing.T) {
	bin := coldshipBinary(t)
	_, rcpt := keypair(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	makeImage(t, img, 1<<30, region{0, 2 << 20, "random"}, region{700 << 20, 2 << 20, "random"})

	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatalf("open a pseudo terminal: %v", err)
	}
	defer ptmx.Close()
	pty.Setsize(ptmx, &pty.Winsize{Rows: 24, Cols: 160})
	cmd := exec.Command(bin, "send", img, "--to", filepath.Join(dir, "dest"), "-r", rcpt, "--bwlimit", "1M", "--compress", "none")
	cmd.Stderr = tty
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Env = append(os.Environ(), "TERM=xterm")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tty.Close()
	var screen bytes.Buffer
	copied := make(chan struct{})
	go func() {
		io.Copy(&screen, ptmx) // ends with EIO once the command exits
		close(copied)
	}()
	err = cmd.Wait()
	<-copied
	drawn := screen.String()
	if err != nil {
		t.Fatalf("send under a pty: %v\n%s", err, drawn)
	}
	if !strings.Contains(drawn, "\r") || !strings.Contains(drawn, "send ") || !strings.Contains(drawn, "[") {
		t.Fatalf("no progress bar was drawn:\n%q", drawn)
	}
	if m := regexp.MustCompile(`\b[0-9.]+ ?[KMGT]B\b`).FindString(drawn); m != "" {
		t.Errorf("the bar shows an SI unit %q; want IEC (KiB, MiB, GiB):\n%q", m, drawn)
	}
	if !strings.Contains(drawn, "1.0 GiB") {
		t.Errorf("the bar or summary does not show the 1.0 GiB image in IEC units:\n%q", drawn)
	}
	rates := regexp.MustCompile(`([0-9.]+) (B|KiB|MiB|GiB)/s`).FindAllStringSubmatch(drawn, -1)
	if len(rates) == 0 {
		t.Fatalf("the bar shows no rate:\n%q", drawn)
	}
	unit := map[string]float64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
	for _, m := range rates {
		v, _ := strconv.ParseFloat(m[1], 64)
		if rate := v * unit[m[2]]; rate > 2<<20 {
			t.Errorf("the bar shows %s %s/s under --bwlimit 1M: holes or buffered reads counted as moved bytes\n%q", m[1], m[2], drawn)
		}
	}
	// Here the 4 MiB of data are read at once and shipped at 1 MiB/s: the
	// bar is full while the records go up, and says so rather than
	// claiming an ETA of 0s (TestProgressFinishing).
	if !strings.Contains(drawn, "ETA ") && !strings.Contains(drawn, "finishing") {
		t.Errorf("the bar shows neither an ETA nor that it is finishing:\n%q", drawn)
	}
}

// TestPromptCtrlC types Ctrl-C at the passphrase prompt of a send run on
// a pseudo terminal: the first one ends the run (exit 130) and leaves the
// terminal echoing, as ssh and age do. A prompt that waited for its read
// kept the process until a second Ctrl-C, which exited with echo off.
func TestPromptCtrlC(t *testing.T) {
	bin := coldshipBinary(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	makeImage(t, img, 4<<20, region{0, 1 << 20, "random"})

	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatalf("open a pseudo terminal: %v", err)
	}
	defer ptmx.Close()
	defer tty.Close()
	cmd := exec.Command(bin, "send", img, "--to", filepath.Join(dir, "dest"))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "COLDSHIP_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "TERM=xterm", "XDG_STATE_HOME="+t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var screen bytes.Buffer
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := ptmx.Read(b)
			mu.Lock()
			screen.Write(b[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	shown := func() string { mu.Lock(); defer mu.Unlock(); return screen.String() }
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(shown(), "Passphrase for the shipment: ") {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no passphrase prompt within a minute:\n%q", shown())
		}
		time.Sleep(20 * time.Millisecond)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ptmx.Write([]byte{3}) // Ctrl-C: SIGINT to the foreground process group
	var werr error
	select {
	case werr = <-exited:
	case <-time.After(30 * time.Second):
		ptmx.Write([]byte{3})
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		t.Errorf("the prompt did not end at the first Ctrl-C:\n%q", shown())
	}
	if werr != nil {
		var ee *exec.ExitError
		if !errors.As(werr, &ee) || ee.ExitCode() != 130 {
			t.Errorf("exit %v after Ctrl-C at the prompt, want 130:\n%q", werr, shown())
		}
	}
	tio, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if tio.Lflag&unix.ECHO == 0 {
		t.Errorf("the terminal was left without echo after Ctrl-C at the prompt")
	}
	if _, err := os.Stat(filepath.Join(dir, "dest")); err == nil {
		entries, _ := os.ReadDir(filepath.Join(dir, "dest"))
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), ".") {
				t.Errorf("an interrupted prompt left %s at the destination", e.Name())
			}
		}
	}
}
