package api_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestCallsBase covers /v2/, method handling and the error format.
func TestCallsBase(t *testing.T) {
	t.Parallel()
	api := h("Docker-Distribution-API-Version", "registry/2.0")
	runCalls(t, []call{
		{name: "GET base", method: "GET", path: "/v2/", status: 200, wantHeader: api, wantBody: []byte("{}")},
		{name: "GET base without slash", method: "GET", path: "/v2", status: 200, wantHeader: api},
		{name: "HEAD base", method: "HEAD", path: "/v2/", status: 200, wantHeader: api},
		{name: "POST base", method: "POST", path: "/v2/", status: 405, code: "UNSUPPORTED", wantHeader: api},
		{name: "DELETE base", method: "DELETE", path: "/v2/", status: 405, code: "UNSUPPORTED"},
		{name: "request id is made", method: "GET", path: "/v2/", status: 200,
			wantHeader: h("X-Request-Id", "*")},
		{name: "request id is kept", method: "GET", path: "/v2/", header: h("X-Request-Id", "abc-123"), status: 200,
			wantHeader: h("X-Request-Id", "abc-123")},
		{name: "bad request id is replaced", method: "GET", path: "/v2/", header: h("X-Request-Id", "a b\tc"), status: 200,
			check: func(t *testing.T, _ *testServer, resp *http.Response, _ []byte) {
				if id := resp.Header.Get("X-Request-Id"); id == "" || strings.ContainsAny(id, " \t") {
					t.Errorf("X-Request-Id = %q", id)
				}
			}},
		{name: "unknown endpoint", method: "GET", path: "/v2/test/foo", status: 404, code: "UNSUPPORTED", wantHeader: api},
		{name: "unknown endpoint of a repository", method: "GET", path: "/v2/test/unknown", status: 404, code: "UNSUPPORTED"},
		{name: "unknown endpoint HEAD", method: "HEAD", path: "/v2/test/foo/bar", status: 404},
		{name: "unknown endpoint PUT", method: "PUT", path: "/v2/test/blobs", body: layerData, status: 404, code: "UNSUPPORTED"},
		{name: "unknown endpoint with invalid name", method: "GET", path: "/v2/Test/foo", status: 404, code: "UNSUPPORTED"},
		{name: "unknown endpoint with dot segments", method: "GET", path: "/v2/test/blobs/sha256:../../x", status: 400, code: "NAME_INVALID"},
	})
}

