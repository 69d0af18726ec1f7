package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/api"
	"github.com/berthreg/berth/pkg/storage"
)

// TestUploadBusy: a session held by another request answers 409.
func TestUploadBusy(t *testing.T) {
	t.Parallel()
	ts := newServer(t)
	id := ts.startUpload(t, "test", newData[:3])
	up, err := ts.reg.Store().Upload(t.Context(), "test", id)
	if err != nil {
		t.Fatal(err)
	}
	ts.do(t, nil, call{method: "PATCH", path: "/v2/test/blobs/uploads/" + id, body: newData[3:], status: 409, code: "BLOB_UPLOAD_INVALID"})
	ts.do(t, nil, call{method: "GET", path: "/v2/test/blobs/uploads/" + id, status: 409, code: "BLOB_UPLOAD_INVALID"})
	if err := up.Close(); err != nil {
		t.Fatal(err)
	}
	ts.do(t, nil, call{method: "GET", path: "/v2/test/blobs/uploads/" + id, status: 204, wantHeader: h("Range", "0-2")})
}

// syncBuffer is a bytes.Buffer safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// lines returns the JSON log lines written so far.
func (s *syncBuffer) lines() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// TestAccessLog checks the access log line of a request.
func TestAccessLog(t *testing.T) {
	t.Parallel()
	var buf syncBuffer
	ts := newServerWith(t, api.Options{Log: zerolog.New(&buf), Member: "m1:5000", Metrics: prometheus.NewRegistry()})
	ts.do(t, nil, call{method: "GET", path: manifestPath("test", "nope"), header: h("X-Request-Id", "trace-1"), status: 404})
	// The line is written after the response; wait for it briefly.
	var line map[string]any
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, l := range buf.lines() {
			if l["message"] == "request" && l["req_id"] == "trace-1" {
				line = l
			}
		}
		if line != nil {
			break
		}
	}
	if line == nil {
		t.Fatalf("no access log line for trace-1 in %v", buf.lines())
	}
	want := map[string]any{"method": "GET", "path": "/v2/test/manifests/nope", "repo": "test", "status": float64(404), "member": "m1:5000", "level": "info"}
	for k, v := range want {
		if line[k] != v {
			t.Errorf("access log %s = %v, want %v (line %v)", k, line[k], v, line)
		}
	}
	if _, ok := line["dur"]; !ok {
		t.Errorf("access log lacks dur: %v", line)
	}
}

// fakeForwarder claims the repositories under "remote/".
type fakeForwarder struct {
	mu    sync.Mutex
	repos []string
}

func (f *fakeForwarder) Forward(w http.ResponseWriter, r *http.Request, repo string, local http.Handler) bool {
	f.mu.Lock()
	f.repos = append(f.repos, repo)
	f.mu.Unlock()
	if !strings.HasPrefix(repo, "remote/") {
		return false
	}
	w.Header().Set("X-Forwarded-To", "peer")
	w.WriteHeader(http.StatusNonAuthoritativeInfo)
	return true
}

// TestForwarder checks which requests reach the cluster router.
func TestForwarder(t *testing.T) {
	t.Parallel()
	fw := &fakeForwarder{}
	ts := newServerWith(t, api.Options{Log: zerolog.Nop(), Cluster: fw})
	ts.do(t, nil, call{method: "GET", path: "/v2/", status: 200})
	ts.do(t, nil, call{method: "GET", path: "/v2/_catalog", status: 200})
	ts.do(t, nil, call{method: "GET", path: "/v2/Remote/x/tags/list", status: 400, code: "NAME_INVALID"})
	ts.do(t, nil, call{method: "GET", path: manifestPath("test", "latest"), status: 200, wantBody: imgManifest})
	ts.do(t, nil, call{method: "PUT", path: manifestPath("remote/x", "latest"), body: imgManifest, status: 203,
		wantHeader: h("X-Forwarded-To", "peer")})
	ts.do(t, nil, call{method: "POST", path: "/v2/remote/y/blobs/uploads/", status: 203})
	fw.mu.Lock()
	defer fw.mu.Unlock()
	want := []string{"test", "remote/x", "remote/y"}
	if strings.Join(fw.repos, ",") != strings.Join(want, ",") {
		t.Errorf("Forward called for %q, want %q (not for /v2/, _catalog or invalid names)", fw.repos, want)
	}
	// Without metrics the server still works and has no /metrics.
	if resp, _ := ts.get(t, "GET", "/metrics"); resp.StatusCode != 404 {
		t.Errorf("/metrics without a registry: %d, want 404", resp.StatusCode)
	}
}

// TestMetricsPath serves metrics at a configured path.
func TestMetricsPath(t *testing.T) {
	t.Parallel()
	ts := newServerWith(t, api.Options{Log: zerolog.Nop(), Metrics: prometheus.NewRegistry(), MetricsPath: "/custom"})
	ts.get(t, "PUT", "/v2/test/blobs/uploads/?digest="+newDigest.String())
	resp, body := ts.get(t, "GET", "/custom")
	if resp.StatusCode != 200 || !strings.Contains(string(body), `berth_http_requests_total{method="PUT",route="upload_start",status="405"} 1`) {
		t.Errorf("/custom: %d %.500s", resp.StatusCode, body)
	}
}

