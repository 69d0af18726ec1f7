package metatest

import (
	"fmt"
	"slices"
	"testing"

	"github.com/berthreg/berth/pkg/meta"
)

// testPutGet records a manifest with tags and reads it back every way.
func testPutGet(t *testing.T, s meta.Store) {
	ctx := t.Context()
	full := meta.Manifest{
		Digest:       digestOf("full"),
		MediaType:    ociIndex,
		Size:         4242,
		ArtifactType: "application/vnd.example+type",
		Subject:      digestOf("base"),
		Annotations:  map[string]string{"a": "1", "b": "2"},
	}
	bare := meta.Manifest{Digest: digestOf("bare"), MediaType: ociManifest, Size: 1}

	put(t, s, "library/app", full, "v1", "latest", "1.0")
	put(t, s, "library/app", bare, "v2") // untagged
	wantManifest(t, s, "library/app", full)
	wantManifest(t, s, "library/app", bare)
	wantTag(t, s, "library/app", "latest", full)
	wantTag(t, s, "library/app", "1.0", full)
	wantTags(t, s, "library/app", "1.0", "latest")
	wantVersion(t, s, "library/app", "v2")

	repos, err := s.Repos(ctx, "", -1)
	if err != nil {
		t.Fatalf("Repos: %v", err)
	}
	wantList(t, "Repos", repos, []string{"library/app"})
}

// testUpsert re-puts a manifest: the record is replaced, tags accumulate.
func testUpsert(t *testing.T, s meta.Store) {
	m := image("a")
	put(t, s, "r", m, "1", "x")
	m2 := m
	m2.Annotations = map[string]string{"changed": "yes"}
	m2.ArtifactType = "application/vnd.example"
	put(t, s, "r", m2, "2", "y")
	wantManifest(t, s, "r", m2)
	wantTag(t, s, "r", "x", m2)
	wantTag(t, s, "r", "y", m2)
	wantTags(t, s, "r", "x", "y")
}

// testTagMove points a tag at another manifest.
func testTagMove(t *testing.T, s meta.Store) {
	ctx := t.Context()
	a, b := image("a"), image("b")
	put(t, s, "r", a, "1", "latest", "v1")
	put(t, s, "r", b, "2", "latest", "v2")
	wantTag(t, s, "r", "latest", b)
	wantTag(t, s, "r", "v1", a)
	wantTag(t, s, "r", "v2", b)
	wantTags(t, s, "r", "latest", "v1", "v2")

	// Deleting a no longer removes the tag that moved away from it.
	removed, err := s.DeleteManifest(ctx, "r", a.Digest, "3")
	if err != nil {
		t.Fatalf("DeleteManifest: %v", err)
	}
	if !slices.Equal(removed, []string{"v1"}) {
		t.Errorf("DeleteManifest removed %q, want [v1]", removed)
	}
	wantTag(t, s, "r", "latest", b)
	wantTags(t, s, "r", "latest", "v2")
}

// testDeleteManifest removes a manifest, its tags and its referrer entry.
func testDeleteManifest(t *testing.T, s meta.Store) {
	ctx := t.Context()
	a, b := image("a"), image("b")
	sig := referrer("sig", "application/vnd.example.sig", a)
	put(t, s, "r", a, "1", "c", "a", "b")
	put(t, s, "r", b, "2", "d")
	put(t, s, "r", sig, "3", "sig-tag")
	put(t, s, "other", a, "o1", "a") // same digest elsewhere is independent

	removed, err := s.DeleteManifest(ctx, "r", a.Digest, "4")
	if err != nil {
		t.Fatalf("DeleteManifest(a): %v", err)
	}
	if !slices.Equal(removed, []string{"a", "b", "c"}) {
		t.Errorf("DeleteManifest(a) removed %q, want sorted [a b c]", removed)
	}
	_, err = s.Manifest(ctx, "r", a.Digest)
	wantNotFound(t, "Manifest(a) after delete", err)
	for _, tag := range []string{"a", "b", "c"} {
		_, err = s.Tag(ctx, "r", tag)
		wantNotFound(t, "Tag("+tag+") after delete", err)
	}
	wantTags(t, s, "r", "d", "sig-tag")
	wantManifest(t, s, "r", b)
	wantManifest(t, s, "other", a)
	wantTag(t, s, "other", "a", a)
	// Referrers outlive their subject: storage, not meta, decides on GC.
	wantReferrers(t, s, "r", a.Digest, sig)
	wantVersion(t, s, "r", "4")

	removed, err = s.DeleteManifest(ctx, "r", sig.Digest, "5")
	if err != nil {
		t.Fatalf("DeleteManifest(sig): %v", err)
	}
	if !slices.Equal(removed, []string{"sig-tag"}) {
		t.Errorf("DeleteManifest(sig) removed %q, want [sig-tag]", removed)
	}
	wantReferrers(t, s, "r", a.Digest)

	removed, err = s.DeleteManifest(ctx, "r", b.Digest, "6")
	if err != nil {
		t.Fatalf("DeleteManifest(b): %v", err)
	}
	if !slices.Equal(removed, []string{"d"}) {
		t.Errorf("DeleteManifest(b) removed %q, want [d]", removed)
	}

	_, err = s.DeleteManifest(ctx, "r", a.Digest, "7")
	wantNotFound(t, "second DeleteManifest(a)", err)
	wantVersion(t, s, "r", "6")
}

