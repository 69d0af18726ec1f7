package e2e

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// httpClient never follows redirects, so a redirect is seen as such.
var httpClient = &http.Client{
	Timeout:       2 * time.Minute,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// resp is a fully read HTTP response.
type resp struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r *resp) String() string {
	b := r.Body
	if len(b) > 512 {
		b = append(b[:512:512], "..."...)
	}
	return fmt.Sprintf("%d %v %s", r.Status, r.Header, b)
}

// do sends one request to the registry; path may be absolute or a full URL.
func (r *reg) do(t *testing.T, method, path string, hdr map[string]string, body []byte) *resp {
	t.Helper()
	res, err := r.try(method, path, hdr, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return res
}

// try is do without failing the test (safe in goroutines).
func (r *reg) try(method, path string, hdr map[string]string, body []byte) (*resp, error) {
	u := path
	if !strings.HasPrefix(u, "http") {
		u = r.URL + path
	}
	return send(httpClient, method, u, "", "", hdr, body)
}

// send sends one request with client, with Basic credentials unless user
// is "", and reads the whole answer. It never fails the test (safe in
// goroutines).
func send(client *http.Client, method, url, user, pass string, hdr map[string]string, body []byte) (*resp, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	hr, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer hr.Body.Close()
	b, err := io.ReadAll(hr.Body)
	if err != nil {
		return nil, err
	}
	return &resp{Status: hr.StatusCode, Header: hr.Header, Body: b}, nil
}

// ociErrorCode is the first OCI error code of a JSON error body ("" when
// it is not one).
func ociErrorCode(body []byte) string {
	var e struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &e) != nil || len(e.Errors) == 0 {
		return ""
	}
	return e.Errors[0].Code
}

// location resolves a Location header against the registry URL.
func (r *reg) location(t *testing.T, res *resp) string {
	t.Helper()
	loc := res.Header.Get("Location")
	if loc == "" {
		t.Fatalf("no Location header in %s", res)
	}
	if strings.HasPrefix(loc, "/") {
		return r.URL + loc
	}
	return loc
}

func withQuery(u, kv string) string {
	if strings.Contains(u, "?") {
		return u + "&" + kv
	}
	return u + "?" + kv
}

func sha256Digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func randBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// pushBlob uploads b to repo with POST + PUT and checks the 201.
func (r *reg) pushBlob(t *testing.T, repo string, b []byte) string {
	t.Helper()
	dgst := sha256Digest(b)
	res := r.do(t, "POST", "/v2/"+repo+"/blobs/uploads/", nil, nil)
	if res.Status != http.StatusAccepted {
		t.Fatalf("POST upload to %s: %s", repo, res)
	}
	res = r.do(t, "PUT", withQuery(r.location(t, res), "digest="+dgst),
		map[string]string{"Content-Type": "application/octet-stream"}, b)
	if res.Status != http.StatusCreated {
		t.Fatalf("PUT blob %s to %s: %s", dgst, repo, res)
	}
	return dgst
}

const (
	mtManifest = "application/vnd.oci.image.manifest.v1+json"
	mtConfig   = "application/vnd.oci.image.config.v1+json"
	mtLayer    = "application/vnd.oci.image.layer.v1.tar"
)

// imageManifest returns an OCI image manifest for a config and layers.
func imageManifest(config []byte, layers [][]byte, annotations map[string]string) []byte {
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int    `json:"size"`
	}
	m := struct {
		SchemaVersion int               `json:"schemaVersion"`
		MediaType     string            `json:"mediaType"`
		Config        desc              `json:"config"`
		Layers        []desc            `json:"layers"`
		Annotations   map[string]string `json:"annotations,omitempty"`
	}{2, mtManifest, desc{mtConfig, sha256Digest(config), len(config)}, []desc{}, annotations}
	for _, l := range layers {
		m.Layers = append(m.Layers, desc{mtLayer, sha256Digest(l), len(l)})
	}
	b, _ := json.Marshal(m)
	return b
}

