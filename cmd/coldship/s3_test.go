package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/coldship/coldship/shipper/s3/s3test"
)

func TestS3RoundTrip(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "vm", "disk.img")
	os.MkdirAll(filepath.Dir(src), 0o755)
	makeImage(t, src, 40<<20, region{0, 9 << 20, "random"}, region{20 << 20, 3 << 20, "text"}, region{30 << 20, 2 << 20, "zero"})
	dest := "s3://" + srv.Bucket + "/dr/web01"
	id := strings.TrimSpace(mustRun(t, "send", filepath.Join(dir, "vm"), "--to", dest, "-r", rcpt, "--segment-size", "4M", "-q").stdout)

	r := mustRun(t, "list", dest)
	if !strings.Contains(r.stdout, id) || !strings.Contains(r.stdout, "complete") {
		t.Errorf("list over S3: %q", r.stdout)
	}
	mustRun(t, "verify", dest, id)
	mustRun(t, "verify", dest, id, "-i", key)
	out := filepath.Join(dir, "out")
	mustRun(t, "receive", dest, id, "--out", out, "-i", key, "-q")
	sameFile(t, src, filepath.Join(out, "vm", "disk.img"))
	if a, b := allocated(t, src), allocated(t, filepath.Join(out, "vm", "disk.img")); b > a {
		t.Errorf("restored image allocates %d bytes, the source %d", b, a)
	}

	// A missing object: exit 5, nothing at a final name.
	seg := filepath.Join(srv.Dir, srv.Bucket, "dr", "web01", id, "segments", "00000002")
	if err := os.Remove(seg); err != nil {
		t.Fatalf("remove a segment behind the server's back: %v", err)
	}
	out2 := filepath.Join(dir, "out2")
	if r := run(t, "receive", dest, id, "--out", out2, "-i", key); r.code != exitIntegrity {
		t.Errorf("receive with a missing segment: exit %d, want 5; %s", r.code, r.stderr)
	}
	noFinalFiles(t, out2)
	if r := run(t, "verify", dest, id); r.code != exitIntegrity {
		t.Errorf("verify with a missing segment: exit %d, want 5; %s", r.code, r.stderr)
	}

	// Wrong secret: exit 4, and the secret never printed.
	t.Setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123456789")
	for _, args := range [][]string{{"list", dest}, {"send", src, "--to", dest, "-r", rcpt}, {"receive", dest, id, "--out", out2, "-i", key}} {
		r := run(t, args...)
		if r.code != exitAuth {
			t.Errorf("%s with a wrong secret: exit %d, want 4; %s", args[0], r.code, r.stderr)
		}
		if strings.Contains(r.stderr, "not-the-secret") || strings.Contains(r.stderr, srv.SecretKey) {
			t.Errorf("%s printed a secret: %s", args[0], r.stderr)
		}
	}
}

func TestS3InterruptedSendResumes(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	// A slow link, so that the server can be killed in the middle.
	t.Setenv("AWS_ENDPOINT_URL", srv.SlowProxy(t, 6<<20))
	key, rcpt := keypair(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	makeImage(t, src, 24<<20, region{0, 24 << 20, "random"})
	dest := "s3://" + srv.Bucket + "/dr"
	args := []string{"send", src, "--to", dest, "-r", rcpt, "--segment-size", "2M", "--streams", "2", "--retries", "0", "-q"}

	done := make(chan result, 1)
	go func() { done <- runCtx(t, context.Background(), nil, args...) }()
	// Kill the server once a few segments are complete.
	deadline := time.Now().Add(60 * time.Second)
	for {
		segs, _ := filepath.Glob(filepath.Join(srv.Dir, srv.Bucket, "dr", "*", "segments", "0*"))
		if len(segs) >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no segment reached the server in time")
		}
		time.Sleep(20 * time.Millisecond)
	}
	srv.Stop()
	r := <-done
	if r.code == 0 {
		t.Fatal("send succeeded although the server was killed")
	}
	if !strings.Contains(r.stderr, "run the same command again to resume") {
		t.Errorf("interrupted send does not say how to resume: %s", r.stderr)
	}
	srv.Restart()

	r = mustRun(t, args...)
	id := strings.TrimSpace(r.stdout)
	ships, _ := filepath.Glob(filepath.Join(srv.Dir, srv.Bucket, "dr", "*"))
	if len(ships) != 1 || filepath.Base(ships[0]) != id {
		t.Errorf("rerun did not resume the interrupted shipment: %v, id %s", ships, id)
	}
	out := filepath.Join(dir, "out")
	mustRun(t, "receive", dest, id, "--out", out, "-i", key, "-q")
	sameFile(t, src, filepath.Join(out, "disk.img"))
	for key := range incompleteUploads(t, srv) {
		t.Errorf("incomplete multipart upload left behind: %s", key)
	}
}

// smallS3Env starts versitygw for the command, and returns it with a
// 2 MiB image to send, the destination s3://BUCKET/dr and a recipient.
func smallS3Env(t *testing.T) (*s3test.Server, string, string, string) {
	t.Helper()
	srv := s3test.Start(t)
	srv.SetEnv(t)
	_, rcpt := keypair(t)
	src := filepath.Join(t.TempDir(), "disk.img")
	makeImage(t, src, 2<<20, region{0, 1 << 20, "random"})
	return srv, src, "s3://" + srv.Bucket + "/dr", rcpt
}

