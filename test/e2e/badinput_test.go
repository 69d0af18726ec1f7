package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// TestBadInput sends malformed requests by raw HTTP: each gets the right
// status and OCI error code as JSON, and leaves storage unchanged (the files
// under the storage root, or on s3 the bucket's keys as versitygw's posix
// directory shows them, minus _uploads; and the catalog and tags as the API
// shows them).
func TestBadInput(t *testing.T) {
	forEachBackend(t, testBadInput)
}

// Limits of the registry under test: tight enough for the tests to reach
// them (see the upload-limit and idle-timeout cases). The idle timeout
// also bounds how long the upload-limit case may take, on a slow machine,
// to open its second held upload, see both counted and send its probe
// while the first one stalls.
const (
	badInputMaxUploads  = 2
	badInputIdleTimeout = 6 * time.Second
)

func testBadInput(t *testing.T, be string) {
	port := freePort(t)
	r := startRegistry(t, regOpts{Backend: be, Port: port, Extra: map[string]any{"http": map[string]any{
		"address": "127.0.0.1", "port": fmt.Sprint(port),
		"maxUploadsPerClient": badInputMaxUploads, "readIdleTimeout": badInputIdleTimeout.String(),
	}}})
	const repo = "bad/input"
	goodDigest, _ := r.pushImage(t, repo, "v1")
	configBlob := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	configDigest := r.pushBlob(t, repo, configBlob)

	// An upload session with 10 bytes, for the out-of-order chunk case.
	res := r.do(t, "POST", "/v2/"+repo+"/blobs/uploads/", nil, nil)
	if res.Status != http.StatusAccepted {
		t.Fatalf("POST upload: %s", res)
	}
	session := r.location(t, res)
	res = r.do(t, "PATCH", session, map[string]string{"Content-Type": "application/octet-stream", "Content-Range": "0-9"}, []byte("0123456789"))
	if res.Status != http.StatusAccepted {
		t.Fatalf("PATCH first chunk: %s", res)
	}
	session = r.location(t, res)

	base := snapshot(t, r.StorageRoot())
	baseAPI := apiState(t, r, repo)
	check := func(t *testing.T, res *resp, status int, code string) {
		t.Helper()
		if res.Status != status {
			t.Errorf("status %d, want %d: %s", res.Status, status, res)
		}
		if code != "" {
			requireErrorCode(t, res, code)
		}
		if d := diffSnapshots(base, snapshot(t, r.StorageRoot())); d != "" {
			t.Errorf("storage changed by a rejected request:\n%s", d)
		}
		if got := apiState(t, r, repo); got != baseAPI {
			t.Errorf("catalog or tags changed by a rejected request:\nbefore: %s\nafter:  %s", baseAPI, got)
		}
	}

	longName := "a/" + strings.Repeat("b", 254) // 256 characters
	for _, name := range []string{"Upper/case", "a/../b", "a//b", longName, "a/b/", "-a/b", "a/b_"} {
		label := name
		if len(label) > 20 {
			label = fmt.Sprintf("%d-chars", len(name))
		}
		t.Run("name-invalid/"+strings.ReplaceAll(label, "/", "|"), func(t *testing.T) {
			check(t, r.do(t, "GET", "/v2/"+name+"/tags/list", nil, nil), 400, "NAME_INVALID")
			check(t, r.do(t, "GET", "/v2/"+name+"/manifests/latest", nil, nil), 400, "NAME_INVALID")
			check(t, r.do(t, "POST", "/v2/"+name+"/blobs/uploads/", nil, nil), 400, "NAME_INVALID")
			m := imageManifest(configBlob, nil, nil)
			check(t, r.do(t, "PUT", "/v2/"+name+"/manifests/v1", map[string]string{"Content-Type": mtManifest}, m), 400, "NAME_INVALID")
		})
	}

	t.Run("digest-invalid", func(t *testing.T) {
		for _, d := range []string{"sha256:abc", "sha256:" + strings.Repeat("Z", 64), "md5:d41d8cd98f00b204e9800998ecf8427e", "nodigest"} {
			check(t, r.do(t, "GET", "/v2/"+repo+"/blobs/"+d, nil, nil), 400, "DIGEST_INVALID")
		}
		res := r.do(t, "POST", "/v2/"+repo+"/blobs/uploads/", nil, nil)
		if res.Status != http.StatusAccepted {
			t.Fatalf("POST upload: %s", res)
		}
		check(t, r.do(t, "PUT", withQuery(r.location(t, res), "digest=sha256:1234"), nil, []byte("data")), 400, "DIGEST_INVALID")
	})

	t.Run("digest-mismatch", func(t *testing.T) {
		data := randBytes(t, 4096)
		claimed := sha256Digest([]byte("something else"))
		res := r.do(t, "POST", "/v2/"+repo+"/blobs/uploads/", nil, nil)
		if res.Status != http.StatusAccepted {
			t.Fatalf("POST upload: %s", res)
		}
		check(t, r.do(t, "PUT", withQuery(r.location(t, res), "digest="+claimed),
			map[string]string{"Content-Type": "application/octet-stream"}, data), 400, "DIGEST_INVALID")
		for _, d := range []string{claimed, sha256Digest(data)} {
			if res := r.do(t, "HEAD", "/v2/"+repo+"/blobs/"+d, nil, nil); res.Status != 404 {
				t.Errorf("HEAD %s after a mismatched upload: %d, want 404", d, res.Status)
			}
		}
		// Monolithic POST with a wrong digest.
		check(t, r.do(t, "POST", "/v2/"+repo+"/blobs/uploads/?digest="+claimed,
			map[string]string{"Content-Type": "application/octet-stream"}, data), 400, "DIGEST_INVALID")
		if res := r.do(t, "HEAD", "/v2/"+repo+"/blobs/"+claimed, nil, nil); res.Status != 404 {
			t.Errorf("HEAD %s after a mismatched monolithic upload: %d, want 404", claimed, res.Status)
		}
	})

	t.Run("manifest-invalid", func(t *testing.T) {
		h := map[string]string{"Content-Type": mtManifest}
		check(t, r.do(t, "PUT", "/v2/"+repo+"/manifests/broken", h, []byte(`{"schemaVersion":2,`)), 400, "MANIFEST_INVALID")
		check(t, r.do(t, "PUT", "/v2/"+repo+"/manifests/broken", h, []byte(`not json at all`)), 400, "MANIFEST_INVALID")
		check(t, r.do(t, "PUT", "/v2/"+repo+"/manifests/broken", h, []byte(`{"schemaVersion":2,"mediaType":"`+mtManifest+`","config":{"mediaType":"`+mtConfig+`","digest":"sha256:nope","size":2},"layers":[]}`)), 400, "")
		if res := r.do(t, "GET", "/v2/"+repo+"/manifests/broken", nil, nil); res.Status != 404 {
			t.Errorf("GET rejected manifest: %d, want 404", res.Status)
		}
	})

	t.Run("manifest-blob-unknown", func(t *testing.T) {
		missing := randBytes(t, 1024)
		m := imageManifest(configBlob, [][]byte{missing}, nil)
		check(t, r.do(t, "PUT", "/v2/"+repo+"/manifests/sparse", map[string]string{"Content-Type": mtManifest}, m), 400, "MANIFEST_BLOB_UNKNOWN")
		m = imageManifest([]byte(`{"missing":"config"}`), nil, nil)
		check(t, r.do(t, "PUT", "/v2/"+repo+"/manifests/sparse", map[string]string{"Content-Type": mtManifest}, m), 400, "MANIFEST_BLOB_UNKNOWN")
		_ = configDigest
	})

	t.Run("manifest-too-large", func(t *testing.T) {
		m := imageManifest(configBlob, nil, map[string]string{"pad": strings.Repeat("x", 5<<20)})
		res, err := r.try("PUT", "/v2/"+repo+"/manifests/huge", map[string]string{"Content-Type": mtManifest}, m)
		if err != nil {
			t.Fatalf("PUT 5 MiB manifest: %v (the registry should answer 413, not drop the connection)", err)
		}
		check(t, res, http.StatusRequestEntityTooLarge, "")
		if res.Header.Get("Content-Type") != "" {
			requireErrorCode(t, res, "")
		}
	})

	t.Run("range-invalid", func(t *testing.T) {
		res := r.do(t, "PATCH", session, map[string]string{"Content-Type": "application/octet-stream", "Content-Range": "20-29"}, []byte("abcdefghij"))
		check(t, res, http.StatusRequestedRangeNotSatisfiable, "")
		if got := res.Header.Get("Range"); got != "0-9" {
			t.Errorf("416 Range header %q, want 0-9", got)
		}
		st := r.do(t, "GET", session, nil, nil)
		if st.Status != http.StatusNoContent || st.Header.Get("Range") != "0-9" {
			t.Errorf("upload status after a rejected chunk: %s, want 204 Range 0-9", st)
		}
	})

	t.Run("upload-unknown", func(t *testing.T) {
		id := "/v2/" + repo + "/blobs/uploads/0123456789abcdef0123456789abcdef"
		check(t, r.do(t, "GET", id, nil, nil), 404, "BLOB_UPLOAD_UNKNOWN")
		check(t, r.do(t, "PATCH", id, map[string]string{"Content-Type": "application/octet-stream"}, []byte("x")), 404, "BLOB_UPLOAD_UNKNOWN")
		check(t, r.do(t, "PUT", id+"?digest="+sha256Digest([]byte("x")), nil, []byte("x")), 404, "BLOB_UPLOAD_UNKNOWN")
		check(t, r.do(t, "GET", "/v2/"+repo+"/blobs/uploads/not-an-id", nil, nil), 404, "BLOB_UPLOAD_UNKNOWN")
	})

	t.Run("manifest-unknown", func(t *testing.T) {
		check(t, r.do(t, "GET", "/v2/"+repo+"/manifests/nope", nil, nil), 404, "MANIFEST_UNKNOWN")
		check(t, r.do(t, "GET", "/v2/"+repo+"/manifests/"+sha256Digest([]byte("nope")), nil, nil), 404, "MANIFEST_UNKNOWN")
		if res := r.do(t, "HEAD", "/v2/"+repo+"/manifests/nope", nil, nil); res.Status != 404 {
			t.Errorf("HEAD unknown manifest: %d", res.Status)
		}
	})

	t.Run("name-unknown", func(t *testing.T) {
		check(t, r.do(t, "GET", "/v2/no/such/repo/tags/list", nil, nil), 404, "NAME_UNKNOWN")
	})

	t.Run("pagination-invalid", func(t *testing.T) {
		check(t, r.do(t, "GET", "/v2/"+repo+"/tags/list?n=-1", nil, nil), 400, "PAGINATION_NUMBER_INVALID")
		check(t, r.do(t, "GET", "/v2/_catalog?n=-1", nil, nil), 400, "PAGINATION_NUMBER_INVALID")
		check(t, r.do(t, "GET", "/v2/"+repo+"/tags/list?n=abc", nil, nil), 400, "PAGINATION_NUMBER_INVALID")
	})

	t.Run("path-traversal", func(t *testing.T) {
		// The Go server decodes the path (%2e is ".", %2f is "/") and does
		// not clean it; the name or reference must then be refused.
		for _, c := range []struct{ method, path, code string }{
			{"GET", "/v2/%2e%2e/x/manifests/a", "NAME_INVALID"},
			{"GET", "/v2/%2e%2e/%2e%2e/etc/tags/list", "NAME_INVALID"},
			{"GET", "/v2/a/..%2fb/tags/list", "NAME_INVALID"},
			{"GET", "/v2/bad%2F..%2F..%2Finput/tags/list", "NAME_INVALID"},
			{"GET", "/v2/bad/input%2f..%2f..%2f..%2fetc/manifests/v1", "NAME_INVALID"},
			{"GET", "/v2/bad%5c..%5cinput/tags/list", "NAME_INVALID"},
			{"GET", "/v2/bad/input/manifests/..%5c..%5cv1", "TAG_INVALID"},
			{"GET", "/v2/bad/input/manifests/..", "TAG_INVALID"},
			{"GET", "/v2/bad%00/input/tags/list", "NAME_INVALID"},
			{"GET", "/v2/bad/input/manifests/v1%00", "TAG_INVALID"},
			{"GET", "/v2/bad/input/blobs/sha256:%2e%2e%2f%2e%2e%2fx", "NAME_INVALID"}, // not a blob path once decoded
			{"GET", "/v2/bad/input/blobs/sha256:%2e%2e%5c%2e%2e%5cx", "DIGEST_INVALID"},
			{"GET", "/v2/bad/input/blobs/" + goodDigest + "%00", "DIGEST_INVALID"},
			{"GET", "/v2/bad/input/blobs/uploads/..%5c..%5c_uploads", "BLOB_UPLOAD_UNKNOWN"},
			{"GET", "/v2/bad/input/blobs/uploads/%2e%2e", "BLOB_UPLOAD_UNKNOWN"},
			{"PATCH", "/v2/bad/input/blobs/uploads/%2e%2e", "BLOB_UPLOAD_UNKNOWN"},
			{"DELETE", "/v2/bad/input/blobs/uploads/..%5cx", "BLOB_UPLOAD_UNKNOWN"},
			{"PUT", "/v2/%2e%2e/%2e%2e/x/manifests/v1", "NAME_INVALID"},
			{"POST", "/v2/bad/..%2f..%2finput/blobs/uploads/", "NAME_INVALID"},
		} {
			var body []byte
			h := map[string]string{}
			if c.method == "PUT" || c.method == "PATCH" {
				body, h["Content-Type"] = imageManifest(configBlob, nil, nil), mtManifest
			}
			res := r.do(t, c.method, c.path, h, body)
			if res.Status < 400 || res.Status >= 500 {
				t.Errorf("%s %s: %s, want a 4xx %s", c.method, c.path, res, c.code)
			}
			check(t, res, res.Status, c.code)
		}
	})

	t.Run("huge-headers", func(t *testing.T) {
		// Go's server refuses headers over http.maxHeaderBytes (1 MiB by
		// default) with 431 before the registry sees the request.
		res := rawHeaders(t, r.Host, "GET /v2/"+repo+"/tags/list", []string{"X-Big: " + strings.Repeat("a", 2<<20)})
		check(t, res, http.StatusRequestHeaderFieldsTooLarge, "")
		many := make([]string, 100000)
		for i := range many {
			many[i] = fmt.Sprintf("X-H%d: v", i)
		}
		res = rawHeaders(t, r.Host, "PUT /v2/"+repo+"/manifests/many", many)
		check(t, res, http.StatusRequestHeaderFieldsTooLarge, "")
		// Many headers within the limit are served as usual.
		h := map[string]string{}
		for i := range 5000 {
			h[fmt.Sprintf("X-H%d", i)] = "v"
		}
		check(t, r.do(t, "GET", "/v2/"+repo+"/tags/list", h, nil), http.StatusOK, "")
	})

	t.Run("truncated-body", func(t *testing.T) {
		// The client announces more than it sends, then closes its side.
		data := randBytes(t, 64<<10)
		dgst := sha256Digest(data)
		res := rawCut(t, r.Host, "POST", "/v2/"+repo+"/blobs/uploads/?digest="+dgst, len(data), data[:len(data)/2], "application/octet-stream")
		check(t, res, http.StatusBadRequest, "SIZE_INVALID")
		if res := r.do(t, "HEAD", "/v2/"+repo+"/blobs/"+dgst, nil, nil); res.Status != 404 {
			t.Errorf("HEAD %s after a truncated monolithic upload: %d, want 404", dgst, res.Status)
		}
		m := imageManifest(configBlob, nil, map[string]string{"cut": "here"})
		res = rawCut(t, r.Host, "PUT", "/v2/"+repo+"/manifests/cut", len(m), m[:len(m)-10], mtManifest)
		check(t, res, http.StatusBadRequest, "SIZE_INVALID")
		if res := r.do(t, "GET", "/v2/"+repo+"/manifests/cut", nil, nil); res.Status != 404 {
			t.Errorf("GET a truncated manifest: %d, want 404", res.Status)
		}
		// A chunk cut short: the session keeps what arrived.
		res = r.do(t, "POST", "/v2/"+repo+"/blobs/uploads/", nil, nil)
		if res.Status != http.StatusAccepted {
			t.Fatalf("POST upload: %s", res)
		}
		loc := r.location(t, res)
		res = rawCut(t, r.Host, "PATCH", strings.TrimPrefix(loc, r.URL), len(data), data[:1000], "application/octet-stream")
		check(t, res, http.StatusBadRequest, "SIZE_INVALID")
		st := r.do(t, "GET", loc, nil, nil)
		if st.Status != http.StatusNoContent || st.Header.Get("Range") != "0-999" {
			t.Errorf("upload status after a truncated chunk: %s, want 204 Range 0-999", st)
		}
		check(t, r.do(t, "DELETE", loc, nil, nil), http.StatusNoContent, "")
	})

	t.Run("invalid-utf8", func(t *testing.T) {
		m := imageManifest(configBlob, nil, nil)
		mh := map[string]string{"Content-Type": mtManifest}
		check(t, r.do(t, "GET", "/v2/"+repo+"/manifests/%ff", nil, nil), 400, "TAG_INVALID")
		check(t, r.do(t, "PUT", "/v2/"+repo+"/manifests/v%ff", mh, m), 400, "TAG_INVALID")
		check(t, r.do(t, "GET", "/v2/bad%ff/input/tags/list", nil, nil), 400, "NAME_INVALID")
		check(t, r.do(t, "PUT", "/v2/%ff%fe/manifests/v1", mh, m), 400, "NAME_INVALID")
		check(t, r.do(t, "GET", "/v2/"+repo+"/blobs/sha256:%ff", nil, nil), 400, "DIGEST_INVALID")
		check(t, r.do(t, "PUT", "/v2/"+repo+"/manifests/v9?tag=%ff", mh, m), 400, "TAG_INVALID")
		check(t, r.do(t, "GET", "/v2/"+repo+"/tags/list?n=%ff", nil, nil), 400, "PAGINATION_NUMBER_INVALID")
		check(t, r.do(t, "POST", "/v2/"+repo+"/blobs/uploads/?digest=sha256:%ff%fe", map[string]string{"Content-Type": "application/octet-stream"}, []byte("x")), 400, "DIGEST_INVALID")
		// A marker past every name lists nothing; it is not an error.
		for _, p := range []string{"/v2/" + repo + "/tags/list?last=%ff", "/v2/_catalog?last=%ff"} {
			res := r.do(t, "GET", p, nil, nil)
			check(t, res, http.StatusOK, "")
			if !json.Valid(res.Body) {
				t.Errorf("GET %s: body is not JSON: %s", p, res)
			}
		}
	})

	t.Run("wrong-media-types", func(t *testing.T) {
		img := imageManifest(configBlob, nil, nil)
		idx := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"` +
			mtManifest + `","digest":"` + goodDigest + `","size":1}]}`)
		for _, c := range []struct {
			name, ct string
			body     []byte
		}{
			{"octet-stream with an image manifest", "application/octet-stream", img},
			{"plain JSON with an image manifest", "application/json", img},
			{"image manifest sent as an index", "application/vnd.oci.image.index.v1+json", img},
			{"image manifest sent as a Docker list", "application/vnd.docker.distribution.manifest.list.v2+json", img},
			{"index sent as an image manifest", mtManifest, idx},
			{"Docker schema 1", "application/vnd.docker.distribution.manifest.v1+prettyjws", []byte(`{"schemaVersion":1,"name":"bad/input","tag":"w","fsLayers":[]}`)},
			{"text that is not JSON", "text/plain", []byte("just text")},
		} {
			res := r.do(t, "PUT", "/v2/"+repo+"/manifests/wrong", map[string]string{"Content-Type": c.ct}, c.body)
			if res.Status != 400 {
				t.Errorf("%s: %s, want 400", c.name, res)
			}
			check(t, res, 400, "MANIFEST_INVALID")
		}
		if res := r.do(t, "GET", "/v2/"+repo+"/manifests/wrong", nil, nil); res.Status != 404 {
			t.Errorf("GET a rejected manifest: %d, want 404", res.Status)
		}
	})

	t.Run("upload-limit", func(t *testing.T) {
		// Uploads held open by a client count against http.maxUploadsPerClient;
		// one more is answered 429, and a finished one frees its place.
		var conns []net.Conn
		for range badInputMaxUploads {
			res := r.do(t, "POST", "/v2/"+repo+"/blobs/uploads/", nil, nil)
			if res.Status != http.StatusAccepted {
				t.Fatalf("POST upload: %s", res)
			}
			conns = append(conns, rawStart(t, r.Host, "PATCH", strings.TrimPrefix(r.location(t, res), r.URL), 10, []byte("01234"), "application/octet-stream"))
		}
		// Wait until both are being received (and so counted) before the
		// probe, an upload itself, can take a place; within half the idle
		// timeout, leaving the rest for the probe.
		want := fmt.Sprintf("berth_uploads_in_progress %d\n", badInputMaxUploads)
		for deadline := time.Now().Add(badInputIdleTimeout / 2); !strings.Contains(string(r.do(t, "GET", "/metrics", nil, nil).Body), want); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the held uploads are not both in progress (no %q in /metrics)", want)
			}
		}
		tooMany := func() *resp {
			return r.do(t, "POST", "/v2/"+repo+"/blobs/uploads/?digest=sha256:bad", map[string]string{"Content-Type": "application/octet-stream"}, []byte("x"))
		}
		res := tooMany()
		check(t, res, http.StatusTooManyRequests, "TOOMANYREQUESTS")
		if res.Header.Get("Retry-After") == "" {
			t.Errorf("429 without Retry-After: %s", res)
		}
		for i, c := range conns {
			if _, err := c.Write([]byte("56789")); err != nil {
				t.Fatalf("finish upload %d: %v", i, err)
			}
			if res := readRaw(t, c); res.Status != http.StatusAccepted {
				t.Errorf("held upload %d: %s, want 202", i, res)
			}
		}
		check(t, tooMany(), 400, "DIGEST_INVALID")
	})

	t.Run("idle-timeout", func(t *testing.T) {
		// A client that sends half a chunk and stalls is disconnected after
		// http.readIdleTimeout; the session keeps the half and resumes.
		data := randBytes(t, 2000)
		res := r.do(t, "POST", "/v2/"+repo+"/blobs/uploads/", nil, nil)
		if res.Status != http.StatusAccepted {
			t.Fatalf("POST upload: %s", res)
		}
		loc := r.location(t, res)
		c := rawStart(t, r.Host, "PATCH", strings.TrimPrefix(loc, r.URL), len(data), data[:1000], "application/octet-stream")
		start := time.Now()
		_ = c.SetReadDeadline(start.Add(badInputIdleTimeout + 20*time.Second))
		got, err := io.ReadAll(c)
		took := time.Since(start)
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			t.Fatalf("stalled upload still connected after %s", took)
		case len(got) != 0:
			t.Errorf("stalled upload got an answer, want the connection dropped: %.300q", got)
		case took < badInputIdleTimeout-200*time.Millisecond:
			t.Errorf("stalled upload cut after %s, before the idle timeout %s", took, badInputIdleTimeout)
		}
		t.Logf("stalled upload cut after %s", took)
		st := r.do(t, "GET", loc, nil, nil)
		if st.Status != http.StatusNoContent || st.Header.Get("Range") != "0-999" {
			t.Fatalf("upload status after the cut: %s, want 204 Range 0-999", st)
		}
		check(t, st, http.StatusNoContent, "")
		res = r.do(t, "PATCH", loc, map[string]string{"Content-Type": "application/octet-stream", "Content-Range": "1000-1999"}, data[1000:])
		if res.Status != http.StatusAccepted || res.Header.Get("Range") != "0-1999" {
			t.Fatalf("resume after the cut: %s, want 202 Range 0-1999", res)
		}
		dgst := sha256Digest(data)
		if res := r.do(t, "PUT", withQuery(r.location(t, res), "digest="+dgst), nil, nil); res.Status != http.StatusCreated {
			t.Fatalf("close the resumed upload: %s", res)
		}
		if res := r.do(t, "GET", "/v2/"+repo+"/blobs/"+dgst, nil, nil); res.Status != 200 || !bytes.Equal(res.Body, data) {
			t.Errorf("GET the resumed blob: %d, %d bytes", res.Status, len(res.Body))
		}
	})

	// The good image survived every bad request.
	if res := r.do(t, "GET", "/v2/"+repo+"/manifests/v1", map[string]string{"Accept": mtManifest}, nil); res.Status != 200 || sha256Digest(res.Body) != goodDigest {
		t.Errorf("GET v1 after the bad requests: %s", res)
	}
	requireStorageOK(t, r.StorageRoot())
	// Bad input is the client's fault: no 5xx and no error in the log.
	logData, err := os.ReadFile(r.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(logData), "\n") {
		var line struct {
			Level  string `json:"level"`
			Status int    `json:"status"`
		}
		if json.Unmarshal([]byte(l), &line) == nil && (line.Level == "error" || line.Status >= 500) {
			t.Errorf("log line: %s", l)
		}
	}
}

