package e2e

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestGracefulShutdown checks what SIGTERM promises: the registry stops
// taking new connections, but a pull and an upload already streaming
// finish (the upload acknowledged), and the process exits once they have.
func TestGracefulShutdown(t *testing.T) {
	forEachBackend(t, testGracefulShutdown)
}

func testGracefulShutdown(t *testing.T, be string) {
	r := startRegistry(t, regOpts{Backend: be})
	const repo = "drain/upload"
	blob := randBytes(t, 48<<20)
	dg := sha256Digest(blob)

	// A pull in flight: a blob pushed before, read slowly.
	pulled := randBytes(t, 48<<20)
	pulledDg := r.pushBlob(t, repo, pulled)
	get, err := http.Get(r.URL + "/v2/" + repo + "/blobs/" + pulledDg)
	must(t, err)
	defer get.Body.Close()
	head := make([]byte, 1<<20)
	if _, err := io.ReadFull(get.Body, head); err != nil {
		t.Fatalf("reading the pull's first MiB: %v", err)
	}

	loc := r.location(t, r.do(t, "POST", "/v2/"+repo+"/blobs/uploads/", nil, nil))

	// Stream the blob through a pipe. Loopback socket buffers hold a few
	// MiB at most, so once 32 MiB are written the handler is reading it.
	pr, pw := io.Pipe()
	req, err := http.NewRequest("PUT", withQuery(loc, "digest="+dg), pr)
	must(t, err)
	req.ContentLength = int64(len(blob))
	req.Header.Set("Content-Type", "application/octet-stream")
	type result struct {
		status int
		body   string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		res, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		done <- result{status: res.StatusCode, body: string(b)}
	}()
	half := 32 << 20
	if _, err := pw.Write(blob[:half]); err != nil {
		t.Fatalf("writing the first half: %v", err)
	}

	mark := fileSize(r.LogPath)
	r.signal(t, syscall.SIGTERM)
	waitUntil(t, 30*time.Second, "the registry to log that it is shutting down", func() bool {
		b, _ := os.ReadFile(r.LogPath)
		return int64(len(b)) > mark && bytes.Contains(b[mark:], []byte(`"shutting down"`))
	})
	// New connections are refused once shutdown began.
	waitUntil(t, 10*time.Second, "new connections to be refused", func() bool {
		_, err := r.try("GET", "/v2/", nil, nil)
		return err != nil
	})
	if _, err := io.Copy(pw, bytes.NewReader(blob[half:])); err != nil {
		t.Fatalf("writing the second half after SIGTERM: %v", err)
	}
	pw.Close()
	rest, err := io.ReadAll(get.Body)
	if err != nil || !bytes.Equal(append(head, rest...), pulled) {
		t.Errorf("pull in flight at SIGTERM: read %d bytes (err %v); want the %d bytes of the blob", len(head)+len(rest), err, len(pulled))
	}
	var res result
	select {
	case res = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the upload got no answer")
	}
	if res.err != nil || res.status != http.StatusCreated {
		t.Fatalf("upload in flight at SIGTERM: status %d, err %v, body %s; want 201", res.status, res.err, res.body)
	}
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the registry did not exit after its last request finished")
	}
	if st := r.cmd.ProcessState; !st.Success() {
		t.Errorf("registry exited with %s after SIGTERM; want 0", st)
	}

	// What was acknowledged is there after a restart.
	r.start()
	got := r.do(t, "GET", "/v2/"+repo+"/blobs/"+dg, nil, nil)
	if got.Status != http.StatusOK || !bytes.Equal(got.Body, blob) {
		t.Fatalf("GET the blob after restart: status %d, %d bytes; want 200 and the %d bytes pushed", got.Status, len(got.Body), len(blob))
	}
	if log, _ := os.ReadFile(r.LogPath); strings.Contains(string(log), `"level":"error"`) {
		t.Errorf("the registry logged errors:\n%s", tailFile(r.LogPath, 30))
	}
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}
