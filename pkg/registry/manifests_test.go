package registry

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berthreg/berth/pkg/meta"
	"github.com/berthreg/berth/pkg/storage"
)

func TestPutManifestErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	body := e.image(t, "repo", "1", nil)
	missing := manifestJSON(MediaTypeOCIManifest, v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: digest.FromString("no"), Size: 2}, nil, nil, "")
	big := append(bytes.Repeat([]byte(" "), MaxManifestSize), body...)
	tests := []struct {
		name string
		ref  string
		mt   string
		body []byte
		tags []string
		want error
	}{
		{"too large", "big", MediaTypeOCIManifest, big, nil, ErrManifestTooLarge},
		{"invalid tag", "-x", MediaTypeOCIManifest, body, nil, ErrTagInvalid},
		{"invalid extra tag", "ok", MediaTypeOCIManifest, body, []string{"fine", "bad/tag"}, ErrTagInvalid},
		{"digest mismatch", digest.FromString("other").String(), MediaTypeOCIManifest, body, nil, ErrDigestInvalid},
		{"unsupported algorithm", digest.SHA384.FromBytes(body).String(), MediaTypeOCIManifest, body, nil, ErrDigestInvalid},
		{"missing blob", "missing", MediaTypeOCIManifest, missing, nil, ErrManifestBlob},
		{"missing child", "idx", MediaTypeOCIIndex, indexJSON(MediaTypeOCIIndex, v1.Descriptor{MediaType: MediaTypeOCIManifest, Digest: digest.FromBytes(body), Size: int64(len(body))}), nil, ErrManifestBlob},
		{"invalid", "bad", MediaTypeOCIManifest, []byte("{"), nil, ErrManifestInvalid},
	}
	for _, tt := range tests {
		_, err := e.reg.PutManifest(t.Context(), "repo", tt.ref, tt.mt, tt.body, tt.tags)
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: PutManifest = %v, want %v", tt.name, err, tt.want)
		}
	}
	// Nothing was recorded.
	if _, _, err := e.store.Index(t.Context(), "repo"); !errors.Is(err, storage.ErrRepoUnknown) {
		t.Errorf("index.json exists after failed pushes: %v", err)
	}
	if repos, _ := e.reg.Catalog(t.Context(), "", -1); len(repos) != 0 {
		t.Errorf("Catalog = %v after failed pushes", repos)
	}
	if _, err := e.store.Stat(t.Context(), "repo", digest.FromBytes(missing)); !errors.Is(err, storage.ErrBlobUnknown) {
		t.Errorf("manifest with a missing blob was stored: %v", err)
	}
}

