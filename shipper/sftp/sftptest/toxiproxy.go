package sftptest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/build"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Toxiproxy is a running toxiproxy server (v2.12.0, installed by
// scripts/install-test-deps.sh): a TCP proxy in another process that adds
// latency to what it forwards, as the benchmarks' long links do.
type Toxiproxy struct {
	t   testing.TB
	api string
}

// toxiproxyBinary finds toxiproxy-server on PATH or in $GOPATH/bin, where
// the install script puts it.
func toxiproxyBinary() (string, error) {
	if p, err := exec.LookPath("toxiproxy-server"); err == nil {
		return p, nil
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		gopath = build.Default.GOPATH
	}
	p := filepath.Join(filepath.SplitList(gopath)[0], "bin", "toxiproxy-server")
	if _, err := os.Stat(p); err != nil {
		return "", err
	}
	return p, nil
}

// StartToxiproxy starts toxiproxy on a free loopback port; it is stopped
// in t.Cleanup. Without it the test is skipped, or fails when CI=true.
func StartToxiproxy(t testing.TB) *Toxiproxy {
	t.Helper()
	bin, err := toxiproxyBinary()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("toxiproxy is required in CI: %v (scripts/install-test-deps.sh)", err)
		}
		t.Skipf("no toxiproxy-server (%v); run scripts/install-test-deps.sh", err)
	}
	port := freePort(t)
	logFile, err := os.Create(filepath.Join(t.TempDir(), "toxiproxy.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "-host", "127.0.0.1", "-port", strconv.Itoa(port))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start toxiproxy: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(logFile.Name())
			t.Fatalf("toxiproxy exited: %s", b)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("toxiproxy does not answer after 10s")
		}
	}
	return &Toxiproxy{t: t, api: "http://" + addr}
}

// Proxy forwards a new loopback port to upstream with oneWay of latency
// in each direction, and returns the port's address.
func (x *Toxiproxy) Proxy(name, upstream string, oneWay time.Duration) string {
	x.t.Helper()
	var p struct {
		Listen string `json:"listen"`
	}
	x.post("/proxies", map[string]any{"name": name, "listen": "127.0.0.1:0", "upstream": upstream, "enabled": true}, &p)
	for _, stream := range []string{"upstream", "downstream"} {
		x.post("/proxies/"+name+"/toxics", map[string]any{
			"name": "latency_" + stream, "type": "latency", "stream": stream,
			"attributes": map[string]any{"latency": oneWay.Milliseconds(), "jitter": 0},
		}, nil)
	}
	return p.Listen
}

func (x *Toxiproxy) post(path string, body, out any) {
	x.t.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post(x.api+path, "application/json", bytes.NewReader(b))
	if err != nil {
		x.t.Fatalf("toxiproxy %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		x.t.Fatalf("toxiproxy %s: %s", path, resp.Status)
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			x.t.Fatalf("toxiproxy %s: %v", path, err)
		}
	}
}

// SessionsPerConnection counts, from sshd's log (Verbose), the SFTP
// sessions each connection started, by the client port of the connection.
func (s *Server) SessionsPerConnection() map[string]int {
	n := map[string]int{}
	for _, line := range bytes.Split([]byte(s.Log()), []byte("\n")) {
		var user, host, port string
		var id int
		if _, err := fmt.Sscanf(string(line), "Starting session: subsystem 'sftp' for %s from %s port %s id %d", &user, &host, &port, &id); err == nil {
			n[port]++
		}
	}
	return n
}