// TestCallsBlobs covers blob HEAD, GET and DELETE.
func TestCallsBlobs(t *testing.T) {
	t.Parallel()
	layer := blobPath("test", layerDigest)
	n := len(layerData)
	etag := `"` + layerDigest.String() + `"`
	runCalls(t, []call{
		{name: "HEAD", method: "HEAD", path: layer, status: 200, wantHeader: h(
			"Content-Length", fmt.Sprint(n), "Docker-Content-Digest", layerDigest.String(),
			"Docker-Distribution-API-Version", "registry/2.0", "ETag", etag, "Accept-Ranges", "bytes")},
		{name: "GET", method: "GET", path: layer, status: 200, wantBody: layerData, wantHeader: h(
			"Content-Length", fmt.Sprint(n), "Docker-Content-Digest", layerDigest.String(),
			"Content-Type", "application/octet-stream", "ETag", etag)},
		{name: "GET range", method: "GET", path: layer, header: h("Range", "bytes=0-4"), status: 206,
			wantBody: layerData[:5], wantHeader: h("Content-Range", fmt.Sprintf("bytes 0-4/%d", n), "Content-Length", "5")},
		{name: "GET open range", method: "GET", path: layer, header: h("Range", "bytes=10-"), status: 206,
			wantBody: layerData[10:], wantHeader: h("Content-Range", fmt.Sprintf("bytes 10-%d/%d", n-1, n))},
		{name: "GET suffix range", method: "GET", path: layer, header: h("Range", "bytes=-3"), status: 206,
			wantBody: layerData[n-3:]},
		{name: "GET unsatisfiable range", method: "GET", path: layer, header: h("Range", "bytes=1000-2000"), status: 416,
			wantHeader: h("Content-Range", fmt.Sprintf("bytes */%d", n))},
		// RFC 9110: a malformed Range is ignored; one that selects no byte
		// is 416 (a reversed one too, as the OCI conformance suite wants).
		{name: "GET reversed range", method: "GET", path: layer, header: h("Range", "bytes=5-2"), status: 416, code: "RANGE_INVALID",
			wantHeader: h("Content-Range", fmt.Sprintf("bytes */%d", n))},
		{name: "GET reversed among ranges", method: "GET", path: layer, header: h("Range", "bytes=5-2,0-4"), status: 206,
			wantBody: layerData[:5], wantHeader: h("Content-Range", fmt.Sprintf("bytes 0-4/%d", n))},
		{name: "GET malformed range", method: "GET", path: layer, header: h("Range", "bytes=abc"), status: 200,
			wantBody: layerData, wantHeader: h("Content-Range", "-")},
		{name: "GET signed range", method: "GET", path: layer, header: h("Range", "bytes=+1-4"), status: 200, wantBody: layerData},
		{name: "GET range of another unit", method: "GET", path: layer, header: h("Range", "items=0-4"), status: 200, wantBody: layerData},
		{name: "GET range unit in capitals", method: "GET", path: layer, header: h("Range", "Bytes=0-4"), status: 206, wantBody: layerData[:5]},
		{name: "GET empty suffix range", method: "GET", path: layer, header: h("Range", "bytes=-0"), status: 416, code: "RANGE_INVALID",
			wantHeader: h("Content-Range", fmt.Sprintf("bytes */%d", n))},
		{name: "GET empty suffix among ranges", method: "GET", path: layer, header: h("Range", "bytes=-0, 0-4"), status: 206,
			wantBody: layerData[:5], wantHeader: h("Content-Range", fmt.Sprintf("bytes 0-4/%d", n))},
		{name: "GET unsatisfiable among ranges", method: "GET", path: layer, header: h("Range", fmt.Sprintf("bytes=%d-,2-3", n)), status: 206,
			wantBody: layerData[2:4], wantHeader: h("Content-Range", fmt.Sprintf("bytes 2-3/%d", n))},
		{name: "GET unsatisfiable ranges", method: "GET", path: layer, header: h("Range", fmt.Sprintf("bytes=%d-, -0", n)), status: 416,
			code: "RANGE_INVALID", wantHeader: h("Content-Range", fmt.Sprintf("bytes */%d", n))},
		{name: "GET range with matching If-Range", method: "GET", path: layer, header: h("Range", "bytes=0-4", "If-Range", etag), status: 206,
			wantBody: layerData[:5]},
		{name: "GET unsatisfiable range with other If-Range", method: "GET", path: layer,
			header: h("Range", "bytes=1000-2000", "If-Range", `"sha256:other"`), status: 200, wantBody: layerData},
		{name: "GET If-None-Match", method: "GET", path: layer, header: h("If-None-Match", etag), status: 304,
			wantBody: []byte{}},
		{name: "GET If-None-Match other", method: "GET", path: layer, header: h("If-None-Match", `"sha256:other"`),
			status: 200, wantBody: layerData},
		{name: "HEAD unknown", method: "HEAD", path: blobPath("test", missingDigest), status: 404},
		{name: "GET unknown", method: "GET", path: blobPath("test", missingDigest), status: 404, code: "BLOB_UNKNOWN"},
		{name: "GET unknown repo", method: "GET", path: blobPath("nope", layerDigest), status: 404, code: "BLOB_UNKNOWN"},
		{name: "GET blob of another repo", method: "GET", path: blobPath("test", otherDigest), status: 404, code: "BLOB_UNKNOWN"},
		{name: "GET nested repo", method: "GET", path: blobPath("other/nested", otherDigest), status: 200, wantBody: otherData},
		{name: "GET bad digest", method: "GET", path: "/v2/test/blobs/sha256:xyz", status: 400, code: "DIGEST_INVALID"},
		{name: "GET unsupported algorithm", method: "GET", path: "/v2/test/blobs/md5:" + strings.Repeat("0", 32),
			status: 400, code: "DIGEST_INVALID"},
		{name: "GET sha384", method: "GET", path: "/v2/test/blobs/" + digest.SHA384.FromBytes(layerData).String(),
			status: 400, code: "DIGEST_INVALID"},
		{name: "HEAD bad digest", method: "HEAD", path: "/v2/test/blobs/latest", status: 400},
		{name: "DELETE", method: "DELETE", path: layer, status: 202,
			wantHeader: h("Docker-Content-Digest", layerDigest.String()),
			check:      wantStatus("HEAD", layer, 404)},
		{name: "DELETE unknown", method: "DELETE", path: blobPath("test", missingDigest), status: 404, code: "BLOB_UNKNOWN"},
		{name: "DELETE bad digest", method: "DELETE", path: "/v2/test/blobs/nope", status: 400, code: "DIGEST_INVALID"},
		{name: "PUT", method: "PUT", path: layer, body: layerData, status: 405, code: "UNSUPPORTED"},
		{name: "POST", method: "POST", path: layer, status: 405, code: "UNSUPPORTED"},
		{name: "PATCH", method: "PATCH", path: layer, status: 405, code: "UNSUPPORTED"},
	})
}

