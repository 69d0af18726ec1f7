package api_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/api"
	"github.com/berthreg/berth/pkg/meta/bolt"
	"github.com/berthreg/berth/pkg/registry"
	"github.com/berthreg/berth/pkg/storage"
	"github.com/berthreg/berth/pkg/storage/fs"
)

// wantStatusRange checks that the session at path (with "{uuid}") reports
// Range want: what it stored.
func wantStatusRange(path, want string) func(*testing.T, *testServer, *http.Response, []byte) {
	return func(t *testing.T, ts *testServer, _ *http.Response, _ []byte) {
		t.Helper()
		ts.do(t, ts.st, call{method: "GET", path: path, status: http.StatusNoContent, wantHeader: h("Range", want)})
	}
}

// sendChunked sends body without Content-Length (Transfer-Encoding:
// chunked) and returns the response and its body.
func (ts *testServer) sendChunked(t *testing.T, method, path string, header map[string]string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, ts.URL+path, io.NopCloser(bytes.NewReader(body)))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := ts.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, got
}

// A chunk without Content-Length must hold exactly the bytes its
// Content-Range declares: the Range answered is always what was stored,
// and no byte past the declared range is stored.
func TestChunkedContentRange(t *testing.T) {
	t.Parallel()
	start := "/v2/test/blobs/uploads/"
	for _, tc := range []struct {
		name       string
		method     string
		upload     []byte
		cr         string
		body       []byte
		status     int
		code       string
		rangeAfter string // the session's Range afterwards ("" when it ended)
	}{
		{name: "exact", method: "PATCH", cr: "0-4", body: newData[:5], status: 202, rangeAfter: "0-4"},
		{name: "exact second chunk", method: "PATCH", upload: newData[:5], cr: "5-9", body: newData[5:10], status: 202, rangeAfter: "0-9"},
		{name: "body short of the range", method: "PATCH", cr: "0-9", body: newData[:4], status: 400, code: "SIZE_INVALID", rangeAfter: "0-3"},
		{name: "empty body", method: "PATCH", cr: "0-9", body: nil, status: 400, code: "SIZE_INVALID", rangeAfter: "0-0"},
		{name: "body past the range", method: "PATCH", cr: "0-4", body: newData[:10], status: 400, code: "SIZE_INVALID", rangeAfter: "0-4"},
		{name: "out of order", method: "PATCH", upload: newData[:5], cr: "10-14", body: newData[10:15], status: 416, rangeAfter: "0-4"},
		{name: "final chunk short", method: "PUT", upload: newData[:10], cr: fmt.Sprintf("10-%d", len(newData)-1), body: newData[10:15],
			status: 400, code: "SIZE_INVALID", rangeAfter: "0-14"},
		{name: "final chunk exact", method: "PUT", upload: newData[:10], cr: fmt.Sprintf("10-%d", len(newData)-1), body: newData[10:],
			status: 201},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ts := newServer(t)
			id := ts.startUpload(t, "test", tc.upload)
			path := start + id
			if tc.method == "PUT" {
				path += "?digest=" + newDigest.String()
			}
			resp, body := ts.sendChunked(t, tc.method, path, h("Content-Range", tc.cr), tc.body)
			if resp.StatusCode != tc.status {
				t.Errorf("%s %s: status %d, want %d; body %.200s", tc.method, tc.cr, resp.StatusCode, tc.status, body)
			}
			if resp.StatusCode >= 400 {
				checkErrorResponse(t, tc.method+" "+tc.cr, tc.method, resp, body, tc.code)
			}
			if resp.StatusCode == 202 && resp.Header.Get("Range") != tc.rangeAfter {
				t.Errorf("Range %q, want %q", resp.Header.Get("Range"), tc.rangeAfter)
			}
			if tc.rangeAfter != "" {
				ts.do(t, nil, call{method: "GET", path: start + id, status: 204, wantHeader: h("Range", tc.rangeAfter)})
			} else {
				ts.do(t, nil, call{method: "GET", path: start + id, status: 404})
				ts.do(t, nil, call{method: "GET", path: blobPath("test", newDigest), status: 200, wantBody: newData})
			}
		})
	}
}

// failCommit is a store whose uploads fail to commit (not a digest
// mismatch) and that counts the sessions left open.
type failCommit struct {
	storage.Driver
	open atomic.Int32
}

func (s *failCommit) NewUpload(ctx context.Context, repo string) (storage.Upload, error) {
	up, err := s.Driver.NewUpload(ctx, repo)
	if err != nil {
		return nil, err
	}
	s.open.Add(1)
	return &failCommitUpload{Upload: up, s: s}, nil
}

type failCommitUpload struct {
	storage.Upload
	s *failCommit
}

func (u *failCommitUpload) Commit(context.Context, digest.Digest) (storage.BlobInfo, error) {
	return storage.BlobInfo{}, fmt.Errorf("injected: %w", storage.ErrUnavailable)
}

func (u *failCommitUpload) Cancel(ctx context.Context) error {
	err := u.Upload.Cancel(ctx)
	if err == nil {
		u.s.open.Add(-1)
	}
	return err
}

// A monolithic upload whose commit fails leaves no session behind: the
// client never learned its id.
func TestMonolithicCommitFailureEndsSession(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	store, err := fs.New(filepath.Join(dir, "data"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	md, err := bolt.Open(filepath.Join(dir, "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = md.Close() })
	fc := &failCommit{Driver: store}
	srv := httptest.NewServer(api.New(registry.New(fc, md, zerolog.Nop()), api.Options{Log: zerolog.Nop(), Metrics: prometheus.NewRegistry()}))
	t.Cleanup(srv.Close)
	ts := &testServer{Server: srv, client: srv.Client()}
	ts.do(t, nil, call{method: "POST", path: "/v2/test/blobs/uploads/?digest=" + newDigest.String(), body: newData,
		status: http.StatusServiceUnavailable, code: "UNAVAILABLE"})
	if n := fc.open.Load(); n != 0 {
		t.Errorf("%d upload sessions left open", n)
	}
	sessions := 0
	if err := store.Uploads(t.Context(), func(string, string, time.Time) error { sessions++; return nil }); err != nil {
		t.Fatal(err)
	}
	if sessions != 0 {
		t.Errorf("the store holds %d upload sessions", sessions)
	}
}
