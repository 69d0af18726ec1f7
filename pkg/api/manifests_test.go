package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berthreg/berth/pkg/registry"
)

// Manifests pushed by the tests, all over the fixture blobs.
var (
	img2Manifest = ociManifest(desc(mtOCIConfig, configData), []v1.Descriptor{desc(mtOCILayer, layerData), desc(mtOCILayer, emptyData)}, nil, "")
	img2Digest   = digest.FromBytes(img2Manifest)
	indexBody    = ociIndex(mtOCIIndex, v1.Descriptor{MediaType: mtOCIManifest, Digest: imgDigest, Size: int64(len(imgManifest)),
		Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}})
	indexDigest  = digest.FromBytes(indexBody)
	dockerBody   = dockerManifest()
	dockerDigest = digest.FromBytes(dockerBody)
	sbom         = artifact("application/vnd.example.sbom", v1.Descriptor{MediaType: mtOCIManifest, Digest: imgDigest, Size: int64(len(imgManifest))}, "sbom")
	sbomDigest   = digest.FromBytes(sbom)
)

// manifestIs checks that GET ref in repo serves body with mt.
func manifestIs(repo, ref string, mt string, body []byte) func(*testing.T, *testServer, *http.Response, []byte) {
	return func(t *testing.T, ts *testServer, _ *http.Response, _ []byte) {
		t.Helper()
		resp, got := ts.get(t, "GET", manifestPath(repo, ref))
		if resp.StatusCode != 200 || !bytes.Equal(got, body) || resp.Header.Get("Content-Type") != mt {
			t.Errorf("then GET %s: %d %s %.100q, want 200 %s %.100q", manifestPath(repo, ref),
				resp.StatusCode, resp.Header.Get("Content-Type"), got, mt, body)
		}
		if want := digest.FromBytes(body).String(); strings.HasPrefix(ref, "sha256:") && resp.Header.Get("Docker-Content-Digest") != want {
			t.Errorf("then GET %s: Docker-Content-Digest %q, want %s", manifestPath(repo, ref), resp.Header.Get("Docker-Content-Digest"), want)
		}
	}
}

// headAgreesWithGet checks that HEAD and GET of path answer the same status.
// The call's own status is not checked (status 0 accepts anything).
func headAgreesWithGet(path string) func(*testing.T, *testServer, *http.Response, []byte) {
	return func(t *testing.T, ts *testServer, _ *http.Response, _ []byte) {
		t.Helper()
		head, _ := ts.get(t, "HEAD", path)
		get, _ := ts.get(t, "GET", path)
		if head.StatusCode != get.StatusCode {
			t.Errorf("then HEAD %s: %d but GET: %d", path, head.StatusCode, get.StatusCode)
		}
	}
}

// tagsResolve checks that every listed tag of repo can be fetched.
func tagsResolve(repo string) func(*testing.T, *testServer, *http.Response, []byte) {
	return func(t *testing.T, ts *testServer, _ *http.Response, body []byte) {
		t.Helper()
		var list struct{ Tags []string }
		if err := json.Unmarshal(body, &list); err != nil {
			t.Fatal(err)
		}
		for _, tag := range list.Tags {
			if resp, _ := ts.get(t, "GET", manifestPath(repo, tag)); resp.StatusCode != 200 {
				t.Errorf("tag %s is listed but GET answers %d", tag, resp.StatusCode)
			}
		}
	}
}

// padded is an OCI manifest padded with an annotation to exactly size bytes.
func padded(size int) []byte {
	base := ociManifest(desc(mtOCIConfig, configData), nil, nil, "")
	probe := bytes.Replace(base, []byte(`{"schemaVersion":2,`), []byte(`{"schemaVersion":2,"annotations":{"pad":""},`), 1)
	pad := size - len(probe)
	if pad < 0 {
		panic("size too small")
	}
	return bytes.Replace(probe, []byte(`"pad":""`), []byte(`"pad":"`+strings.Repeat("x", pad)+`"`), 1)
}

