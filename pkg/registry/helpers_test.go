package registry

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/meta/bolt"
	"github.com/berthreg/berth/pkg/storage"
	"github.com/berthreg/berth/pkg/storage/fs"
)

// env is a registry over fs storage and a bolt file in a temp dir.
type env struct {
	reg      *Registry
	store    *fs.Driver
	md       *bolt.Store
	root     string // storage root
	metaPath string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{root: filepath.Join(dir, "data"), metaPath: filepath.Join(dir, "meta.db")}
	var err error
	if e.store, err = fs.New(e.root, zerolog.Nop()); err != nil {
		t.Fatalf("fs.New: %v", err)
	}
	e.open(t)
	return e
}

// open (re)opens the bolt file and builds a registry over store.
func (e *env) open(t *testing.T) {
	t.Helper()
	md, err := bolt.Open(e.metaPath)
	if err != nil {
		t.Fatalf("bolt.Open: %v", err)
	}
	t.Cleanup(func() { _ = md.Close() })
	e.md = md
	e.reg = New(e.store, md, zerolog.Nop())
}

// blob stores content in repo and returns its descriptor.
func (e *env) blob(t *testing.T, repo, mt string, content []byte) v1.Descriptor {
	t.Helper()
	d := digest.FromBytes(content)
	ctx := t.Context()
	up, err := e.store.NewUpload(ctx, repo)
	if err != nil {
		t.Fatalf("NewUpload: %v", err)
	}
	defer up.Close()
	if _, err := up.Append(ctx, bytes.NewReader(content)); err != nil {
		t.Fatalf("Append: %v", err)
	}
	if _, err := up.Commit(ctx, d); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return v1.Descriptor{MediaType: mt, Digest: d, Size: int64(len(content))}
}

// put pushes a manifest and returns its descriptor.
func (e *env) put(t *testing.T, repo, ref, mt string, body []byte, tags ...string) v1.Descriptor {
	t.Helper()
	res, err := e.reg.PutManifest(t.Context(), repo, ref, mt, body, tags)
	if err != nil {
		t.Fatalf("PutManifest %s:%s: %v", repo, ref, err)
	}
	if mt == "" {
		mt = MediaTypeOCIManifest
	}
	return v1.Descriptor{MediaType: mt, Digest: res.Digest, Size: int64(len(body))}
}

// image stores a config and a layer in repo and returns an OCI image
// manifest over them; seed makes it unique.
func (e *env) image(t *testing.T, repo, seed string, subject *v1.Descriptor) []byte {
	t.Helper()
	cfg := e.blob(t, repo, v1.MediaTypeImageConfig, []byte(`{"seed":"`+seed+`"}`))
	layer := e.blob(t, repo, v1.MediaTypeImageLayerGzip, []byte("layer "+seed))
	return manifestJSON(v1.MediaTypeImageManifest, cfg, []v1.Descriptor{layer}, subject, "")
}

func manifestJSON(mt string, cfg v1.Descriptor, layers []v1.Descriptor, subject *v1.Descriptor, artifactType string) []byte {
	m := v1.Manifest{MediaType: mt, Config: cfg, Layers: layers, Subject: subject, ArtifactType: artifactType}
	m.SchemaVersion = 2
	return mustJSON(m)
}

func indexJSON(mt string, manifests ...v1.Descriptor) []byte {
	x := v1.Index{MediaType: mt, Manifests: manifests}
	x.SchemaVersion = 2
	return mustJSON(x)
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// storedIndex reads repo's index.json from storage.
func storedIndex(t *testing.T, d storage.Driver, repo string) (*ociIndex, string) {
	t.Helper()
	data, ver, err := d.Index(t.Context(), repo)
	if err != nil {
		t.Fatalf("Index(%s): %v", repo, err)
	}
	x := newIndex()
	if err := json.Unmarshal(data, x); err != nil {
		t.Fatalf("index.json of %s: %v", repo, err)
	}
	return x, ver
}

// entry is an index.json entry reduced to what the tests compare.
type entry struct {
	digest digest.Digest
	tag    string
}

func entries(x *ociIndex) []entry {
	out := make([]entry, 0, len(x.Manifests))
	for _, d := range x.Manifests {
		out = append(out, entry{d.Digest, tagOf(d)})
	}
	return out
}