func TestPutManifestResult(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	img := e.image(t, "repo", "1", nil)
	d := digest.FromBytes(img)
	res, err := e.reg.PutManifest(ctx, "repo", "v1", MediaTypeOCIManifest, img, []string{"v1.0", "v1.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Digest != d || res.Subject != "" || !slices.Equal(res.Tags, []string{"v1", "v1.0", "v1.0.0"}) {
		t.Errorf("PutResult %+v", res)
	}
	subj := v1.Descriptor{MediaType: MediaTypeOCIManifest, Digest: d, Size: int64(len(img))}
	ref := e.image(t, "repo", "2", &subj)
	res, err = e.reg.PutManifest(ctx, "repo", digest.FromBytes(ref).String(), "", ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Subject != d || len(res.Tags) != 0 {
		t.Errorf("PutResult %+v, want subject %s and no tags", res, d)
	}
	// sha512 reference: stored and resolvable under the sha512 digest.
	d512 := digest.SHA512.FromBytes(img)
	if res, err := e.reg.PutManifest(ctx, "repo", d512.String(), "", img, nil); err != nil || res.Digest != d512 {
		t.Errorf("PutManifest sha512 = %+v, %v", res, err)
	}
	if m, err := e.reg.Resolve(ctx, "repo", d512.String()); err != nil || m.Digest != d512.String() {
		t.Errorf("Resolve sha512 = %+v, %v", m, err)
	}
	body, err := e.reg.ManifestBody(ctx, "repo", mustResolve(t, e, "repo", d512.String()))
	if err != nil || !bytes.Equal(body, img) {
		t.Errorf("ManifestBody sha512 = %q, %v", body, err)
	}
	// Metadata and storage agree on the version.
	_, ver := storedIndex(t, e.store, "repo")
	if mv, _ := e.md.Version(ctx, "repo"); mv != ver {
		t.Errorf("metadata version %s, storage %s", mv, ver)
	}
}

func mustResolve(t *testing.T, e *env, repo, ref string) meta.Manifest {
	t.Helper()
	m, err := e.reg.Resolve(t.Context(), repo, ref)
	if err != nil {
		t.Fatalf("Resolve(%s:%s): %v", repo, ref, err)
	}
	return m
}

func TestDeleteManifest(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	img := e.image(t, "repo", "1", nil)
	d := digest.FromBytes(img)
	e.put(t, "repo", "a", "", img, "b")
	if err := e.reg.DeleteManifest(ctx, "repo", "nope"); !errors.Is(err, ErrManifestUnknown) {
		t.Errorf("DeleteManifest(nope) = %v", err)
	}
	if err := e.reg.DeleteManifest(ctx, "repo", "-x"); !errors.Is(err, ErrTagInvalid) {
		t.Errorf("DeleteManifest(-x) = %v", err)
	}
	if err := e.reg.DeleteManifest(ctx, "repo", "a"); err != nil {
		t.Fatal(err)
	}
	x, _ := storedIndex(t, e.store, "repo")
	if got := entries(x); !slices.Equal(got, []entry{{d, "b"}}) {
		t.Errorf("index after deleting tag a: %v", got)
	}
	if err := e.reg.DeleteManifest(ctx, "repo", d.String()); err != nil {
		t.Fatal(err)
	}
	x, ver := storedIndex(t, e.store, "repo")
	if len(x.Manifests) != 0 {
		t.Errorf("index after deleting the manifest: %v", entries(x))
	}
	if mv, _ := e.md.Version(ctx, "repo"); mv != ver {
		t.Errorf("metadata version %s, storage %s", mv, ver)
	}
	if tags, err := e.reg.Tags(ctx, "repo", "", -1); err != nil || len(tags) != 0 {
		t.Errorf("Tags = %v, %v", tags, err)
	}
	if err := e.reg.DeleteManifest(ctx, "repo", d.String()); !errors.Is(err, ErrManifestUnknown) {
		t.Errorf("second DeleteManifest = %v", err)
	}
	if _, err := e.reg.Tags(ctx, "nope", "", -1); !errors.Is(err, ErrNameUnknown) {
		t.Errorf("Tags(nope) = %v, want ErrNameUnknown", err)
	}
}

func TestReferrersFilter(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	img := e.image(t, "repo", "1", nil)
	subj := e.put(t, "repo", "v1", MediaTypeOCIManifest, img)
	empty := e.blob(t, "repo", mediaTypeOCIEmptyConfig, []byte("{}"))
	var want []string // digests of the x/a referrers
	for i, at := range []string{"x/a", "x/b", "x/a"} {
		body := manifestJSON(MediaTypeOCIManifest, empty, []v1.Descriptor{empty}, &subj, at)
		body = append(body[:len(body)-1], []byte(`,"annotations":{"n":"`+strings.Repeat("z", i+1)+`"}}`)...)
		d := e.put(t, "repo", digest.FromBytes(body).String(), MediaTypeOCIManifest, body)
		if at == "x/a" {
			want = append(want, d.Digest.String())
		}
	}
	all, err := e.reg.Referrers(ctx, "repo", subj.Digest, "")
	if err != nil || len(all) != 3 {
		t.Fatalf("Referrers = %v, %v; want 3", all, err)
	}
	got, err := e.reg.Referrers(ctx, "repo", subj.Digest, "x/a")
	if err != nil || len(got) != 2 {
		t.Fatalf("Referrers(x/a) = %v, %v; want 2", got, err)
	}
	for _, m := range got {
		if m.ArtifactType != "x/a" || !slices.Contains(want, m.Digest) {
			t.Errorf("filtered referrer %+v", m)
		}
	}
	if got, err := e.reg.Referrers(ctx, "repo", subj.Digest, "x/none"); err != nil || len(got) != 0 {
		t.Errorf("Referrers(x/none) = %v, %v", got, err)
	}
}

func TestFindBlob(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	content := []byte("shared")
	d := digest.FromBytes(content)
	// "noted" is known to the blob locator; "walked" only to storage (it
	// needs an index.json for the walk to see it).
	e.blob(t, "noted", "x", content)
	e.reg.NoteBlob(ctx, "noted", d)
	if got, err := e.reg.FindBlob(ctx, d, "other"); err != nil || got != "noted" {
		t.Errorf("FindBlob = %q, %v; want noted", got, err)
	}
	if _, err := e.reg.FindBlob(ctx, d, "noted"); !errors.Is(err, storage.ErrBlobUnknown) {
		t.Errorf("FindBlob excluding the only holder = %v", err)
	}
	e.blob(t, "walked", "x", content)
	e.put(t, "walked", "v1", MediaTypeOCIManifest, e.image(t, "walked", "1", nil))
	if got, err := e.reg.FindBlob(ctx, d, "noted"); err != nil || got != "walked" {
		t.Errorf("FindBlob by walking = %q, %v; want walked", got, err)
	}
	// A stale hint is checked against storage.
	if err := e.store.Delete(ctx, "noted", d); err != nil {
		t.Fatal(err)
	}
	if got, err := e.reg.FindBlob(ctx, d, "x"); err != nil || got != "walked" {
		t.Errorf("FindBlob with a stale hint = %q, %v; want walked", got, err)
	}
	if _, err := e.reg.FindBlob(ctx, digest.FromString("nobody"), ""); !errors.Is(err, storage.ErrBlobUnknown) {
		t.Errorf("FindBlob(unknown) = %v", err)
	}
}

func TestKeyedMutex(t *testing.T) {
	t.Parallel()
	var k keyedMutex
	var wg sync.WaitGroup
	var counts [4]int
	for i := range 64 {
		wg.Go(func() {
			unlock := k.lock(context.Background(), string(rune('a'+i%4)))
			counts[i%4]++ // guarded by the key's lock; the race detector checks
			unlock()
		})
	}
	wg.Wait()
	if len(k.m) != 0 {
		t.Errorf("%d mutexes left after all unlocked", len(k.m))
	}
	for i, n := range counts {
		if n != 16 {
			t.Errorf("key %d counted %d, want 16", i, n)
		}
	}
}

// TestNoteBlobAfterClientLeft: the blob location is recorded after the
// blob is committed, even when the request's client has gone by then.
func TestNoteBlobAfterClientLeft(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	content := []byte("committed, then the client left")
	d := digest.FromBytes(content)
	e.blob(t, "noted", "x", content)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	e.reg.NoteBlob(ctx, "noted", d)
	if got, err := e.reg.LocateBlob(t.Context(), d, ""); err != nil || got != "noted" {
		t.Errorf("LocateBlob = %q, %v; want noted", got, err)
	}
}
