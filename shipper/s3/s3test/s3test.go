// Package s3test runs a real S3 server for tests: the Versity S3 Gateway
// (versitygw) with its posix backend in a temporary directory, listening on
// a loopback port. Install it with
//
//	go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
//
// Start skips the test when the binary is missing, and fails it when the
// environment says CI=true.
package s3test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/coldship/coldship/shipper/shippertest"
)

// Region is the region the server answers for.
const Region = "us-east-1"

// Server is a running versitygw.
type Server struct {
	Endpoint  string // "http://127.0.0.1:port"
	Bucket    string // created by Start
	AccessKey string
	SecretKey string
	Dir       string // posix backend root: the bucket is the directory Dir/Bucket

	t    testing.TB
	bin  string
	addr string

	iamDir string // "": single-account mode

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	log  shippertest.Buffer
}

// Start starts versitygw with fresh root credentials and an empty bucket.
// It is killed when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, false)
}

// StartWithUsers is Start with versitygw's internal IAM service, so that
// AddUser can create accounts other than root.
func StartWithUsers(t testing.TB) *Server {
	t.Helper()
	return start(t, true)
}

func start(t testing.TB, users bool) *Server {
	t.Helper()
	bin := findBinary()
	if bin == "" {
		const msg = "versitygw not found in PATH, GOBIN or GOPATH/bin; install it with: go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	s := &Server{
		Bucket:    "coldship-test",
		AccessKey: "AK" + strings.ToUpper(randomHex(9)),
		SecretKey: randomHex(20),
		Dir:       t.TempDir(),
		t:         t,
		bin:       bin,
	}
	if users {
		s.iamDir = t.TempDir()
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("versitygw output:\n%s", s.log.String())
		}
	})
	// The port is picked free and then handed over, so another process
	// may take it in between: try a few.
	var err error
	for range 5 {
		s.addr, err = freePort()
		if err != nil {
			t.Fatalf("s3test: %v", err)
		}
		s.Endpoint = "http://" + s.addr
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("s3test: start versitygw: %v\n%s", err, s.log.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Client().MakeBucket(ctx, s.Bucket, minio.MakeBucketOptions{Region: Region}); err != nil {
		t.Fatalf("s3test: create bucket: %v", err)
	}
	return s
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	args := []string{"--port", s.addr, "--access", s.AccessKey, "--secret", s.SecretKey, "--region", Region, "--quiet"}
	if s.iamDir != "" {
		args = append(args, "--iam-dir", s.iamDir)
	}
	cmd := exec.Command(s.bin, append(args, "posix", s.Dir)...)
	// The credentials go by flag, so nothing of the test's environment
	// (AWS_*, VGW_*) may change how the server runs.
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + s.Dir}
	cmd.Stdout = &s.log
	cmd.Stderr = &s.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-done:
			return errors.New("versitygw exited during start")
		default:
		}
		if answers(s.Endpoint) {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-done
			return errors.New("versitygw did not answer within 15s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.cmd, s.done = cmd, done
	return nil
}

// answers reports whether an HTTP server answers at endpoint (with any
// status: an unsigned request is refused).
func answers(endpoint string) bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(endpoint + "/")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return true
}

// Stop kills the server at once, as a crash or a lost network would stop
// it; the data directory is kept.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.done
	s.cmd, s.done = nil, nil
}

// Restart stops the server if it runs and starts it again on the same
// port, directory and credentials.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	var err error
	for range 50 { // the port may linger briefly
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("s3test: restart versitygw: %v\n%s", err, s.log.String())
}

// SetEnv points the standard AWS environment at the server for the rest of
// the test: credentials, region and endpoint, with the shared credentials
// files, profiles and instance roles of the machine switched off.
func (s *Server) SetEnv(t testing.TB) {
	none := filepath.Join(t.TempDir(), "none")
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID":                      s.AccessKey,
		"AWS_SECRET_ACCESS_KEY":                  s.SecretKey,
		"AWS_SESSION_TOKEN":                      "",
		"AWS_REGION":                             Region,
		"AWS_DEFAULT_REGION":                     "",
		"AWS_ENDPOINT_URL":                       s.Endpoint,
		"AWS_ENDPOINT_URL_S3":                    "",
		"AWS_PROFILE":                            "",
		"AWS_SHARED_CREDENTIALS_FILE":            none,
		"AWS_CONFIG_FILE":                        none,
		"AWS_EC2_METADATA_DISABLED":              "true",
		"AWS_WEB_IDENTITY_TOKEN_FILE":            "",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "",
		"AWS_CONTAINER_CREDENTIALS_FULL_URI":     "",
	} {
		t.Setenv(k, v)
	}
}

// AddUser creates an account with the role "user" (which owns no bucket
// and has no grant on the root's) on a server from StartWithUsers, and
// returns its credentials.
func (s *Server) AddUser(t testing.TB) (accessKey, secretKey string) {
	t.Helper()
	accessKey, secretKey = "AKUSER"+strings.ToUpper(randomHex(6)), randomHex(20)
	cmd := exec.Command(s.bin, "admin", "--endpoint-url", s.Endpoint,
		"create-user", "--access", accessKey, "--secret", secretKey, "--role", "user")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + s.Dir,
		"ADMIN_ACCESS_KEY_ID=" + s.AccessKey, "ADMIN_SECRET_ACCESS_KEY=" + s.SecretKey}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("s3test: create user: %v\n%s", err, out)
	}
	return accessKey, secretKey
}

// Client returns a client of the server with the root credentials, for
// tests that look behind a Transport.
func (s *Server) Client() *minio.Client {
	c, err := minio.New(strings.TrimPrefix(s.Endpoint, "http://"), &minio.Options{
		Creds:        credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Region:       Region,
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		s.t.Fatalf("s3test: client: %v", err)
	}
	return c
}

func findBinary() string {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	var dirs []string
	if out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output(); err == nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) > 0 && lines[0] != "" {
			dirs = append(dirs, lines[0])
		}
		if len(lines) > 1 {
			for _, p := range filepath.SplitList(lines[1]) {
				dirs = append(dirs, filepath.Join(p, "bin"))
			}
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go", "bin"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, "versitygw")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