// TestMethodNotAllowed: every route answers an unsupported method with 405,
// a JSON UNSUPPORTED error and (RFC 9110 §15.5.6) an Allow header listing
// the methods it supports.
func TestMethodNotAllowed(t *testing.T) {
	t.Parallel()
	var calls []call
	for _, r := range []struct{ path, method, allow string }{
		{"/v2/", "POST", "GET, HEAD"},
		{"/v2/_catalog", "DELETE", "GET"},
		{"/v2/test/tags/list", "PUT", "GET"},
		{manifestPath("test", "latest"), "POST", "DELETE, GET, HEAD, PUT"},
		{blobPath("test", layerDigest), "PUT", "DELETE, GET, HEAD"},
		{"/v2/test/blobs/uploads/", "GET", "POST"},
		{"/v2/test/blobs/uploads/{upload}", "POST", "DELETE, GET, PATCH, PUT"},
		{"/v2/test/referrers/" + imgDigest.String(), "OPTIONS", "GET"},
	} {
		calls = append(calls, call{name: r.method + " " + r.path, method: r.method, path: r.path,
			status: 405, code: "UNSUPPORTED", check: wantAllow(r.allow)})
	}
	runCalls(t, calls)
}

// wantAllow checks the Allow header lists exactly the methods in want
// (comma separated, any order).
func wantAllow(want string) func(*testing.T, *testServer, *http.Response, []byte) {
	return func(t *testing.T, _ *testServer, resp *http.Response, _ []byte) {
		t.Helper()
		var got []string
		for _, v := range resp.Header.Values("Allow") {
			for _, m := range strings.Split(v, ",") {
				got = append(got, strings.TrimSpace(m))
			}
		}
		slices.Sort(got)
		if strings.Join(got, ", ") != want {
			t.Errorf("Allow %q, want %q", resp.Header.Values("Allow"), want)
		}
	}
}

// hangingSyncer blocks a manifest GET until the request's context ends,
// then fails with err (nil: the context's error).
type hangingSyncer struct {
	entered chan struct{}
	err     error
}

func (s hangingSyncer) Manifest(ctx context.Context, _, _ string, _ bool) (*api.SyncedManifest, error) {
	close(s.entered)
	<-ctx.Done()
	if s.err != nil {
		return nil, s.err
	}
	return nil, fmt.Errorf("sync upstream: %w", ctx.Err())
}

func (hangingSyncer) Referrers(context.Context, string, digest.Digest) error { return nil }

func (hangingSyncer) Blob(context.Context, string, digest.Digest) (api.SyncedBlob, error) {
	return nil, nil
}

// TestAbandonedRequestLogged checks that a request the client gave up on
// is logged and counted as 499 at info, not as a 500 with an error line;
// a failure of its own after the client left (not the cancellation) is
// still logged as one.
func TestAbandonedRequestLogged(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		ref      string
		err      error
		status   float64
		errorLog bool
	}{
		{"cancelled", "missing", nil, 499, false},
		{"own failure", "missing", storage.ErrUnavailable, 503, true},
		// A tag present locally is re-checked upstream first.
		{"re-check cancelled", "latest", nil, 499, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lines := abandonedRequestLog(t, tc.ref, tc.err)
			access, errorLog := lines[len(lines)-1], false
			for _, l := range lines {
				errorLog = errorLog || l["level"] == "error" || l["level"] == "warn"
			}
			if access["status"] != tc.status || errorLog != tc.errorLog {
				t.Errorf("logged status %v, error or warning %v; want %v, %v (%v)", access["status"], errorLog, tc.status, tc.errorLog, lines)
			}
		})
	}
}

// abandonedRequestLog sends a manifest GET that the syncer holds until the
// client cancels it, then fails with err; it returns the request's log
// lines, its access log line last.
func abandonedRequestLog(t *testing.T, ref string, err error) []map[string]any {
	var buf syncBuffer
	sy := hangingSyncer{entered: make(chan struct{}), err: err}
	ts := newServerWith(t, api.Options{Log: zerolog.New(&buf), Metrics: prometheus.NewRegistry(), Sync: sy})
	ctx, cancel := context.WithCancel(t.Context())
	req, rerr := http.NewRequestWithContext(ctx, "GET", ts.URL+manifestPath("test", ref), nil)
	if rerr != nil {
		t.Fatal(rerr)
	}
	req.Header.Set("X-Request-Id", "gone-1")
	go func() { <-sy.entered; cancel() }()
	if res, err := ts.client.Do(req); err == nil {
		res.Body.Close()
		t.Fatalf("request answered %d; want the client's own cancellation", res.StatusCode)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		var mine []map[string]any
		for _, l := range buf.lines() {
			if l["req_id"] == "gone-1" {
				mine = append(mine, l)
			}
			if l["message"] == "request" && l["req_id"] == "gone-1" {
				return mine
			}
		}
	}
	t.Fatalf("no access log line for gone-1 in %v", buf.lines())
	return nil
}

// TestServerWait checks that Wait reports handlers still running.
func TestServerWait(t *testing.T) {
	t.Parallel()
	sy := hangingSyncer{entered: make(chan struct{})}
	ts := newServerWith(t, api.Options{Log: zerolog.Nop(), Sync: sy})
	if !ts.api.Wait(time.Second) {
		t.Fatal("Wait with no request running = false")
	}
	ctx, cancel := context.WithCancel(t.Context())
	req, err := http.NewRequestWithContext(ctx, "GET", ts.URL+manifestPath("test", "missing"), nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if res, err := ts.client.Do(req); err == nil {
			res.Body.Close()
		}
	}()
	<-sy.entered
	if ts.api.Wait(50 * time.Millisecond) {
		t.Error("Wait = true while a handler runs")
	}
	cancel()
	<-done
	if !ts.api.Wait(10 * time.Second) {
		t.Error("Wait = false after the handler returned")
	}
}
