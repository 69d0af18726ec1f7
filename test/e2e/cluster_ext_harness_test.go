package e2e

// Helpers of the cluster GC, retention and sync tests (cluster_gc_test.go,
// cluster_sync_test.go). Names start with "cx" so that they do not collide
// with the rest of the harness.

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cli runs the registry binary (registry gc, registry cluster owner) with
// the storage's environment and returns stdout and stderr.
func (c *cluster) cxCLI(t *testing.T, args ...string) (stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, registryBin, args...)
	cmd.Env = append(os.Environ(), c.Store.env()...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("registry %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, o.String(), e.String())
	}
	return o.String(), e.String()
}

// owner asks `registry cluster owner REPO --config FILE` which member owns
// repo.
func (c *cluster) cxOwner(t *testing.T, repo string) string {
	t.Helper()
	out, _ := c.cxCLI(t, "cluster", "owner", repo, "--config", c.Members[0].cfgPath)
	for _, l := range lines(out) {
		if h, ok := strings.CutPrefix(l, "owner: "); ok {
			c.member(h) // must be a member
			return h
		}
	}
	t.Fatalf("registry cluster owner %s: no owner line in %q", repo, out)
	return ""
}

// owners maps each repository to its owner.
func (c *cluster) cxOwners(t *testing.T, repos []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, r := range repos {
		out[r] = c.cxOwner(t, r)
	}
	return out
}

// cxMetric sums the samples of metric on r's /metrics whose label set
// contains every `k="v"` in labels. Safe in goroutines (returns an error).
func cxMetricErr(r *reg, metric string, labels ...string) (float64, error) {
	res, err := r.try("GET", "/metrics", nil, nil)
	if err != nil {
		return 0, err
	}
	if res.Status != http.StatusOK {
		return 0, fmt.Errorf("GET %s/metrics: %d", r.Host, res.Status)
	}
	return sumMetric(res.Body, metric, labels...)
}

// sumMetric sums the samples of metric in a Prometheus text exposition
// whose label set contains every `k="v"` in labels.
func sumMetric(body []byte, metric string, labels ...string) (float64, error) {
	sum := 0.0
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
next:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, metric+"{") && !strings.HasPrefix(line, metric+" ") {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				continue next
			}
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum, nil
}

