package registry

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/meta"
	"github.com/berthreg/berth/pkg/meta/bolt"
)

// repoSnapshot is everything metadata answers about a repository.
type repoSnapshot struct {
	Version   string
	Tags      map[string]meta.Manifest
	Manifests map[string]meta.Manifest
	Referrers map[string][]meta.Manifest
}

// snapshot reads repo's metadata for the given digests (manifests and
// subjects).
func snapshot(t *testing.T, ms meta.Store, repo string, digests []digest.Digest) repoSnapshot {
	t.Helper()
	ctx := t.Context()
	s := repoSnapshot{Tags: map[string]meta.Manifest{}, Manifests: map[string]meta.Manifest{}, Referrers: map[string][]meta.Manifest{}}
	var err error
	if s.Version, err = ms.Version(ctx, repo); err != nil {
		t.Fatalf("Version(%s): %v", repo, err)
	}
	tags, err := ms.Tags(ctx, repo, "", -1)
	if err != nil {
		t.Fatalf("Tags(%s): %v", repo, err)
	}
	for _, tag := range tags {
		if s.Tags[tag], err = ms.Tag(ctx, repo, tag); err != nil {
			t.Errorf("Tag(%s:%s): %v", repo, tag, err)
		}
	}
	for _, d := range digests {
		if m, err := ms.Manifest(ctx, repo, d.String()); err == nil {
			s.Manifests[d.String()] = m
		}
		refs, err := ms.Referrers(ctx, repo, d.String())
		if err != nil {
			t.Fatalf("Referrers: %v", err)
		}
		if len(refs) > 0 {
			s.Referrers[d.String()] = refs
		}
	}
	return s
}

// fixture pushes two repositories: "a" (two images, an index, two
// referrers, tags) and "b/c" (a Docker manifest and a Docker list).
type fixture struct {
	digests map[string][]digest.Digest // by repo
}

func pushFixture(t *testing.T, e *env) fixture {
	t.Helper()
	f := fixture{digests: map[string][]digest.Digest{}}
	img1 := e.put(t, "a", "v1", MediaTypeOCIManifest, e.image(t, "a", "1", nil), "stable")
	img2 := e.put(t, "a", "v2", "", e.image(t, "a", "2", nil))
	idx := e.put(t, "a", "multi", MediaTypeOCIIndex, indexJSON(MediaTypeOCIIndex, img1, img2))
	empty := e.blob(t, "a", mediaTypeOCIEmptyConfig, []byte("{}"))
	sbom := manifestJSON(MediaTypeOCIManifest, empty, []v1.Descriptor{empty}, &img1, "application/vnd.example.sbom")
	sbomD := e.put(t, "a", digest.FromBytes(sbom).String(), MediaTypeOCIManifest, sbom)
	sig := manifestJSON(MediaTypeOCIManifest, empty, []v1.Descriptor{empty}, &idx, "application/vnd.example.sig")
	sigD := e.put(t, "a", "sig", MediaTypeOCIManifest, sig)
	untagged := e.put(t, "a", "gone", MediaTypeOCIManifest, e.image(t, "a", "3", nil))
	if err := e.reg.DeleteManifest(t.Context(), "a", "gone"); err != nil {
		t.Fatal(err)
	}
	f.digests["a"] = []digest.Digest{img1.Digest, img2.Digest, idx.Digest, sbomD.Digest, sigD.Digest, untagged.Digest}

	cfg := e.blob(t, "b/c", "application/vnd.docker.container.image.v1+json", []byte(`{"os":"linux"}`))
	layer := e.blob(t, "b/c", "application/vnd.docker.image.rootfs.diff.tar.gzip", []byte("docker layer"))
	dm := e.put(t, "b/c", "latest", MediaTypeDockerManifest, manifestJSON(MediaTypeDockerManifest, cfg, []v1.Descriptor{layer}, nil, ""))
	dl := e.put(t, "b/c", "list", MediaTypeDockerList, indexJSON(MediaTypeDockerList, dm))
	f.digests["b/c"] = []digest.Digest{dm.Digest, dl.Digest}
	return f
}

func (f fixture) snapshot(t *testing.T, ms meta.Store) map[string]repoSnapshot {
	t.Helper()
	out := map[string]repoSnapshot{}
	for repo, ds := range f.digests {
		out[repo] = snapshot(t, ms, repo, ds)
	}
	return out
}

