package api_test

import (
	"bytes"
	"crypto/sha512"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// newBlob is content no fixture repository holds.
var (
	newData   = []byte("0123456789ABCDEFGHIJ") // 20 bytes
	newDigest = digest.FromBytes(newData)
)

// locationHasUUID checks that Location is the session path ending in the
// Docker-Upload-UUID.
func locationHasUUID(repo string) func(*testing.T, *testServer, *http.Response, []byte) {
	return func(t *testing.T, _ *testServer, resp *http.Response, _ []byte) {
		t.Helper()
		id, loc := resp.Header.Get("Docker-Upload-UUID"), resp.Header.Get("Location")
		if id == "" || loc != "/v2/"+repo+"/blobs/uploads/"+id {
			t.Errorf("Location %q, Docker-Upload-UUID %q: want Location /v2/%s/blobs/uploads/<uuid>", loc, id, repo)
		}
	}
}

// blobIs checks that repo serves dgst with content.
func blobIs(repo string, dgst digest.Digest, content []byte) func(*testing.T, *testServer, *http.Response, []byte) {
	return func(t *testing.T, ts *testServer, _ *http.Response, _ []byte) {
		t.Helper()
		resp, body := ts.get(t, "GET", blobPath(repo, dgst))
		if resp.StatusCode != 200 || !bytes.Equal(body, content) {
			t.Errorf("then GET %s: %d %.100q, want 200 %.100q", blobPath(repo, dgst), resp.StatusCode, body, content)
		}
	}
}

// TestCallsUploads covers single requests on the upload routes.
func TestCallsUploads(t *testing.T) {
	t.Parallel()
	start := "/v2/test/blobs/uploads/"
	created := func(repo string, d digest.Digest) map[string]string {
		return h("Location", blobPath(repo, d), "Docker-Content-Digest", d.String(), "Content-Length", "0")
	}
	half := len(newData) / 2
	runCalls(t, []call{
		// Sessions.
		{name: "POST session", method: "POST", path: start, status: 202,
			wantHeader: h("Range", "0-0", "Docker-Upload-UUID", "*", "Content-Length", "0"), check: locationHasUUID("test")},
		{name: "POST session without slash", method: "POST", path: "/v2/test/blobs/uploads", status: 202,
			check: locationHasUUID("test")},
		{name: "POST session nested new repo", method: "POST", path: "/v2/a/b/c/blobs/uploads/", status: 202,
			check: locationHasUUID("a/b/c")},
		{name: "GET start", method: "GET", path: start, status: 405, code: "UNSUPPORTED"},
		{name: "PUT start", method: "PUT", path: start, status: 405, code: "UNSUPPORTED"},

		// Monolithic.
		{name: "POST monolithic", method: "POST", path: start + "?digest=" + newDigest.String(), body: newData,
			header: h("Content-Type", "application/octet-stream"), status: 201, wantHeader: created("test", newDigest),
			check: blobIs("test", newDigest, newData)},
		{name: "POST monolithic sha512", method: "POST", path: start + "?digest=" + sha512Of(newData).String(), body: newData,
			status: 201, wantHeader: created("test", sha512Of(newData)), check: blobIs("test", sha512Of(newData), newData)},
		{name: "POST monolithic empty", method: "POST", path: start + "?digest=" + digest.FromBytes(nil).String(), body: []byte{},
			status: 201, check: blobIs("test", digest.FromBytes(nil), []byte{})},
		{name: "POST monolithic wrong digest", method: "POST", path: start + "?digest=" + missingDigest.String(), body: newData,
			status: 400, code: "DIGEST_INVALID",
			check: both(wantStatus("HEAD", blobPath("test", missingDigest), 404), wantStatus("HEAD", blobPath("test", newDigest), 404))},
		{name: "POST monolithic bad digest", method: "POST", path: start + "?digest=sha256:abc", body: newData,
			status: 400, code: "DIGEST_INVALID"},
		{name: "POST monolithic unsupported algorithm", method: "POST",
			path: start + "?digest=" + digest.SHA384.FromBytes(newData).String(), body: newData, status: 400, code: "DIGEST_INVALID"},

		// Mounts.
		{name: "mount from", method: "POST", path: start + "?mount=" + otherDigest.String() + "&from=other/nested",
			status: 201, wantHeader: created("test", otherDigest), check: blobIs("test", otherDigest, otherData)},
		{name: "mount without from", method: "POST", path: start + "?mount=" + otherDigest.String(),
			status: 201, wantHeader: created("test", otherDigest), check: blobIs("test", otherDigest, otherData)},
		{name: "mount into new repo", method: "POST", path: "/v2/fresh/repo/blobs/uploads/?mount=" + layerDigest.String() + "&from=test",
			status: 201, wantHeader: created("fresh/repo", layerDigest), check: blobIs("fresh/repo", layerDigest, layerData)},
		{name: "mount already present", method: "POST", path: start + "?mount=" + layerDigest.String() + "&from=other/nested",
			status: 201, wantHeader: created("test", layerDigest)},
		{name: "mount missing blob falls back", method: "POST", path: start + "?mount=" + missingDigest.String() + "&from=other/nested",
			status: 202, wantHeader: h("Range", "0-0", "Docker-Upload-UUID", "*"), check: locationHasUUID("test")},
		{name: "mount missing blob without from falls back", method: "POST", path: start + "?mount=" + missingDigest.String(),
			status: 202, check: locationHasUUID("test")},
		{name: "mount from wrong repo falls back", method: "POST", path: start + "?mount=" + otherDigest.String() + "&from=nope",
			status: 202, check: both(locationHasUUID("test"), wantStatus("HEAD", blobPath("test", otherDigest), 404))},
		{name: "mount from invalid name falls back", method: "POST", path: start + "?mount=" + otherDigest.String() + "&from=Other/../x",
			status: 202, check: locationHasUUID("test")},
		{name: "mount bad digest falls back", method: "POST", path: start + "?mount=sha256:nope&from=other/nested",
			status: 202, check: locationHasUUID("test")},

		// PATCH.
		{name: "PATCH chunk", method: "PATCH", path: start + "{upload}", body: newData[:5], header: h("Content-Range", "0-4"),
			status: 202, wantHeader: h("Range", "0-4", "Docker-Upload-UUID", "*", "Content-Length", "0"), check: locationHasUUID("test")},
		{name: "PATCH chunk bytes form", method: "PATCH", path: start + "{upload}", upload: newData[:5], body: newData[5:10],
			header: h("Content-Range", "bytes 5-9/*"), status: 202, wantHeader: h("Range", "0-9")},
		{name: "PATCH stream", method: "PATCH", path: start + "{upload}", body: newData, status: 202,
			wantHeader: h("Range", fmt.Sprintf("0-%d", len(newData)-1))},
		{name: "PATCH empty", method: "PATCH", path: start + "{upload}", status: 202, wantHeader: h("Range", "0-0")},
		{name: "PATCH out of order", method: "PATCH", path: start + "{upload}", upload: newData[:5], body: newData[10:15],
			header: h("Content-Range", "10-14"), status: 416, code: "BLOB_UPLOAD_INVALID",
			wantHeader: h("Range", "0-4", "Docker-Upload-UUID", "*"), check: locationHasUUID("test")},
		{name: "PATCH overlapping", method: "PATCH", path: start + "{upload}", upload: newData[:5], body: newData[0:5],
			header: h("Content-Range", "0-4"), status: 416, wantHeader: h("Range", "0-4")},
		{name: "PATCH range longer than body", method: "PATCH", path: start + "{upload}", body: newData[:5],
			header: h("Content-Range", "0-9"), status: 400, code: "SIZE_INVALID", check: wantStatusRange(start+"{uuid}", "0-0")},
		{name: "PATCH range shorter than body", method: "PATCH", path: start + "{upload}", body: newData[:10],
			header: h("Content-Range", "0-4"), status: 400, code: "SIZE_INVALID", check: wantStatusRange(start+"{uuid}", "0-0")},
		{name: "PATCH out of order and wrong length", method: "PATCH", path: start + "{upload}", upload: newData[:5], body: newData[:5],
			header: h("Content-Range", "10-19"), status: 416, wantHeader: h("Range", "0-4")},
		{name: "PATCH malformed range", method: "PATCH", path: start + "{upload}", body: newData[:5],
			header: h("Content-Range", "five"), status: 416},
		{name: "PATCH unknown session", method: "PATCH", path: start + strings.Repeat("0", 32), body: newData,
			status: 404, code: "BLOB_UPLOAD_UNKNOWN"},
		{name: "PATCH bad session id", method: "PATCH", path: start + "not-an-id", body: newData,
			status: 404, code: "BLOB_UPLOAD_UNKNOWN"},
		{name: "PATCH session of another repo", method: "PATCH", path: "/v2/other/nested/blobs/uploads/{upload}", body: newData,
			status: 404, code: "BLOB_UPLOAD_UNKNOWN"},

		// PUT.
		{name: "PUT with final chunk", method: "PUT", path: start + "{upload}?digest=" + newDigest.String(),
			upload: newData[:half], body: newData[half:], status: 201, wantHeader: created("test", newDigest),
			check: both(blobIs("test", newDigest, newData), wantStatus("GET", start+"{uuid}", 404))},
		{name: "PUT with final ranged chunk", method: "PUT", path: start + "{upload}?digest=" + newDigest.String(),
			upload: newData[:half], body: newData[half:], header: h("Content-Range", fmt.Sprintf("%d-%d", half, len(newData)-1)),
			status: 201, check: blobIs("test", newDigest, newData)},
		{name: "PUT without final chunk", method: "PUT", path: start + "{upload}?digest=" + newDigest.String(),
			upload: newData, status: 201, wantHeader: created("test", newDigest), check: blobIs("test", newDigest, newData)},
		{name: "PUT whole blob in PUT", method: "PUT", path: start + "{upload}?digest=" + newDigest.String(),
			body: newData, status: 201, check: blobIs("test", newDigest, newData)},
		{name: "PUT sha512", method: "PUT", path: start + "{upload}?digest=" + sha512Of(newData).String(),
			upload: newData, status: 201, check: blobIs("test", sha512Of(newData), newData)},
		{name: "PUT without digest", method: "PUT", path: start + "{upload}", upload: newData,
			status: 400, code: "DIGEST_INVALID"},
		{name: "PUT wrong digest", method: "PUT", path: start + "{upload}?digest=" + missingDigest.String(), upload: newData,
			status: 400, code: "DIGEST_INVALID",
			check: both(wantStatus("HEAD", blobPath("test", missingDigest), 404), wantStatus("HEAD", blobPath("test", newDigest), 404))},
		{name: "PUT bad digest", method: "PUT", path: start + "{upload}?digest=sha256:zz", upload: newData,
			status: 400, code: "DIGEST_INVALID"},
		{name: "PUT out of order final chunk", method: "PUT", path: start + "{upload}?digest=" + newDigest.String(),
			upload: newData[:5], body: newData[10:], header: h("Content-Range", fmt.Sprintf("10-%d", len(newData)-1)),
			status: 416, wantHeader: h("Range", "0-4")},
		{name: "PUT unknown session", method: "PUT", path: start + strings.Repeat("0", 32) + "?digest=" + newDigest.String(),
			status: 404, code: "BLOB_UPLOAD_UNKNOWN"},

		// Status and cancel.
		{name: "GET status", method: "GET", path: start + "{upload}", upload: newData[:7], status: 204,
			wantHeader: h("Range", "0-6", "Docker-Upload-UUID", "*"), check: locationHasUUID("test")},
		{name: "GET status empty", method: "GET", path: start + "{upload}", status: 204, wantHeader: h("Range", "0-0")},
		{name: "GET status unknown", method: "GET", path: start + strings.Repeat("0", 32), status: 404, code: "BLOB_UPLOAD_UNKNOWN"},
		{name: "DELETE session", method: "DELETE", path: start + "{upload}", upload: newData, status: 204,
			check: wantStatus("GET", start+"{uuid}", 404)},
		{name: "DELETE unknown session", method: "DELETE", path: start + strings.Repeat("0", 32), status: 404, code: "BLOB_UPLOAD_UNKNOWN"},
		{name: "POST session id", method: "POST", path: start + "{upload}", status: 405, code: "UNSUPPORTED"},
		{name: "HEAD session id", method: "HEAD", path: start + "{upload}", status: 405},
	})
}

// TestFlowsUploads covers uploads that take several requests.
func TestFlowsUploads(t *testing.T) {
	t.Parallel()
	start := "/v2/test/blobs/uploads/"
	d := newDigest.String()
	runFlows(t, []flow{
		{name: "chunked", calls: []call{
			{method: "POST", path: start, status: 202, wantHeader: h("Range", "0-0")},
			{method: "PATCH", path: "{location}", body: newData[:5], header: h("Content-Range", "0-4"), status: 202, wantHeader: h("Range", "0-4")},
			{method: "PATCH", path: "{location}", body: newData[5:10], header: h("Content-Range", "5-9"), status: 202, wantHeader: h("Range", "0-9")},
			{method: "PATCH", path: "{location}", body: newData[10:15], status: 202, wantHeader: h("Range", "0-14")},
			{method: "GET", path: "{location}", status: 204, wantHeader: h("Range", "0-14")},
			{method: "PUT", path: "{location}?digest=" + d, body: newData[15:], status: 201},
			{method: "GET", path: blobPath("test", newDigest), status: 200, wantBody: newData},
			{method: "GET", path: start + "{uuid}", status: 404, code: "BLOB_UPLOAD_UNKNOWN"},
		}},
		{name: "empty first patch", calls: []call{
			{method: "POST", path: start, status: 202},
			{method: "PATCH", path: "{location}", status: 202, wantHeader: h("Range", "0-0")},
			{method: "PATCH", path: "{location}", body: newData, header: h("Content-Range", fmt.Sprintf("0-%d", len(newData)-1)),
				status: 202, wantHeader: h("Range", fmt.Sprintf("0-%d", len(newData)-1))},
			{method: "PUT", path: "{location}?digest=" + d, status: 201},
			{method: "HEAD", path: blobPath("test", newDigest), status: 200, wantHeader: h("Content-Length", fmt.Sprint(len(newData)))},
		}},
		{name: "out of order then resume", calls: []call{
			{method: "POST", path: start, status: 202},
			{method: "PATCH", path: "{location}", body: newData[:5], header: h("Content-Range", "0-4"), status: 202},
			{method: "PATCH", path: "{location}", body: newData[10:15], header: h("Content-Range", "10-14"), status: 416, wantHeader: h("Range", "0-4")},
			{method: "GET", path: "{location}", status: 204, wantHeader: h("Range", "0-4")},
			{method: "PATCH", path: "{location}", body: newData[5:], header: h("Content-Range", fmt.Sprintf("5-%d", len(newData)-1)), status: 202},
			{method: "PUT", path: "{location}?digest=" + d, status: 201},
			{method: "GET", path: blobPath("test", newDigest), status: 200, wantBody: newData},
		}},
		{name: "cancel", calls: []call{
			{method: "POST", path: start, status: 202},
			{method: "PATCH", path: "{location}", body: newData, status: 202},
			{method: "DELETE", path: "{location}", status: 204},
			{method: "GET", path: start + "{uuid}", status: 404, code: "BLOB_UPLOAD_UNKNOWN"},
			{method: "PATCH", path: start + "{uuid}", body: newData, status: 404, code: "BLOB_UPLOAD_UNKNOWN"},
			{method: "PUT", path: start + "{uuid}?digest=" + d, status: 404, code: "BLOB_UPLOAD_UNKNOWN"},
			{method: "DELETE", path: start + "{uuid}", status: 404, code: "BLOB_UPLOAD_UNKNOWN"},
			{method: "HEAD", path: blobPath("test", newDigest), status: 404},
		}},
		{name: "wrong digest ends session", calls: []call{
			{method: "POST", path: start, status: 202},
			{method: "PATCH", path: "{location}", body: newData, status: 202},
			{method: "PUT", path: start + "{uuid}?digest=" + missingDigest.String(), status: 400, code: "DIGEST_INVALID"},
			{method: "HEAD", path: blobPath("test", missingDigest), status: 404},
			{method: "HEAD", path: blobPath("test", newDigest), status: 404},
			{method: "PUT", path: start + "{uuid}?digest=" + d, status: 404, code: "BLOB_UPLOAD_UNKNOWN"},
		}},
		{name: "missing digest keeps session", calls: []call{
			{method: "POST", path: start, status: 202},
			{method: "PATCH", path: "{location}", body: newData, status: 202},
			{method: "PUT", path: start + "{uuid}", status: 400, code: "DIGEST_INVALID"},
			{method: "PUT", path: start + "{uuid}?digest=" + d, status: 201},
		}},
		{name: "mount then use", calls: []call{
			{method: "POST", path: start + "?mount=" + otherDigest.String() + "&from=other/nested", status: 201},
			{method: "GET", path: blobPath("test", otherDigest), status: 200, wantBody: otherData},
			{method: "DELETE", path: blobPath("test", otherDigest), status: 202},
			{method: "GET", path: blobPath("other/nested", otherDigest), status: 200, wantBody: otherData},
		}},
		{name: "anonymous mount finds pushed blob", calls: []call{
			{method: "POST", path: "/v2/first/blobs/uploads/?digest=" + d, body: newData, status: 201},
			{method: "POST", path: "/v2/second/blobs/uploads/?mount=" + d, status: 201},
			{method: "GET", path: blobPath("second", newDigest), status: 200, wantBody: newData},
		}},
		{name: "anonymous mount after deleted source falls back", calls: []call{
			{method: "POST", path: "/v2/first/blobs/uploads/?digest=" + d, body: newData, status: 201},
			{method: "DELETE", path: blobPath("first", newDigest), status: 202},
			{method: "POST", path: "/v2/second/blobs/uploads/?mount=" + d, status: 202},
		}},
		{name: "monolithic then delete", calls: []call{
			{method: "POST", path: start + "?digest=" + d, body: newData, status: 201},
			{method: "DELETE", path: blobPath("test", newDigest), status: 202},
			{method: "GET", path: blobPath("test", newDigest), status: 404, code: "BLOB_UNKNOWN"},
			{method: "DELETE", path: blobPath("test", newDigest), status: 404, code: "BLOB_UNKNOWN"},
		}},
	})
}

func sha512Of(p []byte) digest.Digest {
	sum := sha512.Sum512(p)
	return digest.NewDigestFromBytes(digest.SHA512, sum[:])
}
