package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/api"
	"github.com/berthreg/berth/pkg/meta/bolt"
	"github.com/berthreg/berth/pkg/registry"
	"github.com/berthreg/berth/pkg/storage/fs"
)

// Media types used by the tests.
const (
	mtOCIManifest    = v1.MediaTypeImageManifest
	mtOCIIndex       = v1.MediaTypeImageIndex
	mtOCIConfig      = v1.MediaTypeImageConfig
	mtOCILayer       = v1.MediaTypeImageLayerGzip
	mtDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	mtDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
	mtDockerConfig   = "application/vnd.docker.container.image.v1+json"
	mtDockerLayer    = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	mtSchema1Signed  = "application/vnd.docker.distribution.manifest.v1+prettyjws"
	mtEmptyConfig    = "application/vnd.oci.empty.v1+json"
)

// Fixture content: every test server is seeded with it (see newServer).
var (
	layerData   = []byte("layer contents 0123456789abcdef")
	layerDigest = digest.FromBytes(layerData)
	configData  = []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	configDgst  = digest.FromBytes(configData)
	emptyData   = []byte("{}")
	emptyDigest = digest.FromBytes(emptyData)
	// otherData lives only in repository "other/nested".
	otherData   = []byte("blob that only other/nested holds")
	otherDigest = digest.FromBytes(otherData)
	// missingDigest is held by no repository.
	missingDigest = digest.FromString("nobody has this")

	// imgManifest is an OCI image manifest of config + layer, tagged
	// "latest" in repository "test".
	imgManifest = ociManifest(desc(mtOCIConfig, configData), []v1.Descriptor{desc(mtOCILayer, layerData)}, nil, "")
	imgDigest   = digest.FromBytes(imgManifest)
)

// desc describes content of media type mt.
func desc(mt string, content []byte) v1.Descriptor {
	return v1.Descriptor{MediaType: mt, Digest: digest.FromBytes(content), Size: int64(len(content))}
}

// mustJSON marshals v or panics (fixtures are built at init).
func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// ociManifest builds an OCI image manifest.
func ociManifest(config v1.Descriptor, layers []v1.Descriptor, subject *v1.Descriptor, artifactType string) []byte {
	if layers == nil {
		layers = []v1.Descriptor{}
	}
	m := v1.Manifest{MediaType: mtOCIManifest, Config: config, Layers: layers, Subject: subject, ArtifactType: artifactType}
	m.SchemaVersion = 2
	return mustJSON(m)
}

// ociIndex builds an OCI index (or, with mt = mtDockerList, a Docker
// manifest list) of the given manifests.
func ociIndex(mt string, manifests ...v1.Descriptor) []byte {
	x := v1.Index{MediaType: mt, Manifests: manifests}
	x.SchemaVersion = 2
	return mustJSON(x)
}

// artifact builds an OCI artifact manifest with the empty config, an
// artifactType and a subject.
func artifact(artifactType string, subject v1.Descriptor, annotation string) []byte {
	m := v1.Manifest{
		MediaType:    mtOCIManifest,
		ArtifactType: artifactType,
		Config:       v1.Descriptor{MediaType: mtEmptyConfig, Digest: emptyDigest, Size: int64(len(emptyData))},
		Layers:       []v1.Descriptor{{MediaType: mtEmptyConfig, Digest: emptyDigest, Size: int64(len(emptyData))}},
		Subject:      &subject,
		Annotations:  map[string]string{"test": annotation},
	}
	m.SchemaVersion = 2
	return mustJSON(m)
}

// dockerManifest builds a Docker schema 2 image manifest of config + layer.
func dockerManifest() []byte {
	return mustJSON(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mtDockerManifest,
		"config":        desc(mtDockerConfig, configData),
		"layers":        []v1.Descriptor{desc(mtDockerLayer, layerData)},
	})
}

// testServer is an in-process registry over a temp dir.
type testServer struct {
	*httptest.Server
	api    *api.Server
	reg    *registry.Registry
	client *http.Client
	st     *flowState // of the last call, for checks
}

// newServer starts a server over fresh storage and metadata, seeded with
// repository "test" (layer, config and the empty blob; imgManifest tagged
// latest) and "other/nested" (otherData only, no manifest).
func newServer(tb testing.TB) *testServer {
	tb.Helper()
	return newServerWith(tb, api.Options{Log: zerolog.Nop(), Metrics: prometheus.NewRegistry()})
}

