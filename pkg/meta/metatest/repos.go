package metatest

import (
	"testing"

	"github.com/berthreg/berth/pkg/meta"
)

// testVersion checks every write records its version, per repository.
func testVersion(t *testing.T, s meta.Store) {
	ctx := t.Context()
	a, b := image("a"), image("b")
	put(t, s, "r", a, "v1", "x")
	wantVersion(t, s, "r", "v1")
	put(t, s, "r", b, "v2", "y")
	wantVersion(t, s, "r", "v2")
	put(t, s, "other", a, "o1")
	wantVersion(t, s, "other", "o1")
	wantVersion(t, s, "r", "v2")

	if err := s.DeleteTag(ctx, "r", "x", "v3"); err != nil {
		t.Fatalf("DeleteTag: %v", err)
	}
	wantVersion(t, s, "r", "v3")
	if _, err := s.DeleteManifest(ctx, "r", b.Digest, "v4"); err != nil {
		t.Fatalf("DeleteManifest: %v", err)
	}
	wantVersion(t, s, "r", "v4")
	if err := s.ReplaceRepo(ctx, meta.Repo{Name: "r", Version: "v5"}); err != nil {
		t.Fatalf("ReplaceRepo: %v", err)
	}
	wantVersion(t, s, "r", "v5")

	// Failed writes leave the version alone.
	_ = s.DeleteTag(ctx, "r", "x", "bad")
	_, _ = s.DeleteManifest(ctx, "r", b.Digest, "bad")
	wantVersion(t, s, "r", "v5")
	wantVersion(t, s, "other", "o1")
}

// testReplaceRepo overwrites stale content fully and leaves other
// repositories alone.
func testReplaceRepo(t *testing.T, s meta.Store) {
	ctx := t.Context()
	a, b, c := image("a"), image("b"), image("c")
	sigA := referrer("sig-a", "application/vnd.example.sig", a)
	put(t, s, "r", a, "1", "a", "shared")
	put(t, s, "r", b, "2", "b")
	put(t, s, "r", sigA, "3")
	put(t, s, "keep", a, "k1", "a")

	a2 := a
	a2.Annotations = map[string]string{"rebuilt": "true"}
	sigC := referrer("sig-c", "application/vnd.example.sig", c)
	err := s.ReplaceRepo(ctx, meta.Repo{
		Name:      "r",
		Version:   "9",
		Manifests: []meta.Manifest{c, sigC, a2},
		Tags:      map[string]string{"c": c.Digest, "shared": c.Digest, "old-a": a.Digest},
	})
	if err != nil {
		t.Fatalf("ReplaceRepo: %v", err)
	}
	for _, d := range []string{b.Digest, sigA.Digest} {
		_, err := s.Manifest(ctx, "r", d)
		wantNotFound(t, "Manifest of replaced-away "+d, err)
	}
	for _, tag := range []string{"a", "b"} {
		_, err := s.Tag(ctx, "r", tag)
		wantNotFound(t, "Tag of replaced-away "+tag, err)
	}
	wantManifest(t, s, "r", a2)
	wantManifest(t, s, "r", c)
	wantManifest(t, s, "r", sigC)
	wantTag(t, s, "r", "shared", c)
	wantTag(t, s, "r", "old-a", a2)
	wantTags(t, s, "r", "c", "old-a", "shared")
	wantReferrers(t, s, "r", a.Digest)
	wantReferrers(t, s, "r", c.Digest, sigC)
	wantVersion(t, s, "r", "9")

	wantManifest(t, s, "keep", a)
	wantTag(t, s, "keep", "a", a)
	wantVersion(t, s, "keep", "k1")

	// Replacing into a new repository creates it; an empty one is kept.
	if err := s.ReplaceRepo(ctx, meta.Repo{Name: "new/empty", Version: "e1"}); err != nil {
		t.Fatalf("ReplaceRepo(new/empty): %v", err)
	}
	wantVersion(t, s, "new/empty", "e1")
	wantTags(t, s, "new/empty")
	repos, err := s.Repos(ctx, "", -1)
	if err != nil {
		t.Fatalf("Repos: %v", err)
	}
	wantList(t, "Repos", repos, []string{"keep", "new/empty", "r"})

	// And replacing with nothing empties an existing one.
	if err := s.ReplaceRepo(ctx, meta.Repo{Name: "r", Version: "10"}); err != nil {
		t.Fatalf("ReplaceRepo(r, empty): %v", err)
	}
	wantTags(t, s, "r")
	wantReferrers(t, s, "r", c.Digest)
	_, err = s.Manifest(ctx, "r", c.Digest)
	wantNotFound(t, "Manifest after empty replace", err)
	wantVersion(t, s, "r", "10")
}

// testDeleteRepo forgets a repository and nothing else.
func testDeleteRepo(t *testing.T, s meta.Store) {
	ctx := t.Context()
	a := image("a")
	sig := referrer("sig", "application/vnd.example.sig", a)
	put(t, s, "gone", a, "1", "x")
	put(t, s, "gone", sig, "2")
	put(t, s, "gone/child", a, "c1", "x")
	put(t, s, "stay", a, "s1", "x")

	if err := s.DeleteRepo(ctx, "gone"); err != nil {
		t.Fatalf("DeleteRepo: %v", err)
	}
	repos, err := s.Repos(ctx, "", -1)
	if err != nil {
		t.Fatalf("Repos: %v", err)
	}
	wantList(t, "Repos", repos, []string{"gone/child", "stay"})
	_, err = s.Version(ctx, "gone")
	wantNotFound(t, "Version after DeleteRepo", err)
	_, err = s.Tags(ctx, "gone", "", -1)
	wantNotFound(t, "Tags after DeleteRepo", err)
	_, err = s.Manifest(ctx, "gone", a.Digest)
	wantNotFound(t, "Manifest after DeleteRepo", err)
	_, err = s.Tag(ctx, "gone", "x")
	wantNotFound(t, "Tag after DeleteRepo", err)
	wantReferrers(t, s, "gone", a.Digest)
	wantTag(t, s, "gone/child", "x", a)
	wantTag(t, s, "stay", "x", a)

	if err := s.DeleteRepo(ctx, "gone"); err != nil {
		t.Errorf("DeleteRepo of unknown repository: %v, want nil", err)
	}

	// Recreated, the repository starts from nothing.
	b := image("b")
	put(t, s, "gone", b, "3", "y")
	wantTags(t, s, "gone", "y")
	wantReferrers(t, s, "gone", a.Digest)
	wantVersion(t, s, "gone", "3")
}