// apiState is the catalog and the tags of repos as the registry lists them.
func apiState(t *testing.T, r *reg, repos ...string) string {
	t.Helper()
	res := r.do(t, "GET", "/v2/_catalog", nil, nil)
	if res.Status != 200 {
		t.Fatalf("GET /v2/_catalog: %s", res)
	}
	out := "catalog " + string(res.Body)
	for _, repo := range repos {
		out += fmt.Sprintf(" | %s tags %q", repo, sorted(listTags(t, r, repo)))
	}
	return out
}

// requireErrorCode checks an OCI error response: Content-Type JSON and a
// body {"errors":[{"code":CODE,...}]} (any code when code is "").
func requireErrorCode(t *testing.T, res *resp, code string) {
	t.Helper()
	mt, _, _ := mime.ParseMediaType(res.Header.Get("Content-Type"))
	if mt != "application/json" {
		t.Errorf("error Content-Type %q, want application/json", res.Header.Get("Content-Type"))
	}
	var body struct {
		Errors []struct {
			Code    string          `json:"code"`
			Message string          `json:"message"`
			Detail  json.RawMessage `json:"detail"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(res.Body, &body); err != nil || len(body.Errors) == 0 {
		t.Errorf("error body is not {\"errors\":[...]}: %v: %s", err, res)
		return
	}
	if code != "" && body.Errors[0].Code != code {
		t.Errorf("error code %q, want %s: %s", body.Errors[0].Code, code, res)
	}
}

// rawStart opens a connection to host and sends a request announcing
// contentLength body bytes, and body, which may be fewer. The connection
// closes when the test ends.
func rawStart(t *testing.T, host, method, path string, contentLength int, body []byte, contentType string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	head := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n",
		method, path, host, contentType, contentLength)
	if _, err := c.Write(append([]byte(head), body...)); err != nil {
		t.Fatal(err)
	}
	return c
}

// readRaw reads one response from c.
func readRaw(t *testing.T, c net.Conn) *resp {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	hr, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	defer hr.Body.Close()
	b, err := io.ReadAll(hr.Body)
	if err != nil {
		t.Fatalf("read response body: %v", err)
	}
	return &resp{Status: hr.StatusCode, Header: hr.Header, Body: b}
}

// rawCut sends a request whose body ends early: it announces contentLength
// bytes, sends body, closes its side and reads the answer.
func rawCut(t *testing.T, host, method, path string, contentLength int, body []byte, contentType string) *resp {
	t.Helper()
	c := rawStart(t, host, method, path, contentLength, body, contentType)
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	return readRaw(t, c)
}

// rawHeaders sends "requestLine HTTP/1.1" with the given header lines on a
// fresh connection, writing while it reads the answer (a server refusing
// the headers answers before reading them all).
func rawHeaders(t *testing.T, host, requestLine string, headers []string) *resp {
	t.Helper()
	c, err := net.DialTimeout("tcp", host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	req := requestLine + " HTTP/1.1\r\nHost: " + host + "\r\n" + strings.Join(headers, "\r\n") + "\r\nContent-Length: 0\r\n\r\n"
	go func() { _, _ = io.WriteString(c, req) }() // fails once the server hangs up
	return readRaw(t, c)
}
