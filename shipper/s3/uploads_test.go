package s3

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/coldship/coldship/shipper"
	"github.com/coldship/coldship/shipper/s3/s3test"
)

// killedPutEnv, when set, makes the test binary a process that starts a
// multipart Put under the prefix it names and blocks in it forever, to be
// killed by TestLeftoverUploadOfKilledProcess.
const killedPutEnv = "COLDSHIP_TEST_S3_KILLED_PUT"

// killedShipment is the shipment folder the killed process uploads into.
const killedShipment = "20261122T020000Z-0000000c"

func TestMain(m *testing.M) {
	if prefix := os.Getenv(killedPutEnv); prefix != "" {
		os.Exit(blockInPut(prefix))
	}
	os.Exit(m.Run())
}

// blockInPut puts an object whose source yields two parts and then never
// ends.
func blockInPut(prefix string) int {
	tr, err := New(context.Background(), Config{Bucket: os.Getenv("COLDSHIP_TEST_S3_BUCKET"), Prefix: prefix, Streams: 2})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	src := io.MultiReader(generated(2*partSize+1, 1), blockingReader{})
	fmt.Fprintln(os.Stderr, tr.Put(context.Background(), killedShipment+"/segments/00000001", src, -1))
	return 1
}

type blockingReader struct{}

func (blockingReader) Read([]byte) (int, error) { select {} }

// TestLeftoverUploadOfKilledProcess kills a process in the middle of a
// multipart Put (as kill -9 of coldship send would): its upload stays, with
// parts, until AbortLeftoverUploads, given a time after it began, removes
// it.
func TestLeftoverUploadOfKilledProcess(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), killedPutEnv+"=killed", "COLDSHIP_TEST_S3_BUCKET="+srv.Bucket)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "killed"})
	ctx := context.Background()
	core := minio.Core{Client: srv.Client()}
	// Wait until the child has uploaded a part (or died).
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var up shipper.Upload
	for deadline := time.Now().Add(time.Minute); ; {
		var ups []shipper.Upload
		if err := tr.Uploads(ctx, "", func(u shipper.Upload) error { ups = append(ups, u); return nil }); err != nil {
			t.Fatal(err)
		}
		if len(ups) == 1 {
			parts, err := core.ListObjectParts(ctx, srv.Bucket, "killed/"+ups[0].Name, ups[0].ID, 0, 100)
			if err == nil && len(parts.ObjectParts) > 0 {
				up = ups[0]
				break
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("the process putting the object exited: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the process started no upload within a minute")
		}
	}
	cmd.Process.Kill()
	<-exited

	if up.Name != killedShipment+"/segments/00000001" || up.ID == "" || up.Initiated.IsZero() {
		t.Errorf("Uploads shows %+v", up)
	}
	var logged []string
	logf := func(format string, args ...any) { logged = append(logged, fmt.Sprintf(format, args...)) }
	// Begun after the cut-off: left alone, as a running send's would be.
	if n, err := shipper.AbortLeftoverUploads(ctx, tr, killedShipment+"/", up.Initiated.Add(-time.Hour), logf); n != 0 || err != nil {
		t.Errorf("AbortLeftoverUploads before the upload began: %d, %v; want 0", n, err)
	}
	if n, err := shipper.AbortLeftoverUploads(ctx, tr, "other/", up.Initiated.Add(time.Hour), logf); n != 0 || err != nil {
		t.Errorf("AbortLeftoverUploads under another prefix: %d, %v; want 0", n, err)
	}
	if u := incompleteUploads(t, srv); len(u) != 1 {
		t.Fatalf("uploads %v, want the killed process's", u)
	}
	n, err := shipper.AbortLeftoverUploads(ctx, tr, killedShipment+"/", up.Initiated.Add(time.Hour), logf)
	if n != 1 || err != nil {
		t.Errorf("AbortLeftoverUploads: %d, %v; want 1", n, err)
	}
	if u := incompleteUploads(t, srv); len(u) != 0 {
		t.Errorf("uploads left: %v", u)
	}
	if len(logged) != 1 {
		t.Errorf("logged %q, want one line", logged)
	}
	// Through the bandwidth limit too: the wrapper keeps the capability.
	if _, ok := shipper.LimitBandwidth(tr, 1<<20).(shipper.UploadAborter); !ok {
		t.Error("the bandwidth wrapper hides UploadAborter")
	}
}

// TestAbortUploadSparesOwnUploads checks that AbortUpload leaves alone an
// upload that a Put of the same Transport is still sending.
func TestAbortUploadSparesOwnUploads(t *testing.T) {
	srv := s3test.Start(t)
	srv.SetEnv(t)
	tr := newTransport(t, Config{Bucket: srv.Bucket, Prefix: "own", Streams: 2})
	ctx := context.Background()
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() { errc <- tr.Put(ctx, "seg", pr, -1) }()
	if _, err := io.Copy(pw, generated(2*partSize+1, 2)); err != nil {
		t.Fatal(err)
	}
	// The Put has started its upload once it took the third part's bytes.
	n, err := shipper.AbortLeftoverUploads(ctx, tr, "", time.Now().Add(time.Hour), nil)
	if n != 0 || err != nil {
		t.Errorf("AbortLeftoverUploads during this Transport's own Put: %d, %v; want 0", n, err)
	}
	pw.Close()
	if err := <-errc; err != nil {
		t.Errorf("Put: %v", err)
	}
}
