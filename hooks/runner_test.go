package hooks

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseHook(t *testing.T) {
	tests := []struct {
		name, flag string
		want       Hook
		err        string
	}{
		{"simple", "pre-send=virsh shutdown vm1", Hook{PreSend, "virsh shutdown vm1"}, ""},
		{"equals in command", "post-receive=FOO=1 ./start.sh", Hook{PostReceive, "FOO=1 ./start.sh"}, ""},
		{"every phase parses", "pre-switchover=true", Hook{PreSwitchover, "true"}, ""},
		{"on-failure", "on-failure=logger -t coldship \"$COLDSHIP_ERROR\"", Hook{OnFailure, "logger -t coldship \"$COLDSHIP_ERROR\""}, ""},
		{"no equals", "pre-send", Hook{}, "want PHASE=COMMAND"},
		{"unknown phase", "pre-sned=true", Hook{}, `unknown hook phase "pre-sned"`},
		{"empty command", "post-send=  ", Hook{}, "empty command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseHook(tt.flag)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseHook(%q) error %v, want %q", tt.flag, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseHook(%q) = %+v, %v; want %+v", tt.flag, got, err, tt.want)
			}
		})
	}
	for _, p := range Phases {
		if got, err := ParsePhase(string(p)); err != nil || got != p {
			t.Errorf("ParsePhase(%q) = %q, %v", p, got, err)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the hook output goroutine and the
// test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRunEnvironmentEveryPhase(t *testing.T) {
	// A coldship run from a hook must not pass its own values on.
	t.Setenv("COLDSHIP_OUT", "inherited")
	t.Setenv("COLDSHIP_HOOKS_TEST_KEEP", "kept")
	// Nor its secrets, in any phase.
	t.Setenv("COLDSHIP_PASSPHRASE", "correct horse battery staple")

	vars := []string{"PHASE", "SHIPMENT", "DEST", "OUT", "FILES", "ERROR", "HOOKS_TEST_KEEP", "PASSPHRASE"}
	tests := []struct {
		phase Phase
		env   Env
		want  map[string]string // "unset" for an unset variable
	}{
		{PreSend, Env{Shipment: "vm1-2024", Dest: "sftp://backup/x", Files: []string{"/img/a.img", "/img/b b.img"}},
			map[string]string{"SHIPMENT": "vm1-2024", "DEST": "sftp://backup/x", "OUT": "unset", "FILES": "/img/a.img\n/img/b b.img", "ERROR": "unset"}},
		{PostSend, Env{Shipment: "vm1-2024", Dest: "/mnt/ship", Files: []string{"/img/a.img"}},
			map[string]string{"SHIPMENT": "vm1-2024", "DEST": "/mnt/ship", "OUT": "unset", "FILES": "/img/a.img", "ERROR": "unset"}},
		{PreReceive, Env{Shipment: "vm1-2024", Dest: "/mnt/ship", Out: "/var/lib/images"},
			map[string]string{"SHIPMENT": "vm1-2024", "DEST": "/mnt/ship", "OUT": "/var/lib/images", "FILES": "unset", "ERROR": "unset"}},
		{PostReceive, Env{Shipment: "vm1-2024", Dest: "/mnt/ship", Out: "/var/lib/images", Files: []string{"/var/lib/images/a.img"}},
			map[string]string{"SHIPMENT": "vm1-2024", "DEST": "/mnt/ship", "OUT": "/var/lib/images", "FILES": "/var/lib/images/a.img", "ERROR": "unset"}},
		{PreSwitchover, Env{Shipment: "vm1-2024", Dest: "/mnt/ship", Out: "/var/lib/images", Files: []string{"/var/lib/images/a.img"}},
			map[string]string{"SHIPMENT": "vm1-2024", "DEST": "/mnt/ship", "OUT": "/var/lib/images", "FILES": "/var/lib/images/a.img", "ERROR": "unset"}},
		{OnFailure, Env{Shipment: "vm1-2024", Dest: "/mnt/ship", Error: "send: disk full\nsecond line"},
			map[string]string{"SHIPMENT": "vm1-2024", "DEST": "/mnt/ship", "OUT": "unset", "FILES": "unset", "ERROR": "send: disk full\nsecond line"}},
	}
	if len(tests) != len(Phases) {
		t.Fatalf("%d cases for %d phases", len(tests), len(Phases))
	}
	for _, tt := range tests {
		t.Run(string(tt.phase), func(t *testing.T) {
			dir := t.TempDir()
			var script strings.Builder
			for _, v := range vars {
				script.WriteString(`printf %s "${COLDSHIP_` + v + `-unset}" > "` + filepath.Join(dir, v) + `"; `)
			}
			r := &Runner{Hooks: []Hook{{tt.phase, script.String()}}, Stderr: &syncBuffer{}}
			if err := r.Run(context.Background(), tt.phase, tt.env); err != nil {
				t.Fatal(err)
			}
			tt.want["PHASE"] = string(tt.phase)
			tt.want["HOOKS_TEST_KEEP"] = "kept"
			tt.want["PASSPHRASE"] = "unset"
			for _, v := range vars {
				got, err := os.ReadFile(filepath.Join(dir, v))
				if err != nil {
					t.Fatal(err)
				}
				if string(got) != tt.want[v] {
					t.Errorf("COLDSHIP_%s = %q, want %q", v, got, tt.want[v])
				}
			}
		})
	}
}

func TestRunOnlyItsPhase(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	r := &Runner{Hooks: []Hook{
		{PreSend, "echo pre-send >> " + log},
		{PostSend, "echo post-send >> " + log},
		{PreSend, "echo pre-send-2 >> " + log},
	}, Stderr: &syncBuffer{}}
	if err := r.Run(context.Background(), PreSend, Env{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(log); string(got) != "pre-send\npre-send-2\n" {
		t.Errorf("ran %q", got)
	}
	if !r.Has(PreSend) || !r.Has(PostSend) || r.Has(OnFailure) {
		t.Errorf("Has: pre-send %v, post-send %v, on-failure %v", r.Has(PreSend), r.Has(PostSend), r.Has(OnFailure))
	}
	var zero Runner
	if zero.Has(PreSend) {
		t.Error("zero Runner has hooks")
	}
	if err := zero.Run(context.Background(), PreSend, Env{}); err != nil {
		t.Error(err)
	}
}

func TestRunOutputPrefixed(t *testing.T) {
	var stderr syncBuffer
	r := &Runner{Hooks: []Hook{
		{PostSend, `echo to stdout; echo to stderr >&2; printf 'two\nlines\n'; printf 'no newline'`},
		{PostSend, `echo second hook`},
	}, Stderr: &stderr}
	if err := r.Run(context.Background(), PostSend, Env{}); err != nil {
		t.Fatal(err)
	}
	want := "[post-send] to stdout\n[post-send] to stderr\n[post-send] two\n[post-send] lines\n[post-send] no newline\n[post-send] second hook\n"
	if got := stderr.String(); got != want {
		t.Errorf("stderr:\n%s\nwant:\n%s", got, want)
	}
}

func TestLinePrefixerLongLine(t *testing.T) {
	var out bytes.Buffer
	p := &linePrefixer{w: &out, prefix: "[x] "}
	long := strings.Repeat("a", maxLine+10)
	p.Write([]byte(long[:100]))
	p.Write([]byte(long[100:] + "\nend"))
	p.flush()
	want := "[x] " + long[:maxLine] + "\n[x] " + long[maxLine:] + "\n[x] end\n"
	if got := out.String(); got != want {
		t.Errorf("got %d bytes, want %d", len(got), len(want))
	}
}

func writeExec(t *testing.T, path, script string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+script+"\n"), mode); err != nil {
		t.Fatal(err)
	}
}

func TestHooksDirOrder(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(t.TempDir(), "log")
	hook := func(name string) string { return `echo "` + name + ` $COLDSHIP_PHASE" >> ` + log }
	writeExec(t, filepath.Join(dir, "pre-send"), hook("single"), 0o755)
	writeExec(t, filepath.Join(dir, "pre-send.d", "10-second"), hook("10-second"), 0o755)
	writeExec(t, filepath.Join(dir, "pre-send.d", "02-first"), hook("02-first"), 0o700)
	writeExec(t, filepath.Join(dir, "pre-send.d", "20-third.sh"), hook("20-third.sh"), 0o755)
	writeExec(t, filepath.Join(dir, "pre-send.d", "B-upper-before-lower"), hook("B-upper"), 0o755)
	writeExec(t, filepath.Join(dir, "pre-send.d", "a-lower"), hook("a-lower"), 0o755)
	writeExec(t, filepath.Join(dir, "pre-send.d", ".hidden"), hook("hidden"), 0o755)
	writeExec(t, filepath.Join(dir, "pre-send.d", "10-second~"), hook("backup"), 0o755)
	writeExec(t, filepath.Join(dir, "pre-send.d", "15-not-executable"), hook("not-executable"), 0o644)
	writeExec(t, filepath.Join(dir, "pre-send.d", "16-subdir", "x"), hook("subdir"), 0o755)
	writeExec(t, filepath.Join(dir, "post-send.d", "01-other-phase"), hook("other-phase"), 0o755)

	var stderr syncBuffer
	r := &Runner{Hooks: []Hook{{PreSend, hook("flag")}}, Dir: dir, Stderr: &stderr}
	if err := r.Run(context.Background(), PreSend, Env{}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(log)
	want := "flag pre-send\nsingle pre-send\n02-first pre-send\n10-second pre-send\n20-third.sh pre-send\nB-upper pre-send\na-lower pre-send\n"
	if string(got) != want {
		t.Errorf("ran:\n%s\nwant:\n%s", got, want)
	}
	for _, skipped := range []string{"15-not-executable: not executable", "16-subdir: not a regular file"} {
		if !strings.Contains(stderr.String(), skipped) {
			t.Errorf("stderr does not note %q:\n%s", skipped, stderr.String())
		}
	}
	if strings.Contains(stderr.String(), "hidden") || strings.Contains(stderr.String(), "~") {
		t.Errorf("stderr notes an ignored file:\n%s", stderr.String())
	}

	r = &Runner{Dir: dir}
	if !r.Has(PreSend) || !r.Has(PostSend) || r.Has(PreReceive) {
		t.Errorf("Has: pre-send %v, post-send %v, pre-receive %v", r.Has(PreSend), r.Has(PostSend), r.Has(PreReceive))
	}

	// A relative dir must not make exec search $PATH.
	t.Chdir(dir)
	r = &Runner{Dir: ".", Stderr: &syncBuffer{}}
	os.Remove(log)
	if err := r.Run(context.Background(), PreSend, Env{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(log); !strings.HasPrefix(string(got), "single pre-send\n") {
		t.Errorf("relative dir ran:\n%s", got)
	}
}

func TestHooksDirMissing(t *testing.T) {
	r := &Runner{Dir: filepath.Join(t.TempDir(), "nope")}
	err := r.Run(context.Background(), PreSend, Env{})
	if !errors.Is(err, ErrHook) || !strings.Contains(err.Error(), "nope") {
		t.Errorf("Run with a missing hooks dir: %v", err)
	}
	if !r.Has(PreSend) {
		t.Error("Has is false for a hooks dir that cannot be read, so Run would not report it")
	}
}

func TestFailingHook(t *testing.T) {
	dir := t.TempDir()
	ran := filepath.Join(dir, "ran")
	writeExec(t, filepath.Join(dir, "post-receive.d", "10-fails"), "echo boom >&2; exit 7", 0o755)
	writeExec(t, filepath.Join(dir, "post-receive.d", "20-after"), "touch "+ran, 0o755)

	tests := []struct {
		name   string
		runner *Runner
		hook   string
		status string
	}{
		{"flag", &Runner{Hooks: []Hook{{PostReceive, "echo boom >&2; exit 3"}, {PostReceive, "touch " + ran}}},
			"echo boom >&2; exit 3", "exit status 3"},
		{"file", &Runner{Dir: dir}, filepath.Join(dir, "post-receive.d", "10-fails"), "exit status 7"},
		{"not found", &Runner{Hooks: []Hook{{PostReceive, "/nonexistent/command"}, {PostReceive, "touch " + ran}}},
			"/nonexistent/command", "exit status 127"},
		{"killed by a signal", &Runner{Hooks: []Hook{{PostReceive, "kill -TERM $$"}, {PostReceive, "touch " + ran}}},
			"kill -TERM $$", "signal: terminated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(ran)
			var stderr syncBuffer
			tt.runner.Stderr = &stderr
			err := tt.runner.Run(context.Background(), PostReceive, Env{})
			if !errors.Is(err, ErrHook) {
				t.Fatalf("Run: %v, want ErrHook", err)
			}
			var he *Error
			if !errors.As(err, &he) || he.Phase != PostReceive || he.Hook != tt.hook || he.Status != tt.status {
				t.Errorf("error %+v, want hook %q, status %q", he, tt.hook, tt.status)
			}
			for _, s := range []string{"post-receive", tt.hook, tt.status} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not name %q", err, s)
				}
			}
			if _, err := os.Stat(ran); err == nil {
				t.Error("a hook after the failing one ran")
			}
		})
	}
}

// runWithin fails the test if Run does not return within limit: a guard
// against a hang, not a measure of speed.
func runWithin(t *testing.T, limit time.Duration, ctx context.Context, r *Runner, phase Phase) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, phase, Env{}) }()
	select {
	case err := <-done:
		return err
	case <-time.After(limit):
		t.Fatalf("Run still running after %s", limit)
		return nil
	}
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// waitDead waits a while for pid to be gone: SIGKILL is not instant.
func waitDead(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 200 && alive(pid); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if alive(pid) {
		t.Errorf("pid %d survived the kill", pid)
	}
}