// TestCallsManifests covers manifest GET, HEAD, PUT and DELETE.
func TestCallsManifests(t *testing.T) {
	t.Parallel()
	ct := func(mt string) map[string]string { return h("Content-Type", mt) }
	created := func(d digest.Digest) map[string]string {
		return h("Location", manifestPath("test", d), "Docker-Content-Digest", d.String(), "Content-Length", "0")
	}
	sha512Img := sha512Of(imgManifest)
	foreign := ociManifest(desc(mtOCIConfig, configData), []v1.Descriptor{
		desc(mtOCILayer, layerData),
		desc("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", []byte("not here")),
		desc("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", []byte("not here either")),
	}, nil, "")
	withSubject := ociManifest(desc(mtOCIConfig, configData), nil, &v1.Descriptor{MediaType: mtOCIManifest, Digest: imgDigest, Size: int64(len(imgManifest))}, "")
	dockerList := ociIndex(mtDockerList, v1.Descriptor{MediaType: mtDockerManifest, Digest: dockerDigest, Size: int64(len(dockerBody))})
	big := padded(registry.MaxManifestSize)
	tooBig := padded(registry.MaxManifestSize + 1)
	get := h("Content-Type", mtOCIManifest, "Docker-Content-Digest", imgDigest.String(),
		"Content-Length", fmt.Sprint(len(imgManifest)), "ETag", `"`+imgDigest.String()+`"`)

	runCalls(t, []call{
		// GET and HEAD.
		{name: "GET tag", method: "GET", path: manifestPath("test", "latest"), status: 200, wantBody: imgManifest, wantHeader: get},
		{name: "GET digest", method: "GET", path: manifestPath("test", imgDigest), status: 200, wantBody: imgManifest, wantHeader: get},
		{name: "HEAD tag", method: "HEAD", path: manifestPath("test", "latest"), status: 200, wantHeader: get},
		{name: "HEAD digest", method: "HEAD", path: manifestPath("test", imgDigest), status: 200, wantHeader: get},
		{name: "GET unknown tag", method: "GET", path: manifestPath("test", "nope"), status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "GET unknown digest", method: "GET", path: manifestPath("test", missingDigest), status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "HEAD unknown", method: "HEAD", path: manifestPath("test", "nope"), status: 404},
		{name: "GET unknown repo", method: "GET", path: manifestPath("nope", "latest"), status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "GET blob as manifest", method: "GET", path: manifestPath("test", layerDigest), status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "GET invalid tag", method: "GET", path: manifestPath("test", "-bad"), status: 400, code: "TAG_INVALID"},
		{name: "GET bad digest", method: "GET", path: manifestPath("test", "sha256:abc"), status: 400},
		{name: "GET unsupported algorithm", method: "GET", path: manifestPath("test", digest.SHA384.FromBytes(imgManifest)),
			status: 400, code: "DIGEST_INVALID"},
		{name: "GET empty reference", method: "GET", path: "/v2/test/manifests/", status: 400, code: "TAG_INVALID"},
		{name: "GET 128-character tag", method: "GET", path: manifestPath("test", "a"+strings.Repeat("b", 127)), status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "GET 129-character tag", method: "GET", path: manifestPath("test", "a"+strings.Repeat("b", 128)), status: 400, code: "TAG_INVALID"},

		// Content negotiation.
		{name: "Accept exact", method: "GET", path: manifestPath("test", "latest"), header: h("Accept", mtOCIManifest), status: 200, wantBody: imgManifest},
		{name: "Accept list", method: "GET", path: manifestPath("test", "latest"),
			header: h("Accept", mtDockerManifest+", "+mtOCIIndex+";q=0.9, "+mtOCIManifest+";q=0.5"), status: 200},
		{name: "Accept excludes", method: "GET", path: manifestPath("test", "latest"), header: h("Accept", mtDockerManifest+", "+mtOCIIndex),
			status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "Accept excludes HEAD", method: "HEAD", path: manifestPath("test", "latest"), header: h("Accept", mtOCIIndex), status: 404},
		{name: "Accept excludes by digest", method: "GET", path: manifestPath("test", imgDigest), header: h("Accept", mtDockerList),
			status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "Accept wildcard", method: "GET", path: manifestPath("test", "latest"), header: h("Accept", "*/*"), status: 200, wantBody: imgManifest},
		{name: "Accept wildcard among others", method: "GET", path: manifestPath("test", "latest"),
			header: h("Accept", mtOCIIndex+", */*;q=0.1"), status: 200},
		{name: "no Accept", method: "GET", path: manifestPath("test", "latest"), status: 200, wantBody: imgManifest},

		// PUT of each media type.
		{name: "PUT OCI manifest by tag", method: "PUT", path: manifestPath("test", "v2"), header: ct(mtOCIManifest), body: img2Manifest,
			status: 201, wantHeader: created(img2Digest), check: manifestIs("test", "v2", mtOCIManifest, img2Manifest)},
		{name: "PUT OCI manifest by digest", method: "PUT", path: manifestPath("test", img2Digest), header: ct(mtOCIManifest), body: img2Manifest,
			status: 201, wantHeader: created(img2Digest), check: manifestIs("test", img2Digest.String(), mtOCIManifest, img2Manifest)},
		{name: "PUT OCI manifest without Content-Type", method: "PUT", path: manifestPath("test", "v2"), body: img2Manifest,
			status: 201, check: manifestIs("test", "v2", mtOCIManifest, img2Manifest)},
		{name: "PUT OCI manifest Content-Type with parameter", method: "PUT", path: manifestPath("test", "v2"),
			header: ct(mtOCIManifest + "; charset=utf-8"), body: img2Manifest, status: 201,
			check: manifestIs("test", "v2", mtOCIManifest, img2Manifest)},
		{name: "PUT OCI index", method: "PUT", path: manifestPath("test", "multi"), header: ct(mtOCIIndex), body: indexBody,
			status: 201, wantHeader: created(indexDigest), check: manifestIs("test", "multi", mtOCIIndex, indexBody)},
		{name: "PUT OCI index by digest", method: "PUT", path: manifestPath("test", indexDigest), header: ct(mtOCIIndex), body: indexBody,
			status: 201, check: manifestIs("test", indexDigest.String(), mtOCIIndex, indexBody)},
		{name: "PUT Docker manifest", method: "PUT", path: manifestPath("test", "docker"), header: ct(mtDockerManifest), body: dockerBody,
			status: 201, wantHeader: created(dockerDigest), check: manifestIs("test", "docker", mtDockerManifest, dockerBody)},
		{name: "PUT OCI manifest twice", method: "PUT", path: manifestPath("test", "latest"), header: ct(mtOCIManifest), body: imgManifest,
			status: 201, wantHeader: created(imgDigest), check: manifestIs("test", "latest", mtOCIManifest, imgManifest)},
		{name: "PUT sha512 reference", method: "PUT", path: manifestPath("test", sha512Img), header: ct(mtOCIManifest), body: imgManifest,
			status: 201, wantHeader: h("Docker-Content-Digest", sha512Img.String(), "Location", manifestPath("test", sha512Img)),
			check: manifestIs("test", sha512Img.String(), mtOCIManifest, imgManifest)},
		{name: "PUT non-distributable layers skipped", method: "PUT", path: manifestPath("test", "foreign"), header: ct(mtOCIManifest),
			body: foreign, status: 201},
		{name: "PUT at exactly the size limit", method: "PUT", path: manifestPath("test", "big"), header: ct(mtOCIManifest),
			body: big, status: 201, check: manifestIs("test", "big", mtOCIManifest, big)},
		{name: "PUT with subject", method: "PUT", path: manifestPath("test", "sub"), header: ct(mtOCIManifest), body: withSubject,
			status: 201, wantHeader: h("OCI-Subject", imgDigest.String())},
		{name: "PUT artifact with subject by digest", method: "PUT", path: manifestPath("test", sbomDigest), header: ct(mtOCIManifest),
			body: sbom, status: 201, wantHeader: h("OCI-Subject", imgDigest.String())},
		{name: "PUT without subject has no OCI-Subject", method: "PUT", path: manifestPath("test", "v2"), header: ct(mtOCIManifest),
			body: img2Manifest, status: 201, wantHeader: h("OCI-Subject", "-")},
		{name: "PUT subject that does not exist", method: "PUT", path: manifestPath("test", "dangling"), header: ct(mtOCIManifest),
			body:   artifact("x/y", v1.Descriptor{MediaType: mtOCIManifest, Digest: missingDigest, Size: 3}, "a"),
			status: 201, wantHeader: h("OCI-Subject", missingDigest.String())},

		// ?tag= parameters.
		{name: "PUT by digest with tags", method: "PUT", path: manifestPath("test", img2Digest) + "?tag=a&tag=b", header: ct(mtOCIManifest),
			body: img2Manifest, status: 201, check: both(wantHeaderValues("OCI-Tag", "a", "b"),
				manifestIs("test", "a", mtOCIManifest, img2Manifest), manifestIs("test", "b", mtOCIManifest, img2Manifest))},
		{name: "PUT by tag with tags", method: "PUT", path: manifestPath("test", "v2") + "?tag=v2.0", header: ct(mtOCIManifest),
			body: img2Manifest, status: 201, check: both(
				func(t *testing.T, _ *testServer, resp *http.Response, _ []byte) {
					if !strings.Contains(strings.Join(resp.Header.Values("OCI-Tag"), ","), "v2.0") {
						t.Errorf("OCI-Tag %q lacks v2.0", resp.Header.Values("OCI-Tag"))
					}
				},
				manifestIs("test", "v2", mtOCIManifest, img2Manifest), manifestIs("test", "v2.0", mtOCIManifest, img2Manifest))},
		{name: "PUT tag repeated in query", method: "PUT", path: manifestPath("test", img2Digest) + "?tag=a&tag=a", header: ct(mtOCIManifest),
			body: img2Manifest, status: 201, check: wantHeaderValues("OCI-Tag", "a")},
		{name: "PUT invalid query tag", method: "PUT", path: manifestPath("test", img2Digest) + "?tag=-x", header: ct(mtOCIManifest),
			body: img2Manifest, status: 400, code: "TAG_INVALID", check: wantStatus("HEAD", manifestPath("test", img2Digest), 404)},

		// Rejected PUTs.
		{name: "PUT too large", method: "PUT", path: manifestPath("test", "huge"), header: ct(mtOCIManifest), body: tooBig,
			status: 413, code: "MANIFEST_INVALID", check: wantStatus("HEAD", manifestPath("test", "huge"), 404)},
		{name: "PUT malformed JSON", method: "PUT", path: manifestPath("test", "bad"), header: ct(mtOCIManifest), body: []byte(`{"schemaVersion":2,`),
			status: 400, code: "MANIFEST_INVALID"},
		{name: "PUT empty body", method: "PUT", path: manifestPath("test", "bad"), header: ct(mtOCIManifest), body: []byte{},
			status: 400, code: "MANIFEST_INVALID"},
		{name: "PUT mediaType mismatch", method: "PUT", path: manifestPath("test", "bad"), header: ct(mtDockerManifest), body: img2Manifest,
			status: 400, code: "MANIFEST_INVALID"},
		{name: "PUT index as manifest", method: "PUT", path: manifestPath("test", "bad"), header: ct(mtOCIManifest), body: indexBody,
			status: 400, code: "MANIFEST_INVALID"},
		{name: "PUT schema 1", method: "PUT", path: manifestPath("test", "bad"), header: ct(mtSchema1Signed),
			body: []byte(`{"schemaVersion":1,"name":"test","tag":"bad","fsLayers":[],"history":[]}`), status: 400, code: "MANIFEST_INVALID"},
		{name: "PUT schemaVersion 1 as OCI", method: "PUT", path: manifestPath("test", "bad"), header: ct(mtOCIManifest),
			body: []byte(`{"schemaVersion":1,"config":` + string(mustJSON(desc(mtOCIConfig, configData))) + `}`), status: 400, code: "MANIFEST_INVALID"},
		{name: "PUT without config", method: "PUT", path: manifestPath("test", "bad"), header: ct(mtOCIManifest),
			body: []byte(`{"schemaVersion":2,"mediaType":"` + mtOCIManifest + `","layers":[]}`), status: 400, code: "MANIFEST_INVALID"},
		{name: "PUT bad layer digest", method: "PUT", path: manifestPath("test", "bad"), header: ct(mtOCIManifest),
			body:   ociManifest(desc(mtOCIConfig, configData), []v1.Descriptor{{MediaType: mtOCILayer, Digest: "sha256:nothex", Size: 1}}, nil, ""),
			status: 400, code: "MANIFEST_INVALID"},
		{name: "PUT missing layer", method: "PUT", path: manifestPath("test", "bad"), header: ct(mtOCIManifest),
			body:   ociManifest(desc(mtOCIConfig, configData), []v1.Descriptor{desc(mtOCILayer, newData)}, nil, ""),
			status: 400, code: "MANIFEST_BLOB_UNKNOWN", check: wantStatus("HEAD", manifestPath("test", "bad"), 404)},
		{name: "PUT missing config", method: "PUT", path: manifestPath("test", "bad"), header: ct(mtOCIManifest),
			body: ociManifest(desc(mtOCIConfig, newData), nil, nil, ""), status: 400, code: "MANIFEST_BLOB_UNKNOWN"},
		{name: "PUT layer of another repo", method: "PUT", path: manifestPath("test", "bad"), header: ct(mtOCIManifest),
			body: ociManifest(desc(mtOCIConfig, configData), []v1.Descriptor{desc(mtOCILayer, otherData)}, nil, ""), status: 400, code: "MANIFEST_BLOB_UNKNOWN"},
		{name: "PUT index with missing child", method: "PUT", path: manifestPath("test", "bad"), header: ct(mtOCIIndex),
			body: ociIndex(mtOCIIndex, desc(mtOCIManifest, img2Manifest)), status: 400, code: "MANIFEST_BLOB_UNKNOWN"},
		{name: "PUT Docker list with missing child", method: "PUT", path: manifestPath("test", "bad"), header: ct(mtDockerList),
			body: dockerList, status: 400, code: "MANIFEST_BLOB_UNKNOWN"},
		{name: "PUT digest mismatch", method: "PUT", path: manifestPath("test", imgDigest), header: ct(mtOCIManifest), body: img2Manifest,
			status: 400, code: "DIGEST_INVALID"},
		{name: "PUT invalid tag", method: "PUT", path: manifestPath("test", "-bad"), header: ct(mtOCIManifest), body: img2Manifest,
			status: 400, code: "TAG_INVALID"},
		// An unknown media type is refused, not stored and served as such.
		{name: "PUT octet-stream", method: "PUT", path: manifestPath("test", "bad"), header: ct("application/octet-stream"),
			body: []byte(`{"schemaVersion":2,"layers":[]}`), status: 400, code: "MANIFEST_INVALID",
			check: both(wantMessage("application/octet-stream"), wantStatus("HEAD", manifestPath("test", "bad"), 404))},
		{name: "PUT config media type", method: "PUT", path: manifestPath("test", "bad"), header: ct(mtOCIConfig),
			body: configData, status: 400, code: "MANIFEST_INVALID",
			check: both(wantMessage(mtOCIConfig), wantStatus("HEAD", manifestPath("test", "bad"), 404))},
		// A descriptor of an algorithm storage lacks is the manifest's fault,
		// answered without storage details.
		{name: "PUT sha384 layer", method: "PUT", path: manifestPath("test", "bad"), header: ct(mtOCIManifest),
			body: ociManifest(desc(mtOCIConfig, configData), []v1.Descriptor{{MediaType: mtOCILayer,
				Digest: digest.SHA384.FromBytes(layerData), Size: int64(len(layerData))}}, nil, ""),
			status: 400, code: "MANIFEST_INVALID", check: wantMessage("algorithm sha384 is not supported")},
		{name: "PUT bad subject digest", method: "PUT", path: manifestPath("test", "bad"), header: ct(mtOCIManifest),
			body:   ociManifest(desc(mtOCIConfig, configData), nil, &v1.Descriptor{MediaType: mtOCIManifest, Digest: "sha256:zz", Size: 1}, ""),
			status: 400, code: "MANIFEST_INVALID"},

		// DELETE.
		{name: "DELETE tag", method: "DELETE", path: manifestPath("test", "latest"), status: 202,
			check: both(wantStatus("GET", manifestPath("test", "latest"), 404), wantStatus("GET", manifestPath("test", imgDigest), 200))},
		{name: "DELETE digest", method: "DELETE", path: manifestPath("test", imgDigest), status: 202,
			check: both(wantStatus("GET", manifestPath("test", "latest"), 404), wantStatus("GET", manifestPath("test", imgDigest), 404))},
		{name: "DELETE unknown tag", method: "DELETE", path: manifestPath("test", "nope"), status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "DELETE unknown digest", method: "DELETE", path: manifestPath("test", missingDigest), status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "DELETE unknown repo", method: "DELETE", path: manifestPath("nope", "latest"), status: 404},
		{name: "DELETE invalid tag", method: "DELETE", path: manifestPath("test", "-x"), status: 400, code: "TAG_INVALID"},

		{name: "POST", method: "POST", path: manifestPath("test", "latest"), status: 405, code: "UNSUPPORTED"},
		{name: "PATCH", method: "PATCH", path: manifestPath("test", "latest"), status: 405, code: "UNSUPPORTED"},
	})
}

