package api_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// referrersAre checks that the body is an OCI index listing exactly want,
// in any order.
func referrersAre(want ...digest.Digest) func(*testing.T, *testServer, *http.Response, []byte) {
	return func(t *testing.T, _ *testServer, resp *http.Response, body []byte) {
		t.Helper()
		if ct := resp.Header.Get("Content-Type"); ct != mtOCIIndex {
			t.Errorf("referrers Content-Type %q, want %s", ct, mtOCIIndex)
		}
		var idx v1.Index
		if err := json.Unmarshal(body, &idx); err != nil {
			t.Fatalf("referrers body %.200q: %v", body, err)
		}
		if idx.SchemaVersion != 2 || idx.MediaType != mtOCIIndex || idx.Manifests == nil {
			t.Errorf("referrers index %s: want schemaVersion 2, mediaType %s and a manifests list", body, mtOCIIndex)
		}
		var got []string
		for _, d := range idx.Manifests {
			got = append(got, d.Digest.String())
		}
		var ws []string
		for _, d := range want {
			ws = append(ws, d.String())
		}
		slices.Sort(got)
		slices.Sort(ws)
		if !slices.Equal(got, ws) {
			t.Errorf("referrers %q, want %q", got, ws)
		}
	}
}

// TestCallsListing covers tags/list, _catalog and referrers on the fixture.
func TestCallsListing(t *testing.T) {
	t.Parallel()
	runCalls(t, []call{
		{name: "tags", method: "GET", path: "/v2/test/tags/list", status: 200, wantHeader: h("Content-Type", "application/json", "Link", "-"),
			check: wantJSON(`{"name":"test","tags":["latest"]}`)},
		{name: "tags n=0", method: "GET", path: "/v2/test/tags/list?n=0", status: 200, wantHeader: h("Link", "-"),
			check: wantJSON(`{"name":"test","tags":[]}`)},
		{name: "tags n=1", method: "GET", path: "/v2/test/tags/list?n=1", status: 200, wantHeader: h("Link", "-"),
			check: wantJSON(`{"name":"test","tags":["latest"]}`)},
		{name: "tags last", method: "GET", path: "/v2/test/tags/list?last=latest", status: 200,
			check: wantJSON(`{"name":"test","tags":[]}`)},
		{name: "tags n max int", method: "GET", path: "/v2/test/tags/list?n=9223372036854775807", status: 200,
			wantHeader: h("Link", "-"), check: wantJSON(`{"name":"test","tags":["latest"]}`)},
		{name: "tags n invalid", method: "GET", path: "/v2/test/tags/list?n=abc", status: 400, code: "PAGINATION_NUMBER_INVALID"},
		{name: "tags n negative", method: "GET", path: "/v2/test/tags/list?n=-1", status: 400, code: "PAGINATION_NUMBER_INVALID"},
		{name: "tags unknown repo", method: "GET", path: "/v2/nope/tags/list", status: 404, code: "NAME_UNKNOWN"},
		{name: "tags repo with blobs only", method: "GET", path: "/v2/other/nested/tags/list", status: 404, code: "NAME_UNKNOWN"},
		{name: "tags POST", method: "POST", path: "/v2/test/tags/list", status: 405, code: "UNSUPPORTED"},
		{name: "tags DELETE", method: "DELETE", path: "/v2/test/tags/list", status: 405, code: "UNSUPPORTED"},

		{name: "catalog", method: "GET", path: "/v2/_catalog", status: 200, wantHeader: h("Content-Type", "application/json"),
			check: wantJSON(`{"repositories":["test"]}`)},
		{name: "catalog n=0", method: "GET", path: "/v2/_catalog?n=0", status: 200, wantHeader: h("Link", "-"),
			check: wantJSON(`{"repositories":[]}`)},
		{name: "catalog n invalid", method: "GET", path: "/v2/_catalog?n=x", status: 400, code: "PAGINATION_NUMBER_INVALID"},
		{name: "catalog n huge", method: "GET", path: "/v2/_catalog?n=99999999999999999999", status: 400, code: "PAGINATION_NUMBER_INVALID"},
		{name: "catalog POST", method: "POST", path: "/v2/_catalog", status: 405, code: "UNSUPPORTED"},

		{name: "referrers none", method: "GET", path: "/v2/test/referrers/" + imgDigest.String(), status: 200, check: referrersAre()},
		{name: "referrers unknown subject", method: "GET", path: "/v2/test/referrers/" + missingDigest.String(), status: 200, check: referrersAre()},
		{name: "referrers unknown repo", method: "GET", path: "/v2/nope/referrers/" + imgDigest.String(), status: 200, check: referrersAre()},
		{name: "referrers bad digest", method: "GET", path: "/v2/test/referrers/sha256:abc", status: 400, code: "DIGEST_INVALID"},
		{name: "referrers by tag", method: "GET", path: "/v2/test/referrers/latest", status: 400, code: "DIGEST_INVALID"},
		{name: "referrers DELETE", method: "DELETE", path: "/v2/test/referrers/" + imgDigest.String(), status: 405, code: "UNSUPPORTED"},
	})
}