// testDeleteManifestKeepsRepo empties a repository: it stays listed, with
// its version, and an untagged manifest deletes with no tags removed.
func testDeleteManifestKeepsRepo(t *testing.T, s meta.Store) {
	ctx := t.Context()
	a := image("a")
	put(t, s, "r", a, "1")
	removed, err := s.DeleteManifest(ctx, "r", a.Digest, "2")
	if err != nil {
		t.Fatalf("DeleteManifest: %v", err)
	}
	if len(removed) != 0 {
		t.Errorf("DeleteManifest removed %q, want none", removed)
	}
	wantVersion(t, s, "r", "2")
	wantTags(t, s, "r")
	repos, err := s.Repos(ctx, "", -1)
	if err != nil {
		t.Fatalf("Repos: %v", err)
	}
	wantList(t, "Repos", repos, []string{"r"})
}

// testDeleteTag removes one tag and leaves the manifest.
func testDeleteTag(t *testing.T, s meta.Store) {
	ctx := t.Context()
	a := image("a")
	put(t, s, "r", a, "1", "x", "y")
	if err := s.DeleteTag(ctx, "r", "x", "2"); err != nil {
		t.Fatalf("DeleteTag(x): %v", err)
	}
	_, err := s.Tag(ctx, "r", "x")
	wantNotFound(t, "Tag(x) after delete", err)
	wantTag(t, s, "r", "y", a)
	wantManifest(t, s, "r", a)
	wantTags(t, s, "r", "y")
	wantVersion(t, s, "r", "2")

	wantNotFound(t, "second DeleteTag(x)", s.DeleteTag(ctx, "r", "x", "3"))
	wantNotFound(t, "DeleteTag(unknown repo)", s.DeleteTag(ctx, "nope", "y", "3"))
	wantVersion(t, s, "r", "2") // failed writes change nothing
}

// testReferrers indexes manifests by subject, per repository.
func testReferrers(t *testing.T, s meta.Store) {
	ctx := t.Context()
	subj, other := image("subject"), image("other")
	sig := referrer("sig", "application/vnd.example.sig", subj)
	sbom := referrer("sbom", "application/spdx+json", subj)
	orphan := referrer("orphan", "application/vnd.example", image("absent"))
	onOther := referrer("on-other", "application/vnd.example", other)
	put(t, s, "r", subj, "1", "latest")
	put(t, s, "r", other, "2")
	put(t, s, "r", sig, "3")
	put(t, s, "r", sbom, "4")
	put(t, s, "r", orphan, "5")
	put(t, s, "r", onOther, "6")
	put(t, s, "r2", subj, "1")

	wantReferrers(t, s, "r", subj.Digest, sig, sbom)
	wantReferrers(t, s, "r", other.Digest, onOther)
	wantReferrers(t, s, "r", digestOf("absent"), orphan) // subject need not exist
	wantReferrers(t, s, "r", sig.Digest)                 // none
	wantReferrers(t, s, "r2", subj.Digest)               // other repository
	wantReferrers(t, s, "unknown", subj.Digest)          // unknown repository

	if _, err := s.DeleteManifest(ctx, "r", sig.Digest, "7"); err != nil {
		t.Fatalf("DeleteManifest(sig): %v", err)
	}
	wantReferrers(t, s, "r", subj.Digest, sbom)

	// Many referrers of one subject.
	var want []meta.Manifest
	for i := range 20 {
		m := referrer(fmt.Sprintf("many-%d", i), "application/vnd.example", other)
		put(t, s, "r", m, fmt.Sprintf("m%d", i))
		want = append(want, m)
	}
	wantReferrers(t, s, "r", other.Digest, append(want, onOther)...)
}

// testNotFound checks every absence case reports meta.ErrNotFound.
func testNotFound(t *testing.T, s meta.Store) {
	ctx := t.Context()
	a := image("a")
	put(t, s, "r", a, "1", "x")
	if err := s.ReplaceRepo(ctx, meta.Repo{
		Name: "dangling", Version: "1",
		Tags: map[string]string{"gone": digestOf("missing")},
	}); err != nil {
		t.Fatalf("ReplaceRepo: %v", err)
	}

	cases := []struct {
		name string
		call func() error
	}{
		{"Manifest unknown repo", func() error { _, err := s.Manifest(ctx, "nope", a.Digest); return err }},
		{"Manifest unknown digest", func() error { _, err := s.Manifest(ctx, "r", digestOf("zz")); return err }},
		{"Tag unknown repo", func() error { _, err := s.Tag(ctx, "nope", "x"); return err }},
		{"Tag unknown tag", func() error { _, err := s.Tag(ctx, "r", "y"); return err }},
		{"Tag to missing manifest", func() error { _, err := s.Tag(ctx, "dangling", "gone"); return err }},
		{"Tags unknown repo", func() error { _, err := s.Tags(ctx, "nope", "", -1); return err }},
		{"Tags unknown repo n=0", func() error { _, err := s.Tags(ctx, "nope", "", 0); return err }},
		{"DeleteManifest unknown repo", func() error { _, err := s.DeleteManifest(ctx, "nope", a.Digest, "2"); return err }},
		{"DeleteManifest unknown digest", func() error { _, err := s.DeleteManifest(ctx, "r", digestOf("zz"), "2"); return err }},
		{"DeleteTag unknown repo", func() error { return s.DeleteTag(ctx, "nope", "x", "2") }},
		{"DeleteTag unknown tag", func() error { return s.DeleteTag(ctx, "r", "y", "2") }},
	}
	for _, tc := range cases {
		wantNotFound(t, tc.name, tc.call())
	}

	v, err := s.Version(ctx, "nope")
	wantNotFound(t, "Version unknown repo", err)
	if v != "" {
		t.Errorf("Version unknown repo = %q, want \"\"", v)
	}
	wantVersion(t, s, "r", "1")
	wantTag(t, s, "r", "x", a)
}