// startUpload begins a multipart upload of key, as a send that is (or
// was) writing it.
func startUpload(t *testing.T, srv *s3test.Server, key string) {
	t.Helper()
	core := minio.Core{Client: srv.Client()}
	if _, err := core.NewMultipartUpload(context.Background(), srv.Bucket, key, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
}

// incompleteUploads returns the keys of the unfinished multipart uploads
// in srv's bucket.
func incompleteUploads(t *testing.T, srv *s3test.Server) map[string]bool {
	t.Helper()
	left := map[string]bool{}
	for u := range srv.Client().ListIncompleteUploads(context.Background(), srv.Bucket, "", true) {
		if u.Err != nil {
			t.Fatalf("list incomplete uploads: %v", u.Err)
		}
		left[u.Key] = true
	}
	return left
}

// TestS3VerifyAllLeavesARunningSendAlone: verify --all does not count a
// shipment newer than the newest complete one incomplete (a send may be
// writing it), and so not its unfinished multipart uploads either, which
// it reported (exit 5) while a send ran; the uploads into an older
// incomplete shipment are still problems.
func TestS3VerifyAllLeavesARunningSendAlone(t *testing.T) {
	srv, src, dest, rcpt := smallS3Env(t)
	id := strings.TrimSpace(mustRun(t, "send", src, "--to", dest, "-r", rcpt, "-q").stdout)

	upload := func(ship string) { startUpload(t, srv, "dr/"+ship+"/segments/00000001") }
	running := time.Now().UTC().Add(time.Hour).Format("20060102T150405Z") + "-0000abcd"
	if running <= id {
		t.Fatalf("shipment %s is not newer than %s", running, id)
	}
	upload(running) // a send's first segment, going up
	if r := run(t, "verify", "--all", dest); r.code != 0 || strings.Contains(r.stderr, running) {
		t.Errorf("verify --all while a send runs: exit %d, %s; want 0, nothing said of %s", r.code, r.stderr, running)
	}
	failed := "20200101T000000Z-0000abcd"
	upload(failed) // a send that failed long ago
	if r := run(t, "verify", "--all", dest); r.code != exitIntegrity || !strings.Contains(r.stderr, failed+"/segments/00000001: an unfinished upload") ||
		strings.Contains(r.stderr, running) {
		t.Errorf("verify --all with an old unfinished upload: exit %d, %s; want 5 naming it alone", r.code, r.stderr)
	}
}

// TestS3PruneLeavesARunningSendAlone: prune keeps a shipment newer than
// the newest complete one (a send may be writing it: from another host,
// whose lock prune does not see), but aborted its unfinished multipart
// uploads as left by an earlier run, failing that send or making it send
// again. Those uploads must stay; those into an older, abandoned shipment
// are still aborted.
func TestS3PruneLeavesARunningSendAlone(t *testing.T) {
	srv, src, dest, rcpt := smallS3Env(t)
	complete := strings.TrimSpace(mustRun(t, "send", src, "--to", dest, "-r", rcpt, "-q", "--base", "none").stdout)
	running := strings.TrimSpace(mustRun(t, "send", src, "--to", dest, "-r", rcpt, "-q", "--base", "none").stdout)
	if running < complete { // sent within one second: the ids' random part decides
		running, complete = complete, running
	}
	// The newer send, caught in the middle: its header is there, its
	// manifest not yet, and a segment is going up.
	ctx := context.Background()
	if err := srv.Client().RemoveObject(ctx, srv.Bucket, "dr/"+running+"/manifest", minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	// A send with no object up yet, and one that failed long ago.
	starting := time.Now().UTC().Add(time.Minute).Format("20060102T150405Z") + "-0000abcd"
	abandoned := "20200101T000000Z-0000abcd"
	for _, ship := range []string{running, starting, abandoned} {
		startUpload(t, srv, "dr/"+ship+"/segments/00000099")
	}

	r := mustRun(t, "prune", dest, "--keep-last", "1", "--state-dir", t.TempDir())
	if !strings.Contains(r.stderr, running) || !strings.Contains(r.stderr, "a send may be running") {
		t.Errorf("prune does not keep %s as a running send's: %s", running, r.stderr)
	}
	left := incompleteUploads(t, srv)
	for _, ship := range []string{running, starting} {
		if !left["dr/"+ship+"/segments/00000099"] {
			t.Errorf("prune aborted the upload of a running send into %s: %s", ship, r.stderr)
		}
	}
	if left["dr/"+abandoned+"/segments/00000099"] {
		t.Errorf("prune left the upload into the abandoned %s: %s", abandoned, r.stderr)
	}
}

// TestS3VerifyInPieces: key-less verify of a 32 MiB segment on versitygw,
// read in pieces at once, checks it whole: a byte flipped in its middle
// exits 5, naming it.
func TestS3VerifyInPieces(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	_, rcpt := keypair(t)
	src := filepath.Join(t.TempDir(), "disk.img")
	makeImage(t, src, 40<<20, region{0, 40 << 20, "random"})
	dest := "s3://" + srv.Bucket + "/dr"
	id := strings.TrimSpace(mustRun(t, "send", src, "--to", dest, "-r", rcpt, "--segment-size", "32M", "--streams", "1", "--compress", "none", "-q").stdout)
	verify := []string{"verify", dest, id, "--streams", "4"}
	mustRun(t, verify...)
	seg := filepath.Join(srv.Dir, srv.Bucket, "dr", id, "segments", "00000001")
	b, err := os.ReadFile(seg)
	if err != nil || len(b) < 30<<20 {
		t.Fatalf("segment 1: %d bytes, %v; want about 32 MiB", len(b), err)
	}
	b[17<<20] ^= 0x01
	if err := os.WriteFile(seg, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if r := run(t, verify...); r.code != exitIntegrity || !strings.Contains(r.stderr, "segments/00000001") {
		t.Errorf("verify of a segment damaged in its middle: exit %d, want 5 naming it: %s", r.code, r.stderr)
	}
}
