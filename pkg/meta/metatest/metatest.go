// Package metatest is the conformance suite every meta.Store implementation
// runs (bbolt always, DynamoDB against a local server in e2e).
//
// The suite pins down what the meta.Store doc comments leave open:
//   - absence is reported with errors wrapping meta.ErrNotFound;
//   - Tags, Repos and Referrers return non-nil slices (JSON "[]", not null);
//     Tags and Repos page in byte-wise lexical order, strictly after last;
//   - a failed write (ErrNotFound, cancelled context) changes nothing,
//     including the version;
//   - DeleteManifest returns the removed tags sorted, keeps referrers whose
//     subject is the deleted manifest, and keeps the repository even when
//     it ends up empty;
//   - Referrers of an unknown repository is empty, not an error;
//   - DeleteRepo of an unknown repository is not an error;
//   - a method called with a done context returns an error wrapping
//     ctx.Err().
package metatest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/berthreg/berth/pkg/meta"
)

// Run runs the conformance suite. newStore must return a new, empty store
// not shared with any other call, and arrange (with t.Cleanup) for it to be
// closed. Subtests run in parallel.
func Run(t *testing.T, newStore func(t *testing.T) meta.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s meta.Store)
	}{
		{"PutGet", testPutGet},
		{"Upsert", testUpsert},
		{"TagMove", testTagMove},
		{"DeleteManifest", testDeleteManifest},
		{"DeleteManifestKeepsRepo", testDeleteManifestKeepsRepo},
		{"DeleteTag", testDeleteTag},
		{"Referrers", testReferrers},
		{"NotFound", testNotFound},
		{"TagsPagination", testTagsPagination},
		{"ReposPagination", testReposPagination},
		{"LexicalOrder", testLexicalOrder},
		{"Version", testVersion},
		{"ReplaceRepo", testReplaceRepo},
		{"DeleteRepo", testDeleteRepo},
		{"CanceledContext", testCanceledContext},
		{"ConcurrentPuts", testConcurrentPuts},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newStore(t))
		})
	}
}

// Media types used by the fixtures.
const (
	ociManifest = "application/vnd.oci.image.manifest.v1+json"
	ociIndex    = "application/vnd.oci.image.index.v1+json"
)

// digestOf returns a well-formed sha256 digest derived from name.
func digestOf(name string) string {
	sum := sha256.Sum256([]byte(name))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// image returns a manifest record named name (the name only seeds the
// digest and an annotation).
func image(name string) meta.Manifest {
	return meta.Manifest{
		Digest:      digestOf(name),
		MediaType:   ociManifest,
		Size:        int64(1000 + len(name)),
		Annotations: map[string]string{"org.opencontainers.image.title": name},
	}
}

// referrer returns an artifact manifest record whose subject is subject.
func referrer(name, artifactType string, subject meta.Manifest) meta.Manifest {
	m := image(name)
	m.ArtifactType = artifactType
	m.Subject = subject.Digest
	return m
}

// put records m in repo with tags and version, failing the test on error.
func put(t *testing.T, s meta.Store, repo string, m meta.Manifest, version string, tags ...string) {
	t.Helper()
	if err := s.PutManifest(t.Context(), repo, m, tags, version); err != nil {
		t.Fatalf("PutManifest(%s, %s, %v, %s): %v", repo, m.Digest, tags, version, err)
	}
}

// sameManifest reports whether a and b describe the same record; nil and
// empty annotations are equal.
func sameManifest(a, b meta.Manifest) bool {
	return a.Digest == b.Digest && a.MediaType == b.MediaType && a.Size == b.Size &&
		a.ArtifactType == b.ArtifactType && a.Subject == b.Subject &&
		maps.Equal(a.Annotations, b.Annotations)
}

// wantManifest checks that Manifest(repo, want.Digest) returns want.
func wantManifest(t *testing.T, s meta.Store, repo string, want meta.Manifest) {
	t.Helper()
	got, err := s.Manifest(t.Context(), repo, want.Digest)
	if err != nil {
		t.Fatalf("Manifest(%s, %s): %v", repo, want.Digest, err)
	}
	if !sameManifest(got, want) {
		t.Errorf("Manifest(%s, %s) = %+v, want %+v", repo, want.Digest, got, want)
	}
}

// wantTag checks that tag in repo resolves to want.
func wantTag(t *testing.T, s meta.Store, repo, tag string, want meta.Manifest) {
	t.Helper()
	got, err := s.Tag(t.Context(), repo, tag)
	if err != nil {
		t.Fatalf("Tag(%s, %s): %v", repo, tag, err)
	}
	if !sameManifest(got, want) {
		t.Errorf("Tag(%s, %s) = %s, want %s", repo, tag, got.Digest, want.Digest)
	}
}

// wantTags checks the full tag list of repo.
func wantTags(t *testing.T, s meta.Store, repo string, want ...string) {
	t.Helper()
	got, err := s.Tags(t.Context(), repo, "", -1)
	if err != nil {
		t.Fatalf("Tags(%s): %v", repo, err)
	}
	wantList(t, "Tags("+repo+")", got, want)
}

// wantList checks a non-nil list against want, in order.
func wantList(t *testing.T, what string, got, want []string) {
	t.Helper()
	if got == nil {
		t.Errorf("%s = nil, want non-nil slice", what)
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s = %q, want %q", what, got, want)
	}
}

// wantVersion checks the recorded version of repo.
func wantVersion(t *testing.T, s meta.Store, repo, want string) {
	t.Helper()
	got, err := s.Version(t.Context(), repo)
	if err != nil {
		t.Fatalf("Version(%s): %v", repo, err)
	}
	if got != want {
		t.Errorf("Version(%s) = %q, want %q", repo, got, want)
	}
}

// wantReferrers checks the referrers of subject in repo, in any order.
func wantReferrers(t *testing.T, s meta.Store, repo, subject string, want ...meta.Manifest) {
	t.Helper()
	got, err := s.Referrers(t.Context(), repo, subject)
	if err != nil {
		t.Fatalf("Referrers(%s, %s): %v", repo, subject, err)
	}
	if got == nil {
		t.Errorf("Referrers(%s, %s) = nil, want non-nil slice", repo, subject)
	}
	byDigest := func(a, b meta.Manifest) int { return strings.Compare(a.Digest, b.Digest) }
	got = slices.SortedFunc(slices.Values(got), byDigest)
	want = slices.SortedFunc(slices.Values(want), byDigest)
	if !slices.EqualFunc(got, want, sameManifest) {
		t.Errorf("Referrers(%s, %s) = %+v, want %+v", repo, subject, got, want)
	}
}

// wantNotFound checks that err wraps meta.ErrNotFound.
func wantNotFound(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("%s: err = %v, want meta.ErrNotFound", what, err)
	}
}