// TestFlowsManifests covers manifest behaviour that spans requests.
func TestFlowsManifests(t *testing.T) {
	t.Parallel()
	ct := func(mt string) map[string]string { return h("Content-Type", mt) }
	dockerList := ociIndex(mtDockerList, v1.Descriptor{MediaType: mtDockerManifest, Digest: dockerDigest, Size: int64(len(dockerBody)),
		Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}})
	runFlows(t, []flow{
		{name: "Docker manifest list", calls: []call{
			{method: "PUT", path: manifestPath("test", "docker"), header: ct(mtDockerManifest), body: dockerBody, status: 201},
			{method: "PUT", path: manifestPath("test", "list"), header: ct(mtDockerList), body: dockerList, status: 201,
				wantHeader: h("Docker-Content-Digest", digest.FromBytes(dockerList).String())},
			{method: "GET", path: manifestPath("test", "list"), status: 200, wantBody: dockerList, wantHeader: h("Content-Type", mtDockerList)},
			{method: "GET", path: manifestPath("test", "list"), header: h("Accept", mtOCIIndex), status: 404, code: "MANIFEST_UNKNOWN"},
			{method: "GET", path: manifestPath("test", "list"), header: h("Accept", mtDockerList+", "+mtDockerManifest), status: 200},
			{method: "GET", path: manifestPath("test", "docker"), header: h("Accept", mtOCIManifest), status: 404, code: "MANIFEST_UNKNOWN"},
		}},
		{name: "index of index", calls: []call{
			{method: "PUT", path: manifestPath("test", "inner"), header: ct(mtOCIIndex), body: indexBody, status: 201},
			{method: "PUT", path: manifestPath("test", "outer"), header: ct(mtOCIIndex),
				body: ociIndex(mtOCIIndex, desc(mtOCIIndex, indexBody)), status: 201},
			{method: "GET", path: manifestPath("test", "outer"), status: 200, wantHeader: h("Content-Type", mtOCIIndex)},
		}},
		{name: "tag moves", calls: []call{
			{method: "PUT", path: manifestPath("test", "latest"), header: ct(mtOCIManifest), body: img2Manifest, status: 201},
			{method: "GET", path: manifestPath("test", "latest"), status: 200, wantBody: img2Manifest},
			{method: "GET", path: manifestPath("test", imgDigest), status: 200, wantBody: imgManifest},
			{method: "GET", path: "/v2/test/tags/list", status: 200, check: wantJSON(`{"name":"test","tags":["latest"]}`)},
		}},
		{name: "delete tag keeps manifest", calls: []call{
			{method: "PUT", path: manifestPath("test", imgDigest) + "?tag=a&tag=b", header: ct(mtOCIManifest), body: imgManifest, status: 201},
			{method: "DELETE", path: manifestPath("test", "a"), status: 202},
			{method: "GET", path: manifestPath("test", "a"), status: 404, code: "MANIFEST_UNKNOWN"},
			{method: "GET", path: manifestPath("test", "b"), status: 200, wantBody: imgManifest},
			{method: "GET", path: manifestPath("test", imgDigest), status: 200, wantBody: imgManifest},
			{method: "GET", path: "/v2/test/tags/list", status: 200, check: wantJSON(`{"name":"test","tags":["b","latest"]}`)},
			{method: "DELETE", path: manifestPath("test", "a"), status: 404, code: "MANIFEST_UNKNOWN"},
			{method: "DELETE", path: manifestPath("test", "b"), status: 202},
			{method: "DELETE", path: manifestPath("test", "latest"), status: 202},
			{method: "GET", path: manifestPath("test", imgDigest), status: 200, wantBody: imgManifest},
			{method: "GET", path: "/v2/test/tags/list", status: 200, check: wantJSON(`{"name":"test","tags":[]}`)},
		}},
		{name: "delete digest removes every tag", calls: []call{
			{method: "PUT", path: manifestPath("test", imgDigest) + "?tag=a&tag=b", header: ct(mtOCIManifest), body: imgManifest, status: 201},
			{method: "PUT", path: manifestPath("test", "keep"), header: ct(mtOCIManifest), body: img2Manifest, status: 201},
			{method: "DELETE", path: manifestPath("test", imgDigest), status: 202},
			{method: "GET", path: manifestPath("test", "a"), status: 404, code: "MANIFEST_UNKNOWN"},
			{method: "GET", path: manifestPath("test", "b"), status: 404, code: "MANIFEST_UNKNOWN"},
			{method: "HEAD", path: manifestPath("test", "latest"), status: 404},
			{method: "GET", path: manifestPath("test", imgDigest), status: 404, code: "MANIFEST_UNKNOWN"},
			{method: "GET", path: manifestPath("test", "keep"), status: 200, wantBody: img2Manifest},
			{method: "GET", path: "/v2/test/tags/list", status: 200, check: wantJSON(`{"name":"test","tags":["keep"]}`)},
			{method: "DELETE", path: manifestPath("test", imgDigest), status: 404, code: "MANIFEST_UNKNOWN"},
			// The layers stay: deleting a manifest does not delete blobs.
			{method: "HEAD", path: blobPath("test", layerDigest), status: 200},
			// Pushing it again brings it back.
			{method: "PUT", path: manifestPath("test", "latest"), header: ct(mtOCIManifest), body: imgManifest, status: 201},
			{method: "GET", path: manifestPath("test", imgDigest), status: 200, wantBody: imgManifest},
		}},
		{name: "delete subject keeps referrers", calls: []call{
			{method: "PUT", path: manifestPath("test", sbomDigest), header: ct(mtOCIManifest), body: sbom, status: 201},
			{method: "DELETE", path: manifestPath("test", imgDigest), status: 202},
			{method: "GET", path: "/v2/test/referrers/" + imgDigest.String(), status: 200,
				check: referrersAre(sbomDigest)},
		}},
		// Manifests live in the blob store; deleting one through the blob
		// route must not leave a manifest that HEAD finds and GET does not.
		{name: "blob DELETE of a manifest digest", calls: []call{
			{method: "GET", path: blobPath("test", imgDigest), status: 200, wantBody: imgManifest},
			{method: "DELETE", path: blobPath("test", imgDigest), check: headAgreesWithGet(manifestPath("test", "latest"))},
			{method: "GET", path: "/v2/test/tags/list", status: 200, check: tagsResolve("test")},
		}},
		{name: "manifest deleted from storage", setup: func(t *testing.T, ts *testServer) {
			if err := ts.reg.Store().Delete(t.Context(), "test", imgDigest); err != nil {
				t.Fatal(err)
			}
		}, calls: []call{
			{method: "GET", path: manifestPath("test", "latest"), status: 404, code: "MANIFEST_UNKNOWN"},
		}},
	})
}