// TestCallsNames covers repository name validation on every route.
func TestCallsNames(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("a", 200) + "/" + strings.Repeat("b", 55) // 256 characters
	longOK := strings.Repeat("a", 200) + "/" + strings.Repeat("b", 54)
	var calls []call
	for _, tc := range []struct{ name, repo string }{
		{"uppercase", "Test"},
		{"uppercase component", "test/Sub"},
		{"dot dot", "a/../b"},
		{"dot component", "a/./b"},
		{"empty component", "a//b"},
		{"leading separator", "-a"},
		{"trailing separator", "a-"},
		{"double dot separator", "a..b"},
		{"256 characters", long},
		{"percent", "a%25b"},
	} {
		for _, r := range []struct{ method, path string }{
			{"GET", manifestPath(tc.repo, "latest")},
			{"PUT", manifestPath(tc.repo, "latest")},
			{"GET", blobPath(tc.repo, layerDigest)},
			{"POST", "/v2/" + tc.repo + "/blobs/uploads/"},
			{"GET", "/v2/" + tc.repo + "/tags/list"},
			{"GET", "/v2/" + tc.repo + "/referrers/" + imgDigest.String()},
		} {
			c := call{name: tc.name + " " + r.method + " " + r.path, method: r.method, path: r.path,
				status: 400, code: "NAME_INVALID"}
			if r.method == "PUT" {
				c.header, c.body = h("Content-Type", mtOCIManifest), imgManifest
			}
			calls = append(calls, c)
		}
	}
	calls = append(calls,
		call{name: "255 characters", method: "GET", path: manifestPath(longOK, "latest"), status: 404, code: "MANIFEST_UNKNOWN"},
		call{name: "separators", method: "GET", path: manifestPath("a.b_c__d--e/f-g", "latest"), status: 404, code: "MANIFEST_UNKNOWN"},
		// The OCI name grammar allows path components that the filesystem
		// layout reserves; they must be a client error, not a 500.
		call{name: "component blobs GET", method: "GET", path: blobPath("test/blobs", layerDigest), status: 400, code: "NAME_INVALID"},
		call{name: "component blobs POST", method: "POST", path: "/v2/test/blobs/blobs/uploads/", status: 400, code: "NAME_INVALID"},
		call{name: "component index.json PUT", method: "PUT", path: manifestPath("test/index.json", "latest"),
			header: h("Content-Type", mtOCIManifest), body: imgManifest, status: 400, code: "NAME_INVALID"},
		call{name: "component oci-layout POST", method: "POST", path: "/v2/test/oci-layout/blobs/uploads/", status: 400, code: "NAME_INVALID"},
	)
	runCalls(t, calls)
}

// TestHealth covers /livez, /readyz and /metrics.
func TestHealth(t *testing.T) {
	t.Parallel()
	ts := newServer(t)
	if resp, _ := ts.get(t, "GET", "/livez"); resp.StatusCode != 200 {
		t.Errorf("/livez: %d, want 200", resp.StatusCode)
	}
	if resp, _ := ts.get(t, "GET", "/readyz"); resp.StatusCode != 503 {
		t.Errorf("/readyz before SetReady: %d, want 503", resp.StatusCode)
	}
	ts.api.SetReady(true)
	if resp, _ := ts.get(t, "GET", "/readyz"); resp.StatusCode != 200 {
		t.Errorf("/readyz after SetReady(true): %d, want 200", resp.StatusCode)
	}
	ts.api.SetReady(false)
	if resp, _ := ts.get(t, "GET", "/readyz"); resp.StatusCode != 503 {
		t.Errorf("/readyz after SetReady(false): %d, want 503", resp.StatusCode)
	}
	ts.get(t, "GET", "/v2/")
	ts.get(t, "GET", manifestPath("test", "nope"))
	resp, body := ts.get(t, "GET", "/metrics")
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	for _, want := range []string{
		"berth_http_requests_total",
		`berth_http_requests_total{method="GET",route="base",status="200"} 1`,
		`berth_http_requests_total{method="GET",route="manifest",status="404"} 1`,
		"berth_http_request_duration_seconds",
		"berth_uploads_in_progress",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestNotFoundOutsideAPI checks that paths outside /v2 are not the API's.
func TestNotFoundOutsideAPI(t *testing.T) {
	t.Parallel()
	ts := newServer(t)
	for _, p := range []string{"/", "/v1/", "/v2foo", "/metricsx"} {
		resp, _ := ts.get(t, "GET", p)
		if resp.StatusCode != 404 {
			t.Errorf("GET %s: %d, want 404", p, resp.StatusCode)
		}
		if v := resp.Header.Get("Docker-Distribution-API-Version"); v != "" {
			t.Errorf("GET %s: Docker-Distribution-API-Version %q outside the API", p, v)
		}
	}
}