func TestRebuildAfterLosingMetadata(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	f := pushFixture(t, e)
	before := f.snapshot(t, e.md)
	if len(before["a"].Referrers) != 2 || len(before["a"].Tags) != 5 {
		t.Fatalf("fixture not as expected: %+v", before["a"])
	}

	// A registry that starts with metadata in step does nothing.
	st, err := e.reg.Rebuild(t.Context(), nil)
	if err != nil || st != (RebuildStats{Repos: 2}) {
		t.Errorf("Rebuild in step = %+v, %v; want 2 repos, nothing rebuilt", st, err)
	}

	if err := e.md.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(e.metaPath); err != nil {
		t.Fatal(err)
	}
	e.open(t)
	st, err = e.reg.Rebuild(t.Context(), nil)
	if err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	if st != (RebuildStats{Repos: 2, Rebuilt: 2}) {
		t.Errorf("Rebuild = %+v, want 2 repos rebuilt", st)
	}
	after := f.snapshot(t, e.md)
	if !reflect.DeepEqual(before, after) {
		t.Errorf("metadata after rebuild differs:\nbefore %+v\nafter  %+v", before, after)
	}
	if repos, err := e.reg.Catalog(t.Context(), "", -1); err != nil || !slices.Equal(repos, []string{"a", "b/c"}) {
		t.Errorf("Catalog = %v, %v", repos, err)
	}
	st, err = e.reg.Rebuild(t.Context(), nil)
	if err != nil || st != (RebuildStats{Repos: 2}) {
		t.Errorf("second Rebuild = %+v, %v; want nothing rebuilt", st, err)
	}
}

func TestRebuildStaleRepo(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	f := pushFixture(t, e)
	before := f.snapshot(t, e.md)

	// Another process changes a's index.json: "v1" moves to img2, "v2" goes
	// away and a new tag "extra" names the index.
	ctx := t.Context()
	img1, img2, idx := f.digests["a"][0], f.digests["a"][1], f.digests["a"][2]
	x, ver := storedIndex(t, e.store, "a")
	var d1, d2, di v1.Descriptor
	for _, d := range x.Manifests {
		switch d.Digest {
		case img1:
			d1 = d
		case img2:
			d2 = d
		case idx:
			di = d
		}
	}
	d1.Annotations, d2.Annotations, di.Annotations = nil, nil, nil
	x.deleteTag("v2")
	x.putManifest(d2, []string{"v1"})
	x.putManifest(di, []string{"extra"})
	if err := e.store.PutIndex(ctx, "a", mustJSON(x), ver); err != nil {
		t.Fatal(err)
	}

	st, err := e.reg.Rebuild(ctx, nil)
	if err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	if st != (RebuildStats{Repos: 2, Rebuilt: 1}) {
		t.Errorf("Rebuild = %+v, want exactly one repository rebuilt", st)
	}
	after := f.snapshot(t, e.md)
	if !reflect.DeepEqual(before["b/c"], after["b/c"]) {
		t.Errorf("b/c changed:\nbefore %+v\nafter  %+v", before["b/c"], after["b/c"])
	}
	_, newVer := storedIndex(t, e.store, "a")
	if after["a"].Version != newVer {
		t.Errorf("a at version %s, storage at %s", after["a"].Version, newVer)
	}
	tags := map[string]string{}
	for tag, m := range after["a"].Tags {
		tags[tag] = m.Digest
	}
	want := map[string]string{"v1": img2.String(), "stable": img1.String(), "multi": idx.String(), "extra": idx.String(), "sig": f.digests["a"][4].String()}
	if !reflect.DeepEqual(tags, want) {
		t.Errorf("tags of a %v, want %v", tags, want)
	}
	if !reflect.DeepEqual(before["a"].Referrers, after["a"].Referrers) || !reflect.DeepEqual(before["a"].Manifests, after["a"].Manifests) {
		t.Errorf("manifests or referrers of a changed: before %+v after %+v", before["a"], after["a"])
	}
}

func TestRebuildDropsRemovedRepo(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	f := pushFixture(t, e)
	before := f.snapshot(t, e.md)
	if err := os.RemoveAll(filepath.Join(e.root, "b")); err != nil {
		t.Fatal(err)
	}
	st, err := e.reg.Rebuild(t.Context(), nil)
	if err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	if st != (RebuildStats{Repos: 1, Dropped: 1}) {
		t.Errorf("Rebuild = %+v, want 1 repo, 1 dropped", st)
	}
	if repos, err := e.reg.Catalog(t.Context(), "", -1); err != nil || !slices.Equal(repos, []string{"a"}) {
		t.Errorf("Catalog = %v, %v; want [a]", repos, err)
	}
	if _, err := e.md.Version(t.Context(), "b/c"); err == nil {
		t.Error("b/c still has metadata")
	}
	if _, err := e.reg.Tags(t.Context(), "b/c", "", -1); err == nil {
		t.Error("Tags(b/c) succeeded after the repository was removed")
	}
	if after := snapshot(t, e.md, "a", f.digests["a"]); !reflect.DeepEqual(before["a"], after) {
		t.Errorf("a changed")
	}
}

