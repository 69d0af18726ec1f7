package gc

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/meta/bolt"
	"github.com/berthreg/berth/pkg/registry"
	"github.com/berthreg/berth/pkg/storage"
	"github.com/berthreg/berth/pkg/storage/fs"
)

// env is a registry over fs storage and bolt metadata in a temp dir.
type env struct {
	root  string
	store *fs.Driver
	md    *bolt.Store
	reg   *registry.Registry
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{root: filepath.Join(dir, "data")}
	var err error
	if e.store, err = fs.New(e.root, zerolog.Nop()); err != nil {
		t.Fatalf("fs.New: %v", err)
	}
	md, err := bolt.Open(filepath.Join(dir, "meta.db"))
	if err != nil {
		t.Fatalf("bolt.Open: %v", err)
	}
	t.Cleanup(func() { _ = md.Close() })
	e.md = md
	e.reg = registry.New(e.store, md, zerolog.Nop())
	return e
}

// collector returns a Collector over e with opts, logging to the test.
func (e *env) collector(t *testing.T, opts Options) *Collector {
	opts.Log = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	return New(e.reg, opts)
}

// pass runs one pass and fails the test on any error.
func pass(t *testing.T, c *Collector, only string) Report {
	t.Helper()
	var progress bytes.Buffer
	rep, err := c.Pass(t.Context(), only, &progress)
	if err != nil {
		t.Fatalf("Pass(%q): %v", only, err)
	}
	if len(rep.Errors) > 0 {
		t.Fatalf("Pass(%q) errors: %q", only, rep.Errors)
	}
	if lines := strings.Count(progress.String(), "\n"); lines != rep.Repos {
		t.Errorf("Pass(%q) printed %d progress lines for %d repositories:\n%s", only, lines, rep.Repos, progress.String())
	}
	return rep
}

// blob uploads content to repo through an upload session.
func (e *env) blob(t *testing.T, repo, mt string, content []byte) v1.Descriptor {
	t.Helper()
	ctx := t.Context()
	d := digest.FromBytes(content)
	up, err := e.reg.Store().NewUpload(ctx, repo)
	if err != nil {
		t.Fatalf("NewUpload(%s): %v", repo, err)
	}
	defer up.Close()
	if _, err := up.Append(ctx, bytes.NewReader(content)); err != nil {
		t.Fatalf("Append: %v", err)
	}
	if _, err := up.Commit(ctx, d); err != nil {
		t.Fatalf("Commit %s: %v", d, err)
	}
	return v1.Descriptor{MediaType: mt, Digest: d, Size: int64(len(content))}
}

// img is a pushed (or ready to push) image manifest and its blobs.
type img struct {
	desc  v1.Descriptor   // the manifest
	body  []byte          // manifest bytes
	blobs []v1.Descriptor // config and layers
}

// digests returns the manifest digest and its blobs' digests.
func (i img) digests() []digest.Digest {
	out := []digest.Digest{i.desc.Digest}
	for _, b := range i.blobs {
		out = append(out, b.Digest)
	}
	return out
}

// image uploads a config and a layer unique to seed (plus extra layers
// already stored) and builds the manifest, with subject when not nil.
func (e *env) image(t *testing.T, repo, seed string, subject *v1.Descriptor, extra ...v1.Descriptor) img {
	t.Helper()
	cfg := e.blob(t, repo, v1.MediaTypeImageConfig, []byte(`{"seed":"`+seed+`"}`))
	layer := e.blob(t, repo, v1.MediaTypeImageLayerGzip, []byte("layer of "+seed))
	layers := append([]v1.Descriptor{layer}, extra...)
	m := v1.Manifest{MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: layers, Subject: subject}
	m.SchemaVersion = 2
	body := mustJSON(m)
	return img{
		desc:  v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.FromBytes(body), Size: int64(len(body))},
		body:  body,
		blobs: append([]v1.Descriptor{cfg}, layers...),
	}
}

// artifact builds a referrer of subject: the empty config and one layer
// unique to seed.
func (e *env) artifact(t *testing.T, repo, seed string, subject v1.Descriptor) img {
	t.Helper()
	cfg := e.blob(t, repo, "application/vnd.oci.empty.v1+json", []byte("{}"))
	layer := e.blob(t, repo, "application/vnd.example.sig", []byte("signature "+seed))
	m := v1.Manifest{
		MediaType: v1.MediaTypeImageManifest, ArtifactType: "application/vnd.example.sig",
		Config: cfg, Layers: []v1.Descriptor{layer}, Subject: &subject,
	}
	m.SchemaVersion = 2
	body := mustJSON(m)
	return img{
		desc:  v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.FromBytes(body), Size: int64(len(body))},
		body:  body,
		blobs: []v1.Descriptor{cfg, layer},
	}
}

// index builds an image index over children.
func index(children ...v1.Descriptor) img {
	x := v1.Index{MediaType: v1.MediaTypeImageIndex, Manifests: children}
	x.SchemaVersion = 2
	body := mustJSON(x)
	return img{desc: v1.Descriptor{MediaType: v1.MediaTypeImageIndex, Digest: digest.FromBytes(body), Size: int64(len(body))}, body: body}
}