func TestHungHookKilled(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	// sleep runs as a grandchild, in the background, holding the output
	// pipe: killing sh alone would leave it and the pipe behind.
	r := &Runner{
		Hooks:   []Hook{{PreSend, "sleep 1000 & echo $! > " + pidFile + "; echo started; wait"}},
		Timeout: time.Second,
		Stderr:  &syncBuffer{},
	}
	err := runWithin(t, 20*time.Second, context.Background(), r, PreSend)
	var he *Error
	if !errors.As(err, &he) || !errors.Is(err, ErrHook) || he.Status != "killed after 1s" {
		t.Fatalf("Run: %v, want killed after 1s", err)
	}
	if !strings.Contains(err.Error(), "sleep 1000") {
		t.Errorf("error %q does not name the hook", err)
	}
	waitDead(t, readPID(t, pidFile))
}

func TestHookLeavesOutputOpen(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	// A process that escaped the hook's process group keeps the output
	// pipe open after the hook succeeded: Run must not wait for it.
	r := &Runner{
		Hooks:  []Hook{{PostReceive, "setsid sh -c 'echo $$ > " + pidFile + "; exec sleep 1000' & while [ ! -s " + pidFile + " ]; do sleep 0.01; done"}},
		Stderr: &syncBuffer{},
	}
	err := runWithin(t, 20*time.Second, context.Background(), r, PostReceive)
	pid := readPID(t, pidFile)
	defer func() {
		if p, err := os.FindProcess(pid); err == nil {
			p.Kill()
		}
	}()
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestRunCanceled(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := &Runner{Hooks: []Hook{{PreReceive, "echo $$ > " + pidFile + "; exec sleep 1000"}}, Stderr: &syncBuffer{}}
	go func() {
		for {
			if fi, err := os.Stat(pidFile); err == nil && fi.Size() > 0 {
				cancel()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	err := runWithin(t, 20*time.Second, ctx, r, PreReceive)
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrHook) {
		t.Fatalf("Run: %v, want context.Canceled and not ErrHook", err)
	}
	waitDead(t, readPID(t, pidFile))
}

// TestKillRunning: a hook that ignores the context (an on-failure hook
// runs on after an interruption) is killed, with what it started, by
// KillRunning, and a finished hook is not counted.
func TestKillRunning(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	r := &Runner{
		Hooks:  []Hook{{OnFailure, "sleep 1000 & echo $! > " + pidFile + "; wait"}},
		Stderr: &syncBuffer{},
	}
	go func() {
		for {
			if fi, err := os.Stat(pidFile); err == nil && fi.Size() > 0 {
				if n := KillRunning(); n != 1 {
					t.Errorf("KillRunning killed %d hooks, want 1", n)
				}
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	err := runWithin(t, 20*time.Second, context.WithoutCancel(context.Background()), r, OnFailure)
	if !errors.Is(err, ErrHook) || !strings.Contains(err.Error(), "signal: killed") {
		t.Errorf("Run: %v, want the hook killed", err)
	}
	waitDead(t, readPID(t, pidFile))
	if n := KillRunning(); n != 0 {
		t.Errorf("KillRunning after the hook ended killed %d, want 0", n)
	}
}

// TestSecretsWithheld: neither a --hook, nor a hooks-dir file, nor virsh
// sees COLDSHIP_PASSPHRASE; the user's own credentials stay, as a hook
// that copies to a bucket needs them.
func TestSecretsWithheld(t *testing.T) {
	t.Setenv("COLDSHIP_PASSPHRASE", "correct horse battery staple")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "the hook's own")
	dir, out := t.TempDir(), t.TempDir()
	writeExec(t, filepath.Join(dir, "post-send"), "env > "+filepath.Join(out, "dir-hook"), 0o755)
	r := &Runner{Hooks: []Hook{{PostSend, "env > " + filepath.Join(out, "flag-hook")}}, Dir: dir, Stderr: &syncBuffer{}}
	if err := r.Run(context.Background(), PostSend, Env{Dest: "/mnt/ship"}); err != nil {
		t.Fatal(err)
	}
	virsh := filepath.Join(dir, "virsh")
	writeExec(t, virsh, "env > "+filepath.Join(out, "virsh"), 0o755)
	// It fails (virsh printed no XML): only its environment matters here.
	(&Libvirt{Virsh: virsh}).Domain(context.Background(), "web01")

	for _, name := range []string{"flag-hook", "dir-hook", "virsh"} {
		env, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatalf("%s did not run: %v", name, err)
		}
		// Not the whole environment in the failure: CI logs are public.
		if strings.Contains(string(env), "COLDSHIP_PASSPHRASE") || strings.Contains(string(env), "horse") {
			t.Errorf("%s got the passphrase", name)
		}
		if !strings.Contains("\n"+string(env), "\nAWS_SECRET_ACCESS_KEY=the hook's own\n") {
			t.Errorf("%s lost AWS_SECRET_ACCESS_KEY", name)
		}
	}
}