// TestRebuildUnreadableManifest: a manifest whose blob is gone is skipped,
// and no tag may be left listed that cannot be resolved.
func TestRebuildUnreadableManifest(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	f := pushFixture(t, e)
	ctx := t.Context()
	img2 := f.digests["a"][1]
	if err := e.store.Delete(ctx, "a", img2); err != nil {
		t.Fatal(err)
	}
	if err := e.md.DeleteRepo(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.Rebuild(ctx, nil); err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	if _, err := e.reg.Resolve(ctx, "a", "v1"); err != nil {
		t.Errorf("Resolve(v1): %v", err)
	}
	tags, err := e.reg.Tags(ctx, "a", "", -1)
	if err != nil {
		t.Fatal(err)
	}
	for _, tag := range tags {
		if _, err := e.reg.Resolve(ctx, "a", tag); err != nil {
			t.Errorf("tags list %q, but Resolve(%s): %v", tags, tag, err)
		}
	}
}

func TestRebuildRepoCanceled(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	pushFixture(t, e)
	if err := e.md.DeleteRepo(t.Context(), "a"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := e.reg.Rebuild(ctx, nil); err == nil {
		t.Error("Rebuild with a canceled context succeeded")
	}
}

// TestRebuildMine: only the repositories mine accepts are rebuilt or
// dropped.
func TestRebuildMine(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	f := pushFixture(t, e)
	ctx := t.Context()
	// Metadata of both is lost, and a third repository exists only in
	// metadata.
	for repo := range f.digests {
		if err := e.md.DeleteRepo(ctx, repo); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.md.PutManifest(ctx, "ghost", meta.Manifest{Digest: digest.FromString("g").String(), MediaType: MediaTypeOCIManifest, Size: 1}, nil, "v"); err != nil {
		t.Fatal(err)
	}
	onlyA := func(repo string) bool { return repo == "a" }
	st, err := e.reg.Rebuild(ctx, onlyA)
	if err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	if st != (RebuildStats{Repos: 1, Rebuilt: 1}) {
		t.Errorf("Rebuild(a only) = %+v, want 1 repo rebuilt, none dropped", st)
	}
	if _, err := e.md.Version(ctx, "b/c"); err == nil {
		t.Error("b/c was rebuilt although mine rejects it")
	}
	if _, err := e.md.Version(ctx, "ghost"); err != nil {
		t.Error("ghost was dropped although mine rejects it")
	}
	st, err = e.reg.Rebuild(ctx, nil)
	if err != nil || st != (RebuildStats{Repos: 2, Rebuilt: 1, Dropped: 1}) {
		t.Errorf("Rebuild(all) = %+v, %v; want b/c rebuilt and ghost dropped", st, err)
	}
}

// heldMetaPut is a bolt store whose PutManifest of one digest waits until
// released: a member whose metadata write is slow while another member
// writes the same repository (a membership change in progress).
type heldMetaPut struct {
	*bolt.Store
	dgst    string
	reached chan struct{}
	release chan struct{}
}

func (h *heldMetaPut) PutManifest(ctx context.Context, repo string, m meta.Manifest, tags []string, version string) error {
	if m.Digest == h.dgst {
		close(h.reached)
		<-h.release
	}
	return h.Store.PutManifest(ctx, repo, m, tags, version)
}

// TestLateMetadataWriteSettled: member A tags v1 -> M1 and stalls before
// its metadata write; member B moves v1 -> M2 and records it; A's write
// lands last. A's push then sees index.json moved on and rebuilds the
// metadata, so v1 resolves to M2, as index.json says, and a later push
// (stamping a current version) cannot hide the difference.
func TestLateMetadataWriteSettled(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	m1 := e.image(t, "repo", "one", nil)
	m2 := e.image(t, "repo", "two", nil)
	held := &heldMetaPut{Store: e.md, dgst: digest.FromBytes(m1).String(), reached: make(chan struct{}), release: make(chan struct{})}
	a := New(e.store, held, zerolog.Nop())
	b := New(e.store, e.md, zerolog.Nop()) // another process: its own locks
	done := make(chan error, 1)
	go func() {
		_, err := a.PutManifest(ctx, "repo", "v1", MediaTypeOCIManifest, m1, nil)
		done <- err
	}()
	select {
	case <-held.reached:
	case err := <-done:
		t.Fatalf("A's push ended before its metadata write: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("A's push never reached its metadata write")
	}
	if _, err := b.PutManifest(ctx, "repo", "v1", MediaTypeOCIManifest, m2, nil); err != nil {
		t.Fatal(err)
	}
	close(held.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// A later push on A stamps the then current version.
	e.put(t, "repo", "v2", MediaTypeOCIManifest, e.image(t, "repo", "three", nil))
	got, err := e.md.Tag(ctx, "repo", "v1")
	if want := digest.FromBytes(m2).String(); err != nil || got.Digest != want {
		t.Errorf("v1 in metadata = %s, %v; index.json says %s", got.Digest, err, want)
	}
	checkMetaCurrent(t, e, "repo")
}