// push stores m under ref (a tag, or "" for by digest) and extra tags.
func (e *env) push(t *testing.T, repo, ref string, m img, tags ...string) img {
	t.Helper()
	if ref == "" {
		ref = m.desc.Digest.String()
	}
	res, err := e.reg.PutManifest(t.Context(), repo, ref, m.desc.MediaType, m.body, tags)
	if err != nil {
		t.Fatalf("PutManifest %s:%s: %v", repo, ref, err)
	}
	if res.Digest != m.desc.Digest {
		t.Fatalf("PutManifest %s:%s stored %s, want %s", repo, ref, res.Digest, m.desc.Digest)
	}
	return m
}

// del deletes a tag or (by digest) a manifest.
func (e *env) del(t *testing.T, repo, ref string) {
	t.Helper()
	if err := e.reg.DeleteManifest(t.Context(), repo, ref); err != nil {
		t.Fatalf("DeleteManifest %s:%s: %v", repo, ref, err)
	}
}

func (e *env) blobPath(repo string, d digest.Digest) string {
	return filepath.Join(e.root, repo, "blobs", d.Algorithm().String(), d.Encoded())
}

// files returns the blob files of repo and their sizes.
func (e *env) files(t *testing.T, repo string) map[digest.Digest]int64 {
	t.Helper()
	out := map[digest.Digest]int64{}
	dir := filepath.Join(e.root, repo, "blobs", "sha256")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return out
	}
	if err != nil {
		t.Fatalf("ReadDir: %v", err)
	}
	for _, ent := range ents {
		fi, err := ent.Info()
		if err != nil {
			t.Fatalf("stat %s: %v", ent.Name(), err)
		}
		out[digest.NewDigestFromEncoded(digest.SHA256, ent.Name())] = fi.Size()
	}
	return out
}

// snapshot is every file of the storage root except temp files, with
// content, so a dry run can be shown to change nothing.
func (e *env) snapshot(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(e.root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(e.root, p)
		if strings.HasPrefix(rel, "_tmp") || d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		fi, _ := d.Info()
		out[rel] = string(b) + "@" + fi.ModTime().String()
		return nil
	})
	if err != nil {
		t.Fatalf("walk: %v", err)
	}
	return out
}

// age sets the modification time of the given blobs of repo to now-by.
func (e *env) age(t *testing.T, repo string, by time.Duration, ds ...digest.Digest) {
	t.Helper()
	at := time.Now().Add(-by)
	for _, d := range ds {
		if err := os.Chtimes(e.blobPath(repo, d), at, at); err != nil {
			t.Fatalf("Chtimes %s: %v", d, err)
		}
	}
}

// ageAll ages every blob of repo.
func (e *env) ageAll(t *testing.T, repo string, by time.Duration) {
	t.Helper()
	e.age(t, repo, by, slices.Collect(maps.Keys(e.files(t, repo)))...)
}

// checkFiles verifies that every blob file of repo hashes to its name.
func (e *env) checkFiles(t *testing.T, repo string) {
	t.Helper()
	for d := range e.files(t, repo) {
		b, err := os.ReadFile(e.blobPath(repo, d))
		if err != nil {
			t.Errorf("read %s: %v", d, err)
			continue
		}
		if got := digest.FromBytes(b); got != d {
			t.Errorf("blob file %s holds content %s", d, got)
		}
	}
}

// checkPull resolves repo:ref as a client would and verifies the manifest
// and every blob (and child manifest) it references, recursively.
func (e *env) checkPull(t *testing.T, repo, ref string, want digest.Digest) {
	t.Helper()
	ctx := t.Context()
	m, err := e.reg.Resolve(ctx, repo, ref)
	if err != nil {
		t.Errorf("Resolve %s:%s: %v", repo, ref, err)
		return
	}
	if m.Digest != want.String() {
		t.Errorf("Resolve %s:%s = %s, want %s", repo, ref, m.Digest, want)
		return
	}
	body, err := e.reg.ManifestBody(ctx, repo, m)
	if err != nil {
		t.Errorf("ManifestBody %s@%s: %v", repo, want, err)
		return
	}
	if got := digest.FromBytes(body); got != want {
		t.Errorf("manifest %s@%s reads back as %s", repo, want, got)
		return
	}
	var doc struct {
		Config    *v1.Descriptor  `json:"config"`
		Layers    []v1.Descriptor `json:"layers"`
		Manifests []v1.Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Errorf("manifest %s: %v", want, err)
		return
	}
	blobs := doc.Layers
	if doc.Config != nil {
		blobs = append(blobs, *doc.Config)
	}
	for _, b := range blobs {
		e.checkBlob(t, repo, b)
	}
	for _, c := range doc.Manifests {
		e.checkPull(t, repo, c.Digest.String(), c.Digest)
	}
}

