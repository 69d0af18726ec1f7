package e2e

import (
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"strings"
	"testing"
)

// TestBadInput sends malformed requests by raw HTTP: each gets the right
// status and OCI error code as JSON, and leaves storage unchanged (the files
// under the storage root, or on s3 the bucket's keys as versitygw's posix
// directory shows them, minus _uploads; and the catalog and tags as the API
// shows them).
func TestBadInput(t *testing.T) {
	forEachBackend(t, testBadInput)
}

func testBadInput(t *testing.T, be string) {
	r := startRegistry(t, regOpts{Backend: be})
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

	// The good image survived every bad request.
	if res := r.do(t, "GET", "/v2/"+repo+"/manifests/v1", map[string]string{"Accept": mtManifest}, nil); res.Status != 200 || sha256Digest(res.Body) != goodDigest {
		t.Errorf("GET v1 after the bad requests: %s", res)
	}
	requireStorageOK(t, r.StorageRoot())
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
