package api_test

import (
	"io"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ggcr returns the server's host and remote options for it.
func ggcr(t *testing.T, ts *testServer) (string, []remote.Option) {
	t.Helper()
	return strings.TrimPrefix(ts.URL, "http://"), []remote.Option{
		remote.WithContext(t.Context()),
		remote.WithTransport(ts.Client().Transport),
		remote.WithReferrersTagFallback(false),
	}
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(s, name.Insecure)
	if err != nil {
		t.Fatalf("ParseReference(%q): %v", s, err)
	}
	return ref
}

func mustDigest(t *testing.T, d interface{ Digest() (ggcrv1.Hash, error) }) ggcrv1.Hash {
	t.Helper()
	h, err := d.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestClientImage pushes a random image with go-containerregistry and pulls
// it back.
func TestClientImage(t *testing.T) {
	t.Parallel()
	ts := newServer(t)
	host, opts := ggcr(t, ts)
	img, err := random.Image(1<<16, 3)
	if err != nil {
		t.Fatal(err)
	}
	ref := mustRef(t, host+"/ggcr/image:v1")
	if err := remote.Write(ref, img, opts...); err != nil {
		t.Fatalf("remote.Write: %v", err)
	}
	// Pushing again is a no-op for the blobs (HEAD finds them).
	if err := remote.Write(ref, img, opts...); err != nil {
		t.Fatalf("remote.Write again: %v", err)
	}
	got, err := remote.Image(ref, opts...)
	if err != nil {
		t.Fatalf("remote.Image: %v", err)
	}
	if want, have := mustDigest(t, img), mustDigest(t, got); want != have {
		t.Errorf("pulled digest %s, pushed %s", have, want)
	}
	wantLayers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	gotLayers, err := got.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(gotLayers) != len(wantLayers) {
		t.Fatalf("%d layers, want %d", len(gotLayers), len(wantLayers))
	}
	for i := range wantLayers {
		if w, g := mustDigest(t, wantLayers[i]), mustDigest(t, gotLayers[i]); w != g {
			t.Errorf("layer %d: %s, want %s", i, g, w)
		}
	}
	// Reading every layer verifies its content against its digest.
	if err := validateLayers(got); err != nil {
		t.Error(err)
	}
	wantCfg, _ := img.RawConfigFile()
	gotCfg, err := got.RawConfigFile()
	if err != nil || string(gotCfg) != string(wantCfg) {
		t.Errorf("config %q (%v), want %q", gotCfg, err, wantCfg)
	}

	// A second repository: ggcr mounts the blobs from the first.
	ref2 := mustRef(t, host+"/ggcr/copy:v1")
	if err := remote.Write(ref2, img, opts...); err != nil {
		t.Fatalf("remote.Write copy: %v", err)
	}
	if d := mustDigest(t, mustImage(t, ref2, opts)); d != mustDigest(t, img) {
		t.Errorf("copy digest %s", d)
	}

	tags, err := remote.List(ref.Context(), opts...)
	if err != nil || len(tags) != 1 || tags[0] != "v1" {
		t.Errorf("remote.List = %q, %v; want [v1]", tags, err)
	}
	if err := remote.Delete(ref.Context().Digest(mustDigest(t, img).String()), opts...); err != nil {
		t.Fatalf("remote.Delete: %v", err)
	}
	if _, err := remote.Image(ref, opts...); err == nil {
		t.Error("remote.Image after delete: no error")
	}
}

func mustImage(t *testing.T, ref name.Reference, opts []remote.Option) ggcrv1.Image {
	t.Helper()
	img, err := remote.Image(ref, opts...)
	if err != nil {
		t.Fatalf("remote.Image(%s): %v", ref, err)
	}
	return img
}

func validateLayers(img ggcrv1.Image) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// TestClientIndex pushes a random index and pulls it and its images back.
func TestClientIndex(t *testing.T) {
	t.Parallel()
	ts := newServer(t)
	host, opts := ggcr(t, ts)
	idx, err := random.Index(1<<12, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	ref := mustRef(t, host+"/ggcr/index:multi")
	if err := remote.WriteIndex(ref, idx, opts...); err != nil {
		t.Fatalf("remote.WriteIndex: %v", err)
	}
	got, err := remote.Index(ref, opts...)
	if err != nil {
		t.Fatalf("remote.Index: %v", err)
	}
	if want, have := mustDigest(t, idx), mustDigest(t, got); want != have {
		t.Errorf("pulled index %s, pushed %s", have, want)
	}
	im, err := got.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 3 {
		t.Fatalf("%d manifests, want 3", len(im.Manifests))
	}
	for _, d := range im.Manifests {
		child, err := got.Image(d.Digest)
		if err != nil {
			t.Fatalf("child %s: %v", d.Digest, err)
		}
		if h := mustDigest(t, child); h != d.Digest {
			t.Errorf("child digest %s, want %s", h, d.Digest)
		}
		if err := validateLayers(child); err != nil {
			t.Errorf("child %s: %v", d.Digest, err)
		}
	}
	// By digest too.
	byDigest := mustRef(t, host+"/ggcr/index@"+mustDigest(t, idx).String())
	if _, err := remote.Index(byDigest, opts...); err != nil {
		t.Errorf("remote.Index by digest: %v", err)
	}
}

// TestClientReferrers pushes artifacts that refer to an image and lists
// them with remote.Referrers, without the tag fallback.
func TestClientReferrers(t *testing.T) {
	t.Parallel()
	ts := newServer(t)
	host, opts := ggcr(t, ts)
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	repo := mustRef(t, host+"/ggcr/refs:latest").Context()
	if err := remote.Write(repo.Tag("latest"), img, opts...); err != nil {
		t.Fatalf("remote.Write: %v", err)
	}
	subject, err := remote.Head(repo.Tag("latest"), opts...)
	if err != nil {
		t.Fatalf("remote.Head: %v", err)
	}
	arts := map[string]ggcrv1.Hash{}
	for _, at := range []string{"application/vnd.example.sbom", "application/vnd.example.sig"} {
		a := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
		a = mutate.ConfigMediaType(a, types.MediaType(at))
		a = mutate.Subject(a, *subject).(ggcrv1.Image)
		d := mustDigest(t, a)
		if err := remote.Write(repo.Digest(d.String()), a, opts...); err != nil {
			t.Fatalf("remote.Write %s: %v", at, err)
		}
		arts[at] = d
	}
	subjectRef := repo.Digest(subject.Digest.String())
	list, err := remote.Referrers(subjectRef, opts...)
	if err != nil {
		t.Fatalf("remote.Referrers: %v", err)
	}
	im, err := list.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]ggcrv1.Hash{}
	for _, d := range im.Manifests {
		got[d.ArtifactType] = d.Digest
	}
	if len(got) != len(arts) || got["application/vnd.example.sbom"] != arts["application/vnd.example.sbom"] ||
		got["application/vnd.example.sig"] != arts["application/vnd.example.sig"] {
		t.Errorf("referrers %v, want %v", got, arts)
	}

	filtered, err := remote.Referrers(subjectRef, append(opts, remote.WithFilter("artifactType", "application/vnd.example.sig"))...)
	if err != nil {
		t.Fatalf("remote.Referrers filtered: %v", err)
	}
	fm, err := filtered.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(fm.Manifests) != 1 || fm.Manifests[0].Digest != arts["application/vnd.example.sig"] {
		t.Errorf("filtered referrers %+v, want only the sig", fm.Manifests)
	}
}