// newServerWith is newServer with the given options.
func newServerWith(tb testing.TB, opts api.Options) *testServer {
	tb.Helper()
	dir := tb.TempDir()
	store, err := fs.New(filepath.Join(dir, "data"), zerolog.Nop())
	if err != nil {
		tb.Fatalf("fs.New: %v", err)
	}
	md, err := bolt.Open(filepath.Join(dir, "meta.db"))
	if err != nil {
		tb.Fatalf("bolt.Open: %v", err)
	}
	reg := registry.New(store, md, zerolog.Nop())
	srv := api.New(reg, opts)
	ts := &testServer{
		Server: httptest.NewServer(srv),
		api:    srv,
		reg:    reg,
	}
	ts.client = ts.Client()
	ts.client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	tb.Cleanup(func() {
		ts.Close()
		_ = md.Close()
	})
	for _, b := range [][]byte{layerData, configData, emptyData} {
		ts.seedBlob(tb, "test", b)
	}
	ts.seedBlob(tb, "other/nested", otherData)
	ts.seedManifest(tb, "test", "latest", mtOCIManifest, imgManifest)
	return ts
}

// seedBlob stores content in repo through the registry, not the API.
func (ts *testServer) seedBlob(tb testing.TB, repo string, content []byte) digest.Digest {
	tb.Helper()
	ctx := tb.Context()
	up, err := ts.reg.Store().NewUpload(ctx, repo)
	if err != nil {
		tb.Fatalf("NewUpload: %v", err)
	}
	defer up.Close()
	if _, err := up.Append(ctx, bytes.NewReader(content)); err != nil {
		tb.Fatalf("Append: %v", err)
	}
	d := digest.FromBytes(content)
	if _, err := up.Commit(ctx, d); err != nil {
		tb.Fatalf("Commit: %v", err)
	}
	ts.reg.NoteBlob(ctx, repo, d)
	return d
}

// seedManifest stores a manifest through the registry, not the API.
func (ts *testServer) seedManifest(tb testing.TB, repo, ref, mt string, body []byte, tags ...string) digest.Digest {
	tb.Helper()
	res, err := ts.reg.PutManifest(tb.Context(), repo, ref, mt, body, tags)
	if err != nil {
		tb.Fatalf("PutManifest %s:%s: %v", repo, ref, err)
	}
	return res.Digest
}

// call is one request and what its response must be.
type call struct {
	name   string
	method string
	// path is relative to the server. "{location}" is replaced by the
	// Location of the previous call's response and "{uuid}" by the last
	// Docker-Upload-UUID seen; "{upload}" starts a session in "test" and is
	// replaced by its id.
	path   string
	header map[string]string
	body   []byte
	// upload is what "{upload}" sessions already hold.
	upload []byte

	status int
	// wantHeader: "*" present, "-" absent, "~x" contains x, else exact.
	wantHeader map[string]string
	// code is the OCI error code of an error response ("" not checked).
	code string
	// wantBody, when not nil, is the exact response body.
	wantBody []byte
	// check runs extra assertions.
	check func(t *testing.T, ts *testServer, resp *http.Response, body []byte)
}

// flowState carries values between the calls of a flow.
type flowState struct {
	location string
	uuid     string
}

// do runs c against ts and checks it; it returns the response and body.
func (ts *testServer) do(t *testing.T, st *flowState, c call) (*http.Response, []byte) {
	t.Helper()
	if st == nil {
		st = &flowState{}
	}
	path := c.path
	if strings.Contains(path, "{upload}") {
		id := ts.startUpload(t, "test", c.upload)
		path = strings.ReplaceAll(path, "{upload}", id)
		st.uuid = id
	}
	ts.st = st
	loc := st.location
	path = strings.ReplaceAll(path, "{location}", loc)
	path = strings.ReplaceAll(path, "{uuid}", st.uuid)
	url := path
	if !strings.HasPrefix(url, "http") {
		url = ts.URL + path
	}
	var body io.Reader
	if c.body != nil {
		body = bytes.NewReader(c.body)
	}
	req, err := http.NewRequestWithContext(t.Context(), c.method, url, body)
	if err != nil {
		t.Fatalf("%s %s: %v", c.method, path, err)
	}
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	resp, err := ts.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", c.method, path, err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", c.method, path, err)
	}
	if l := resp.Header.Get("Location"); l != "" {
		st.location = l
	}
	if u := resp.Header.Get("Docker-Upload-UUID"); u != "" {
		st.uuid = u
	}
	what := c.method + " " + path
	if c.status != 0 && resp.StatusCode != c.status {
		t.Errorf("%s: status %d, want %d; body %.300s", what, resp.StatusCode, c.status, got)
	}
	for k, want := range c.wantHeader {
		checkHeader(t, what, resp.Header, k, want)
	}
	if c.wantBody != nil && !bytes.Equal(got, c.wantBody) {
		t.Errorf("%s: body %.200q, want %.200q", what, got, c.wantBody)
	}
	if resp.StatusCode >= 400 {
		checkErrorResponse(t, what, c.method, resp, got, c.code)
	} else if c.code != "" {
		t.Errorf("%s: status %d, want an error %s", what, resp.StatusCode, c.code)
	}
	if c.method == http.MethodHead && len(got) != 0 {
		t.Errorf("%s: HEAD response has a %d-byte body", what, len(got))
	}
	if c.check != nil {
		c.check(t, ts, resp, got)
	}
	return resp, got
}