func cxMetric(t *testing.T, r *reg, metric string, labels ...string) float64 {
	t.Helper()
	v, err := cxMetricErr(r, metric, labels...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// metricPerMember reads metric on every member.
func (c *cluster) cxMetrics(t *testing.T, metric string, labels ...string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, m := range c.Members {
		out[m.Host] = cxMetric(t, m, metric, labels...)
	}
	return out
}

func cxSum(m map[string]float64) float64 {
	s := 0.0
	for _, v := range m {
		s += v
	}
	return s
}

// cxBlobFiles lists the blob files of repo in storage root: digest -> size.
func cxBlobFiles(t *testing.T, root, repo string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	dir := filepath.Join(root, filepath.FromSlash(repo), "blobs")
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out[filepath.Base(filepath.Dir(p))+":"+d.Name()] = fi.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// cxLayoutManifests reads repo's index.json: digest -> tags (empty for an
// untagged manifest); nil when there is no index.json.
func cxLayoutManifests(t *testing.T, root, repo string) map[string][]string {
	t.Helper()
	idx, err := readIndex(filepath.Join(root, filepath.FromSlash(repo), "index.json"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, m := range idx.Manifests {
		tags := out[m.Digest]
		if tag := m.Annotations["org.opencontainers.image.ref.name"]; tag != "" {
			tags = append(tags, tag)
		}
		sort.Strings(tags)
		out[m.Digest] = tags
	}
	return out
}

// ---- raw images ----

const (
	cxMTIndex    = "application/vnd.oci.image.index.v1+json"
	cxMTEmpty    = "application/vnd.oci.empty.v1+json"
	cxArtifactMT = "application/vnd.example.sbom"
)

// cxLayer returns a gzipped tar holding one file of n random bytes: a real
// layer (crane validate checks it).
func cxLayer(t *testing.T, n int) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	data := randBytes(t, n)
	hdr := &tar.Header{Name: "f/" + hex.EncodeToString(data[:6]), Mode: 0o644, Size: int64(n),
		ModTime: time.Unix(1700000000, 0), Typeflag: tar.TypeReg}
	must(t, tw.WriteHeader(hdr))
	_, err := tw.Write(data)
	must(t, err)
	must(t, tw.Close())
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, err = zw.Write(buf.Bytes())
	must(t, err)
	must(t, zw.Close())
	return gz.Bytes()
}

// cxDiffID is the digest of a gzipped layer's uncompressed content.
func cxDiffID(layer []byte) string {
	zr, err := gzip.NewReader(bytes.NewReader(layer))
	if err != nil {
		return sha256Digest(layer)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		return sha256Digest(layer)
	}
	return sha256Digest(b)
}

// cxImg is an image (or index, or artifact) built in memory.
type cxImg struct {
	Name      string // label for messages
	MediaType string
	Manifest  []byte
	Digest    string
	Config    []byte // nil for an index
	Layers    [][]byte
	Children  []*cxImg // index only
}

type cxDesc struct {
	MediaType    string            `json:"mediaType"`
	Digest       string            `json:"digest"`
	Size         int               `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Platform     map[string]string `json:"platform,omitempty"`
}

// cxImage builds a valid OCI image over layers with a unique config.
func cxImage(name string, layers ...[]byte) *cxImg {
	var diffIDs []string
	for _, l := range layers {
		diffIDs = append(diffIDs, cxDiffID(l))
	}
	cfg, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Labels": map[string]string{"name": name, "nonce": randHex(8)}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": append([]string{}, diffIDs...)},
	})
	m := map[string]any{
		"schemaVersion": 2, "mediaType": mtManifest,
		"config": cxDesc{MediaType: mtConfig, Digest: sha256Digest(cfg), Size: len(cfg)},
		"layers": []cxDesc{},
	}
	var ls []cxDesc
	for _, l := range layers {
		ls = append(ls, cxDesc{MediaType: mtLayer + "+gzip", Digest: sha256Digest(l), Size: len(l)})
	}
	if ls != nil {
		m["layers"] = ls
	}
	b, _ := json.Marshal(m)
	return &cxImg{Name: name, MediaType: mtManifest, Manifest: b, Digest: sha256Digest(b), Config: cfg, Layers: layers}
}

// cxReferrer builds an artifact manifest whose subject is subj.
func cxReferrer(name string, subj *cxImg, payload []byte) *cxImg {
	cfg := []byte("{}")
	m := map[string]any{
		"schemaVersion": 2, "mediaType": mtManifest, "artifactType": cxArtifactMT,
		"config":      cxDesc{MediaType: cxMTEmpty, Digest: sha256Digest(cfg), Size: len(cfg)},
		"layers":      []cxDesc{{MediaType: "application/json", Digest: sha256Digest(payload), Size: len(payload)}},
		"subject":     cxDesc{MediaType: subj.MediaType, Digest: subj.Digest, Size: len(subj.Manifest)},
		"annotations": map[string]string{"name": name},
	}
	b, _ := json.Marshal(m)
	return &cxImg{Name: name, MediaType: mtManifest, Manifest: b, Digest: sha256Digest(b), Config: cfg, Layers: [][]byte{payload}}
}

// cxIndexOf builds an image index over children (one platform each).
func cxIndexOf(name string, children ...*cxImg) *cxImg {
	var ds []cxDesc
	for i, c := range children {
		ds = append(ds, cxDesc{MediaType: c.MediaType, Digest: c.Digest, Size: len(c.Manifest),
			Platform: map[string]string{"os": "linux", "architecture": []string{"amd64", "arm64", "s390x", "ppc64le"}[i%4]}})
	}
	b, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": cxMTIndex, "manifests": ds,
		"annotations": map[string]string{"name": name}})
	return &cxImg{Name: name, MediaType: cxMTIndex, Manifest: b, Digest: sha256Digest(b), Children: children}
}

// Blobs returns every blob the image stores: digest -> size (manifests
// included, children of an index included).
func (m *cxImg) Blobs() map[string]int64 {
	out := map[string]int64{m.Digest: int64(len(m.Manifest))}
	if m.Config != nil {
		out[sha256Digest(m.Config)] = int64(len(m.Config))
	}
	for _, l := range m.Layers {
		out[sha256Digest(l)] = int64(len(l))
	}
	for _, c := range m.Children {
		for d, n := range c.Blobs() {
			out[d] = n
		}
	}
	return out
}

// Manifests returns the digests of the image's manifests (itself and an
// index's children).
func (m *cxImg) Manifests() []string {
	out := []string{m.Digest}
	for _, c := range m.Children {
		out = append(out, c.Manifests()...)
	}
	return out
}

// push uploads the image's blobs (POST + PUT each, always) and its
// manifests (children by digest first) through e, the top one under ref.
func (m *cxImg) push(t *testing.T, e *reg, repo, ref string) {
	t.Helper()
	if err := m.tryPush(e, repo, ref, false); err != nil {
		t.Fatalf("push %s to %s:%s via %s: %v", m.Name, repo, ref, e.Host, err)
	}
}

// tryPush is push without failing the test. With skipExisting, blobs that
// a HEAD finds are not uploaded again (what real clients do).
func (m *cxImg) tryPush(e *reg, repo, ref string, skipExisting bool) error {
	for _, c := range m.Children {
		if err := c.tryPush(e, repo, c.Digest, skipExisting); err != nil {
			return err
		}
	}
	var blobs [][]byte
	if m.Config != nil {
		blobs = append(blobs, m.Config)
	}
	blobs = append(blobs, m.Layers...)
	for _, b := range blobs {
		if err := cxUpload(e, repo, b, skipExisting); err != nil {
			return err
		}
	}
	return m.putManifest(e, repo, ref)
}

// putManifest PUTs the image's manifest (only) to repo:ref through e and
// checks the 201 and its digest.
func (m *cxImg) putManifest(e *reg, repo, ref string) error {
	res, err := e.try("PUT", "/v2/"+repo+"/manifests/"+ref, map[string]string{"Content-Type": m.MediaType}, m.Manifest)
	if err != nil {
		return err
	}
	if res.Status != http.StatusCreated {
		return &cxStatusError{"PUT manifest", res}
	}
	if got := res.Header.Get("Docker-Content-Digest"); got != m.Digest {
		return fmt.Errorf("PUT manifest %s:%s: Docker-Content-Digest %q, want %s", repo, ref, got, m.Digest)
	}
	return nil
}

// cxStatusError is an unexpected HTTP answer.
type cxStatusError struct {
	What string
	Res  *resp
}

func (e *cxStatusError) Error() string { return e.What + ": " + e.Res.String() }

// code is the first OCI error code of the answer.
func (e *cxStatusError) code() string { return ociErrorCode(e.Res.Body) }

// cxUpload uploads b to repo with POST + PUT (after a HEAD when
// skipExisting).
func cxUpload(e *reg, repo string, b []byte, skipExisting bool) error {
	d := sha256Digest(b)
	if skipExisting {
		res, err := e.try("HEAD", "/v2/"+repo+"/blobs/"+d, nil, nil)
		if err != nil {
			return err
		}
		if res.Status == http.StatusOK {
			return nil
		}
	}
	res, err := e.try("POST", "/v2/"+repo+"/blobs/uploads/", nil, nil)
	if err != nil {
		return err
	}
	if res.Status != http.StatusAccepted {
		return &cxStatusError{"POST upload", res}
	}
	return cxFinishUpload(e, res, b)
}

// cxFinishUpload completes the upload session that res (a 202 answer)
// started with b in one PUT.
func cxFinishUpload(e *reg, res *resp, b []byte) error {
	loc := res.Header.Get("Location")
	if strings.HasPrefix(loc, "/") {
		loc = e.URL + loc
	}
	res, err := e.try("PUT", withQuery(loc, "digest="+sha256Digest(b)), map[string]string{"Content-Type": "application/octet-stream"}, b)
	if err != nil {
		return err
	}
	if res.Status != http.StatusCreated {
		return &cxStatusError{"PUT blob", res}
	}
	return nil
}

// cxLogLines returns r's log lines with the given message.
func cxLogLines(t *testing.T, r *reg, msg string) []logLine {
	t.Helper()
	var out []logLine
	for _, l := range r.logSince(t, 0) {
		if l.str("message") == msg {
			out = append(out, l)
		}
	}
	return out
}

// cxKeys returns the sorted keys of a map.
func cxKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// cxSetDiff describes what want has that got lacks and what got has extra.
func cxSetDiff[V any, W any](want map[string]V, got map[string]W) string {
	var missing, extra []string
	for k := range want {
		if _, ok := got[k]; !ok {
			missing = append(missing, k)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			extra = append(extra, k)
		}
	}
	if len(missing) == 0 && len(extra) == 0 {
		return ""
	}
	sort.Strings(missing)
	sort.Strings(extra)
	return fmt.Sprintf("missing %v, unexpected %v", missing, extra)
}
