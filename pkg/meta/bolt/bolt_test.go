package bolt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/berthreg/berth/pkg/meta"
	"github.com/berthreg/berth/pkg/meta/metatest"
)

// openTemp opens a store in a fresh temporary directory, closed at cleanup.
func openTemp(tb testing.TB) (*Store, string) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "meta.db")
	s, err := Open(path)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s, path
}

func TestConformance(t *testing.T) {
	t.Parallel()
	metatest.Run(t, func(t *testing.T) meta.Store {
		s, _ := openTemp(t)
		return s
	})
}

func TestReopen(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "meta.db")
	s, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	m := meta.Manifest{Digest: "sha256:aa", MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 7}
	ref := meta.Manifest{Digest: "sha256:bb", MediaType: m.MediaType, Size: 8, Subject: m.Digest}
	if err := s.PutManifest(ctx, "a/b", m, []string{"latest"}, "v1"); err != nil {
		t.Fatalf("PutManifest: %v", err)
	}
	if err := s.PutManifest(ctx, "a/b", ref, nil, "v2"); err != nil {
		t.Fatalf("PutManifest(ref): %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s, err = Open(path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	got, err := s.Tag(ctx, "a/b", "latest")
	if err != nil || got.Digest != m.Digest || got.Size != m.Size {
		t.Errorf("Tag after reopen = %+v, %v; want %s", got, err, m.Digest)
	}
	refs, err := s.Referrers(ctx, "a/b", m.Digest)
	if err != nil || len(refs) != 1 || refs[0].Digest != ref.Digest {
		t.Errorf("Referrers after reopen = %+v, %v; want [%s]", refs, err, ref.Digest)
	}
	if v, err := s.Version(ctx, "a/b"); err != nil || v != "v2" {
		t.Errorf("Version after reopen = %q, %v; want v2", v, err)
	}
	if repos, err := s.Repos(ctx, "", -1); err != nil || len(repos) != 1 || repos[0] != "a/b" {
		t.Errorf("Repos after reopen = %q, %v; want [a/b]", repos, err)
	}
}

func TestFileMode(t *testing.T) {
	t.Parallel()
	_, path := openTemp(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		t.Errorf("file mode = %v, want no group/other access (0600)", perm)
	}
}

func TestSecondOpenFails(t *testing.T) {
	t.Parallel()
	s, path := openTemp(t)

	start := time.Now()
	s2, err := Open(path)
	elapsed := time.Since(start)
	if err == nil {
		_ = s2.Close()
		t.Fatal("second Open of a held file succeeded, want error")
	}
	if !errors.Is(err, berrors.ErrTimeout) {
		t.Errorf("second Open: err = %v, want bbolt timeout", err)
	}
	if elapsed > openTimeout+3*time.Second {
		t.Errorf("second Open took %v, want about %v", elapsed, openTimeout)
	}

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s3, err := Open(path)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	_ = s3.Close()
}

// TestUpsertMovesReferrer re-puts a manifest with another subject: the
// referrers index follows the record.
func TestUpsertMovesReferrer(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, _ := openTemp(t)
	m := meta.Manifest{Digest: "sha256:cc", MediaType: "x", Subject: "sha256:s1"}
	if err := s.PutManifest(ctx, "r", m, nil, "1"); err != nil {
		t.Fatalf("PutManifest: %v", err)
	}
	m.Subject = "sha256:s2"
	if err := s.PutManifest(ctx, "r", m, nil, "2"); err != nil {
		t.Fatalf("PutManifest: %v", err)
	}
	for subject, want := range map[string]int{"sha256:s1": 0, "sha256:s2": 1} {
		refs, err := s.Referrers(ctx, "r", subject)
		if err != nil || len(refs) != want {
			t.Errorf("Referrers(%s) = %+v, %v; want %d", subject, refs, err, want)
		}
	}
}

// TestDeleteCleansReferrerIndex checks DeleteManifest and a subject change
// leave no stale key in the referrers bucket (Referrers would hide them).
func TestDeleteCleansReferrerIndex(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, _ := openTemp(t)
	a := meta.Manifest{Digest: "sha256:ee", MediaType: "x", Subject: "sha256:s1"}
	b := meta.Manifest{Digest: "sha256:ff", MediaType: "x", Subject: "sha256:s1"}
	for _, m := range []meta.Manifest{a, b} {
		if err := s.PutManifest(ctx, "r", m, nil, "1"); err != nil {
			t.Fatalf("PutManifest: %v", err)
		}
	}
	if _, err := s.DeleteManifest(ctx, "r", a.Digest, "2"); err != nil {
		t.Fatalf("DeleteManifest: %v", err)
	}
	b.Subject = ""
	if err := s.PutManifest(ctx, "r", b, nil, "3"); err != nil {
		t.Fatalf("PutManifest: %v", err)
	}
	err := s.db.View(func(tx *bbolt.Tx) error {
		if k, _ := repoBucket(tx, "r").Bucket(bucketReferrers).Cursor().First(); k != nil {
			t.Errorf("referrers bucket still holds %q", k)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestEmptyNames checks empty names are rejected on write and absent on read.
func TestEmptyNames(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, _ := openTemp(t)
	m := meta.Manifest{Digest: "sha256:dd", MediaType: "x"}
	if err := s.PutManifest(ctx, "", m, nil, "1"); err == nil {
		t.Error("PutManifest with empty repository succeeded")
	}
	if err := s.PutManifest(ctx, "r", meta.Manifest{}, nil, "1"); err == nil {
		t.Error("PutManifest with empty digest succeeded")
	}
	if err := s.PutManifest(ctx, "r", m, []string{""}, "1"); err == nil {
		t.Error("PutManifest with empty tag succeeded")
	}
	if _, err := s.Version(ctx, "r"); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("failed puts created the repository: Version err = %v", err)
	}
	if _, err := s.Manifest(ctx, "", m.Digest); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("Manifest with empty repository: err = %v, want ErrNotFound", err)
	}
	if err := s.DeleteTag(ctx, "r", "", "1"); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("DeleteTag with empty tag: err = %v, want ErrNotFound", err)
	}
}

func BenchmarkPutManifest(b *testing.B) {
	s, _ := openTemp(b)
	ctx := b.Context()
	i := 0
	for b.Loop() {
		name := fmt.Sprintf("t%08d", i)
		m := meta.Manifest{Digest: "sha256:" + name, MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 1234}
		if err := s.PutManifest(ctx, "bench/repo", m, []string{name}, name); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkTag(b *testing.B) {
	s, _ := openTemp(b)
	ctx := b.Context()
	const n = 1000
	r := meta.Repo{Name: "bench/repo", Version: "v1", Tags: make(map[string]string, n)}
	for i := range n {
		name := fmt.Sprintf("t%04d", i)
		m := meta.Manifest{Digest: "sha256:" + name, MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 1234}
		r.Manifests = append(r.Manifests, m)
		r.Tags[name] = m.Digest
	}
	if err := s.ReplaceRepo(ctx, r); err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		if _, err := s.Tag(ctx, "bench/repo", fmt.Sprintf("t%04d", i%n)); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func TestBlobLocator(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if got, err := s.BlobRepos(ctx, "sha256:aa", -1); err != nil || len(got) != 0 {
		t.Fatalf("empty store: got %v, %v", got, err)
	}
	for _, repo := range []string{"b/x", "a", "a"} {
		if err := s.AddBlob(ctx, repo, "sha256:aa"); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddBlob(ctx, "c", "sha256:aab"); err != nil {
		t.Fatal(err)
	}
	got, err := s.BlobRepos(ctx, "sha256:aa", -1)
	if err != nil || strings.Join(got, ",") != "a,b/x" {
		t.Fatalf("got %v, %v; want [a b/x]", got, err)
	}
	if got, _ := s.BlobRepos(ctx, "sha256:aa", 1); len(got) != 1 {
		t.Fatalf("n=1 gave %v", got)
	}
}