func checkHeader(t *testing.T, what string, h http.Header, k, want string) {
	t.Helper()
	got, ok := h[http.CanonicalHeaderKey(k)]
	v := strings.Join(got, ", ")
	switch {
	case want == "*":
		if !ok || v == "" {
			t.Errorf("%s: header %s missing", what, k)
		}
	case want == "-":
		if ok {
			t.Errorf("%s: header %s = %q, want absent", what, k, v)
		}
	case strings.HasPrefix(want, "~"):
		if !strings.Contains(v, want[1:]) {
			t.Errorf("%s: header %s = %q, want it to contain %q", what, k, v, want[1:])
		}
	default:
		if v != want {
			t.Errorf("%s: header %s = %q, want %q", what, k, v, want)
		}
	}
}

// errorBody is the spec's error response.
type errorBody struct {
	Errors []struct {
		Code    string          `json:"code"`
		Message string          `json:"message"`
		Detail  json.RawMessage `json:"detail"`
	} `json:"errors"`
}

// checkErrorResponse checks that every error is JSON {"errors":[...]}
// (without a body for HEAD) and carries code when code is set.
func checkErrorResponse(t *testing.T, what, method string, resp *http.Response, body []byte, code string) {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: error response Content-Type %q, want application/json", what, ct)
	}
	if method == http.MethodHead {
		return
	}
	var eb errorBody
	if err := json.Unmarshal(body, &eb); err != nil {
		t.Errorf("%s: error body %.200q is not JSON: %v", what, body, err)
		return
	}
	if len(eb.Errors) == 0 {
		t.Errorf("%s: error body %.200q has no errors", what, body)
		return
	}
	for _, e := range eb.Errors {
		if e.Code == "" || e.Message == "" {
			t.Errorf("%s: error %+v lacks code or message", what, e)
		}
	}
	if code != "" && eb.Errors[0].Code != code {
		t.Errorf("%s: error code %s (%s), want %s", what, eb.Errors[0].Code, eb.Errors[0].Message, code)
	}
}

// startUpload opens a session in repo through the API and sends content
// (if any) in one PATCH; it returns the session id.
func (ts *testServer) startUpload(t *testing.T, repo string, content []byte) string {
	t.Helper()
	st := &flowState{}
	resp, _ := ts.do(t, st, call{method: "POST", path: "/v2/" + repo + "/blobs/uploads/", status: http.StatusAccepted})
	id := resp.Header.Get("Docker-Upload-UUID")
	if id == "" {
		t.Fatalf("POST upload: no Docker-Upload-UUID")
	}
	if len(content) > 0 {
		ts.do(t, st, call{method: "PATCH", path: "{location}", body: content, status: http.StatusAccepted,
			wantHeader: map[string]string{"Range": fmt.Sprintf("0-%d", len(content)-1)}})
	}
	return id
}

// get fetches path and returns the status and body.
func (ts *testServer) get(t *testing.T, method, path string, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, ts.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := ts.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// runCalls runs each call as its own subtest against a fresh server.
func runCalls(t *testing.T, calls []call) {
	t.Helper()
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			newServer(t).do(t, nil, c)
		})
	}
}

// flow is a sequence of calls against one server.
type flow struct {
	name  string
	setup func(t *testing.T, ts *testServer)
	calls []call
}

func runFlows(t *testing.T, flows []flow) {
	t.Helper()
	for _, f := range flows {
		t.Run(f.name, func(t *testing.T) {
			t.Parallel()
			ts := newServer(t)
			if f.setup != nil {
				f.setup(t, ts)
			}
			st := &flowState{}
			for i, c := range f.calls {
				if c.name == "" {
					c.name = fmt.Sprintf("step %d", i)
				}
				t.Run(c.name, func(t *testing.T) { ts.do(t, st, c) })
			}
		})
	}
}

// blobPath is the path of dgst in repo.
func blobPath(repo string, dgst digest.Digest) string {
	return "/v2/" + repo + "/blobs/" + dgst.String()
}

// manifestPath is the path of ref in repo.
func manifestPath(repo string, ref any) string {
	return fmt.Sprintf("/v2/%s/manifests/%v", repo, ref)
}

// h builds a header map from pairs.
func h(kv ...string) map[string]string {
	m := make(map[string]string, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}