// TestFlowsListing covers pagination and referrers over pushed content.
func TestFlowsListing(t *testing.T) {
	t.Parallel()
	ct := h("Content-Type", mtOCIManifest)
	sig := artifact("application/vnd.example.sig", v1.Descriptor{MediaType: mtOCIManifest, Digest: imgDigest, Size: int64(len(imgManifest))}, "sig")
	sigDigest := digest.FromBytes(sig)
	// An image whose artifactType comes from its config media type.
	cfgTyped := ociManifest(v1.Descriptor{MediaType: "application/vnd.example.config", Digest: configDgst, Size: int64(len(configData))},
		nil, &v1.Descriptor{MediaType: mtOCIManifest, Digest: imgDigest, Size: int64(len(imgManifest))}, "")
	cfgTypedDigest := digest.FromBytes(cfgTyped)
	pushTags := func(repo string, tags ...string) func(*testing.T, *testServer) {
		return func(t *testing.T, ts *testServer) {
			for _, b := range [][]byte{layerData, configData} {
				ts.seedBlob(t, repo, b)
			}
			for _, tag := range tags {
				ts.seedManifest(t, repo, tag, mtOCIManifest, imgManifest)
			}
		}
	}
	runFlows(t, []flow{
		{name: "tags pagination", setup: pushTags("pag", "e", "a", "d", "c", "b"), calls: []call{
			{method: "GET", path: "/v2/pag/tags/list", status: 200, wantHeader: h("Link", "-"),
				check: wantJSON(`{"name":"pag","tags":["a","b","c","d","e"]}`)},
			{method: "GET", path: "/v2/pag/tags/list?n=2", status: 200,
				wantHeader: h("Link", `</v2/pag/tags/list?last=b&n=2>; rel="next"`), check: wantJSON(`{"name":"pag","tags":["a","b"]}`)},
			{method: "GET", path: "/v2/pag/tags/list?last=b&n=2", status: 200,
				wantHeader: h("Link", `</v2/pag/tags/list?last=d&n=2>; rel="next"`), check: wantJSON(`{"name":"pag","tags":["c","d"]}`)},
			{method: "GET", path: "/v2/pag/tags/list?last=d&n=2", status: 200, wantHeader: h("Link", "-"),
				check: wantJSON(`{"name":"pag","tags":["e"]}`)},
			{method: "GET", path: "/v2/pag/tags/list?n=5", status: 200, wantHeader: h("Link", "-"),
				check: wantJSON(`{"name":"pag","tags":["a","b","c","d","e"]}`)},
			{method: "GET", path: "/v2/pag/tags/list?n=4", status: 200, wantHeader: h("Link", "~last=d"),
				check: wantJSON(`{"name":"pag","tags":["a","b","c","d"]}`)},
			{method: "GET", path: "/v2/pag/tags/list?last=bb", status: 200, check: wantJSON(`{"name":"pag","tags":["c","d","e"]}`)},
			{method: "GET", path: "/v2/pag/tags/list?last=e", status: 200, check: wantJSON(`{"name":"pag","tags":[]}`)},
			{method: "GET", path: "/v2/pag/tags/list?last=0", status: 200, check: wantJSON(`{"name":"pag","tags":["a","b","c","d","e"]}`)},
		}},
		{name: "tags of nested repo", setup: pushTags("a/b/c", "v1"), calls: []call{
			{method: "GET", path: "/v2/a/b/c/tags/list?n=1", status: 200, check: wantJSON(`{"name":"a/b/c","tags":["v1"]}`)},
		}},
		{name: "catalog pagination", setup: func(t *testing.T, ts *testServer) {
			pushTags("b/nested", "v1")(t, ts)
			pushTags("a", "v1")(t, ts)
			pushTags("c", "v1")(t, ts)
		}, calls: []call{
			{method: "GET", path: "/v2/_catalog", status: 200, check: wantJSON(`{"repositories":["a","b/nested","c","test"]}`)},
			{method: "GET", path: "/v2/_catalog?n=2", status: 200,
				wantHeader: h("Link", `</v2/_catalog?last=b%2Fnested&n=2>; rel="next"`), check: wantJSON(`{"repositories":["a","b/nested"]}`)},
			{method: "GET", path: "/v2/_catalog?n=2&last=b/nested", status: 200, wantHeader: h("Link", "-"),
				check: wantJSON(`{"repositories":["c","test"]}`)},
			{method: "GET", path: "/v2/_catalog?n=3", status: 200, wantHeader: h("Link", "~last=c"),
				check: wantJSON(`{"repositories":["a","b/nested","c"]}`)},
			{method: "GET", path: "/v2/_catalog?last=test", status: 200, check: wantJSON(`{"repositories":[]}`)},
		}},
		{name: "referrers", calls: []call{
			{method: "PUT", path: manifestPath("test", sbomDigest), header: ct, body: sbom, status: 201,
				wantHeader: h("OCI-Subject", imgDigest.String())},
			{method: "PUT", path: manifestPath("test", "sig"), header: ct, body: sig, status: 201,
				wantHeader: h("OCI-Subject", imgDigest.String())},
			{method: "PUT", path: manifestPath("test", cfgTypedDigest), header: ct, body: cfgTyped, status: 201},
			{method: "GET", path: "/v2/test/referrers/" + imgDigest.String(), status: 200, wantHeader: h("OCI-Filters-Applied", "-"),
				check: referrersAre(sbomDigest, sigDigest, cfgTypedDigest)},
			{method: "GET", path: "/v2/test/referrers/" + imgDigest.String() + "?artifactType=application/vnd.example.sbom", status: 200,
				wantHeader: h("OCI-Filters-Applied", "artifactType"), check: both(referrersAre(sbomDigest), referrerFields(sbom))},
			{method: "GET", path: "/v2/test/referrers/" + imgDigest.String() + "?artifactType=application/vnd.example.config", status: 200,
				wantHeader: h("OCI-Filters-Applied", "artifactType"), check: referrersAre(cfgTypedDigest)},
			{method: "GET", path: "/v2/test/referrers/" + imgDigest.String() + "?artifactType=none/such", status: 200,
				wantHeader: h("OCI-Filters-Applied", "artifactType"), check: referrersAre()},
			// Referrers are per repository.
			{method: "GET", path: "/v2/other/nested/referrers/" + imgDigest.String(), status: 200, check: referrersAre()},
			// Deleting a referrer drops it from the list.
			{method: "DELETE", path: manifestPath("test", sigDigest), status: 202},
			{method: "GET", path: "/v2/test/referrers/" + imgDigest.String(), status: 200, check: referrersAre(sbomDigest, cfgTypedDigest)},
			// Deleting its tag does not.
			{method: "DELETE", path: manifestPath("test", "latest"), status: 202},
			{method: "GET", path: "/v2/test/referrers/" + imgDigest.String(), status: 200, check: referrersAre(sbomDigest, cfgTypedDigest)},
		}},
	})
}

// referrerFields checks that the single listed descriptor describes body
// (media type, size, artifactType and annotations).
func referrerFields(body []byte) func(*testing.T, *testServer, *http.Response, []byte) {
	return func(t *testing.T, _ *testServer, _ *http.Response, got []byte) {
		t.Helper()
		var idx v1.Index
		if err := json.Unmarshal(got, &idx); err != nil || len(idx.Manifests) != 1 {
			t.Fatalf("referrers %s: want one descriptor (%v)", got, err)
		}
		var m v1.Manifest
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatal(err)
		}
		d := idx.Manifests[0]
		if d.MediaType != mtOCIManifest || d.Size != int64(len(body)) || d.ArtifactType != m.ArtifactType ||
			d.Annotations["test"] != m.Annotations["test"] {
			t.Errorf("referrer descriptor %+v does not describe %s", d, body)
		}
	}
}