// checkBlob reads a blob through the driver and verifies digest and size.
func (e *env) checkBlob(t *testing.T, repo string, b v1.Descriptor) {
	t.Helper()
	rd, err := e.reg.Store().Open(t.Context(), repo, b.Digest)
	if err != nil {
		t.Errorf("open blob %s@%s: %v", repo, b.Digest, err)
		return
	}
	defer rd.Close()
	data, err := io.ReadAll(rd)
	if err != nil {
		t.Errorf("read blob %s@%s: %v", repo, b.Digest, err)
		return
	}
	if got := digest.FromBytes(data); got != b.Digest || int64(len(data)) != b.Size {
		t.Errorf("blob %s@%s reads back as %s (%d bytes, want %d)", repo, b.Digest, got, len(data), b.Size)
	}
}

// gone asserts that ref no longer resolves in repo.
func (e *env) gone(t *testing.T, repo, ref string) {
	t.Helper()
	if _, err := e.reg.Resolve(t.Context(), repo, ref); !errors.Is(err, registry.ErrManifestUnknown) {
		t.Errorf("Resolve %s:%s after collection: err = %v, want ErrManifestUnknown", repo, ref, err)
	}
}

// indexDigests returns the manifest digests repo's index.json lists.
func (e *env) indexDigests(t *testing.T, repo string) map[digest.Digest]bool {
	t.Helper()
	data, _, err := e.reg.Store().Index(t.Context(), repo)
	if err != nil {
		t.Fatalf("Index(%s): %v", repo, err)
	}
	var x v1.Index
	if err := json.Unmarshal(data, &x); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	// A pass leaves the time of its last mark ("dev.berth.gc.last"),
	// never a mark.
	if x.Annotations["dev.berth.gc.pending"] != "" || x.Annotations["dev.berth.gc.since"] != "" {
		t.Errorf("index.json of %s still carries a garbage collection mark after the pass: %v", repo, x.Annotations)
	}
	out := map[digest.Digest]bool{}
	for _, d := range x.Manifests {
		out[d.Digest] = true
	}
	return out
}

// set builds a digest set.
func set(groups ...[]digest.Digest) map[digest.Digest]bool {
	out := map[digest.Digest]bool{}
	for _, g := range groups {
		for _, d := range g {
			out[d] = true
		}
	}
	return out
}

// diff describes how got differs from want.
func diff(got, want map[digest.Digest]bool, names map[digest.Digest]string) string {
	var b strings.Builder
	for _, d := range slices.Sorted(maps.Keys(want)) {
		if !got[d] {
			b.WriteString("\n  missing " + name(d, names))
		}
	}
	for _, d := range slices.Sorted(maps.Keys(got)) {
		if !want[d] {
			b.WriteString("\n  unexpected " + name(d, names))
		}
	}
	return b.String()
}

func name(d digest.Digest, names map[digest.Digest]string) string {
	if n, ok := names[d]; ok {
		return n + " (" + d.Encoded()[:12] + ")"
	}
	return d.String()
}

// keys turns a file listing into a set.
func keys(m map[digest.Digest]int64) map[digest.Digest]bool {
	out := map[digest.Digest]bool{}
	for d := range m {
		out[d] = true
	}
	return out
}

// actions returns the refs of rep's actions of kind.
func actions(rep Report, kind string) map[digest.Digest]bool {
	out := map[digest.Digest]bool{}
	for _, a := range rep.Actions {
		if a.Kind == kind {
			out[digest.Digest(a.Ref)] = true
		}
	}
	return out
}

// metric sums the samples of the counter or histogram family name whose
// labels include the given pairs (histograms count observations).
func metric(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// oldSession makes upload session id look started and last written ago
// (rewriting the fs driver's info.json, which records the start time, and
// dating its data file, whose time is the last write).
func (e *env) oldSession(t *testing.T, repo, id string, ago time.Duration) {
	t.Helper()
	at := time.Now().Add(-ago)
	info := mustJSON(map[string]any{"repo": repo, "startedAt": at.UTC()})
	if err := os.WriteFile(filepath.Join(e.root, "_uploads", id, "info.json"), info, 0o644); err != nil {
		t.Fatalf("rewrite info.json of %s: %v", id, err)
	}
	if err := os.Chtimes(filepath.Join(e.root, "_uploads", id, "data"), at, at); err != nil {
		t.Fatalf("date data of %s: %v", id, err)
	}
}

// session starts an upload session in repo with some bytes and releases
// it (abandoned), returning its id.
func (e *env) session(t *testing.T, repo string) string {
	t.Helper()
	up, err := e.reg.Store().NewUpload(t.Context(), repo)
	if err != nil {
		t.Fatalf("NewUpload: %v", err)
	}
	if _, err := up.Append(t.Context(), strings.NewReader("partial")); err != nil {
		t.Fatalf("Append: %v", err)
	}
	id := up.ID()
	if err := up.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return id
}

// sessionAlive reports whether upload id of repo can still be resumed.
func (e *env) sessionAlive(t *testing.T, repo, id string) bool {
	t.Helper()
	up, err := e.reg.Store().Upload(t.Context(), repo, id)
	if errors.Is(err, storage.ErrUploadUnknown) {
		return false
	}
	if err != nil {
		t.Fatalf("Upload(%s): %v", id, err)
	}
	up.Close()
	return true
}