// pushImage pushes a one-layer image by raw HTTP and returns the manifest
// digest and bytes.
func (r *reg) pushImage(t *testing.T, repo, tag string) (string, []byte) {
	t.Helper()
	config := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"created":"%s"}`,
		time.Now().UTC().Format(time.RFC3339Nano)))
	layer := randBytes(t, 2048)
	r.pushBlob(t, repo, config)
	r.pushBlob(t, repo, layer)
	man := imageManifest(config, [][]byte{layer}, nil)
	res := r.do(t, "PUT", "/v2/"+repo+"/manifests/"+tag, map[string]string{"Content-Type": mtManifest}, man)
	if res.Status != http.StatusCreated {
		t.Fatalf("PUT manifest %s:%s: %s", repo, tag, res)
	}
	dgst := sha256Digest(man)
	if got := res.Header.Get("Docker-Content-Digest"); got != dgst {
		t.Errorf("PUT manifest: Docker-Content-Digest %q, want %q", got, dgst)
	}
	return dgst, man
}

// writeLayerTar writes a tar archive with one file of n random bytes.
func writeLayerTar(t *testing.T, path string, n int) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	data := randBytes(t, n)
	hdr := &tar.Header{Name: "data/" + hex.EncodeToString(data[:8]) + ".bin", Mode: 0o644, Size: int64(n),
		ModTime: time.Unix(1700000000, 0), Typeflag: tar.TypeReg}
	if err := tw.WriteHeader(hdr); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// layoutIndex reads an OCI layout's index.json.
type ociIndex struct {
	SchemaVersion int `json:"schemaVersion"`
	Manifests     []struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int64             `json:"size"`
		Annotations map[string]string `json:"annotations"`
	} `json:"manifests"`
}

func readIndex(path string) (ociIndex, error) {
	var idx ociIndex
	b, err := os.ReadFile(path)
	if err != nil {
		return idx, err
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return idx, fmt.Errorf("%s: %w", path, err)
	}
	if idx.SchemaVersion != 2 {
		return idx, fmt.Errorf("%s: schemaVersion %d", path, idx.SchemaVersion)
	}
	return idx, nil
}

// layoutDigest returns the digest of the manifest tagged tag in an OCI
// layout (or of its only manifest when tag is empty).
func layoutDigest(t *testing.T, dir, tag string) string {
	t.Helper()
	idx, err := readIndex(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, m := range idx.Manifests {
		if tag == "" || m.Annotations["org.opencontainers.image.ref.name"] == tag {
			found = append(found, m.Digest)
		}
	}
	if len(found) != 1 {
		t.Fatalf("layout %s: %d manifests for tag %q: %+v", dir, len(found), tag, idx.Manifests)
	}
	return found[0]
}

// checkStorage verifies every repository under root: index.json parses,
// and every file under blobs/ is a complete blob whose content hashes to
// its name. It returns the problems found and the number of blobs checked.
func checkStorage(root string) (problems []string, blobs int) {
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			problems = append(problems, err.Error())
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() && strings.HasPrefix(rel, "_") && !strings.Contains(rel, string(filepath.Separator)) {
			return filepath.SkipDir // _meta, _uploads, _tmp: not repositories
		}
		if d.IsDir() {
			return nil
		}
		switch {
		case d.Name() == "index.json" && !strings.Contains(filepath.ToSlash(rel), "/blobs/"):
			if _, err := readIndex(p); err != nil {
				problems = append(problems, "bad index.json: "+err.Error())
			}
		case strings.Contains(filepath.ToSlash(rel), "/blobs/") || strings.HasPrefix(filepath.ToSlash(rel), "blobs/"):
			blobs++
			if msg := checkBlobFile(p); msg != "" {
				problems = append(problems, rel+": "+msg)
			}
		}
		return nil
	})
	if err != nil {
		problems = append(problems, err.Error())
	}
	return problems, blobs
}

func checkBlobFile(p string) string {
	algo := filepath.Base(filepath.Dir(p))
	var h hash.Hash
	var hexLen int
	switch algo {
	case "sha256":
		h, hexLen = sha256.New(), 64
	case "sha512":
		h, hexLen = sha512.New(), 128
	default:
		return "file in unknown algorithm directory " + algo
	}
	name := filepath.Base(p)
	if len(name) != hexLen || strings.Trim(name, "0123456789abcdef") != "" {
		return "not a blob name (partial or temporary file?)"
	}
	f, err := os.Open(p)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	if _, err := io.Copy(h, f); err != nil {
		return err.Error()
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != name {
		return "content hashes to " + got
	}
	return ""
}

// requireStorageOK fails the test with every storage problem.
func requireStorageOK(t *testing.T, root string) int {
	t.Helper()
	problems, n := checkStorage(root)
	if len(problems) > 0 {
		t.Errorf("storage %s has %d problems:\n%s", root, len(problems), strings.Join(problems, "\n"))
	}
	return n
}

// snapshot lists every file (with its sha256) and directory under root,
// leaving out _meta and _uploads.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == "_meta" || rel == "_uploads" {
				return filepath.SkipDir
			}
			out[rel+"/"] = "dir"
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out[rel] = sha256Digest(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// diffSnapshots describes how two snapshots differ ("" when equal).
func diffSnapshots(a, b map[string]string) string {
	var d []string
	for k, v := range a {
		if w, ok := b[k]; !ok {
			d = append(d, "removed "+k)
		} else if v != w {
			d = append(d, "changed "+k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			d = append(d, "added "+k)
		}
	}
	sort.Strings(d)
	return strings.Join(d, "\n")
}

// listTagsOrNone lists repo's tags through e; a repository without tags
// may answer 404 NAME_UNKNOWN or an empty list.
func cxTags(t *testing.T, e *reg, repo string) []string {
	t.Helper()
	res := e.do(t, "GET", "/v2/"+repo+"/tags/list", nil, nil)
	if res.Status == http.StatusNotFound {
		return nil
	}
	if res.Status != 200 {
		t.Fatalf("tags/list of %s via %s: %s", repo, e.Host, res)
	}
	var body struct {
		Tags []string `json:"tags"`
	}
	must(t, json.Unmarshal(res.Body, &body))
	sort.Strings(body.Tags)
	if len(body.Tags) == 0 {
		return nil
	}
	return body.Tags
}
