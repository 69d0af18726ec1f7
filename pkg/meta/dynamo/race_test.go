package dynamo

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthreg/berth/pkg/meta"
)

// TestTwoStoresConcurrentPuts: two Stores on the same tables (two cluster
// members) each put 100 manifests with distinct tags into one repository
// at once; no tag may be lost.
func TestTwoStoresConcurrentPuts(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	cfg := testConfig(server(t))
	stores := []*Store{open(t, cfg), open(t, cfg)}
	const repo, per = "shared/repo", 100
	var want []string
	written := map[string]bool{}
	var wg sync.WaitGroup
	for si, s := range stores {
		for i := range per {
			name := fmt.Sprintf("s%d-%03d", si, i)
			want = append(want, name)
			written[name] = true
			wg.Go(func() {
				if err := s.PutManifest(ctx, repo, image(name), []string{name}, name); err != nil {
					t.Errorf("PutManifest(%s): %v", name, err)
				}
			})
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	slices.Sort(want)
	for _, s := range stores {
		wantTags(t, s, repo, want...)
	}
	for _, name := range want {
		m, err := stores[0].Tag(ctx, repo, name)
		if err != nil || m.Digest != image(name).Digest {
			t.Errorf("Tag(%s) = %s, %v; want %s", name, m.Digest, err, image(name).Digest)
		}
	}
	v, err := stores[1].Version(ctx, repo)
	if err != nil || !written[strings.TrimPrefix(v, stalePrefix)] {
		t.Errorf("Version = %q, %v; want a written version, possibly marked stale", v, err)
	}
}

// TestTwoStoresTagMoves races, round after round, two stores moving the
// same tags between manifests while each deletes the manifest the other
// is tagging. Whatever the interleaving, no tag may be left naming a
// manifest that does not exist.
func TestTwoStoresTagMoves(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	cfg := testConfig(server(t))
	s1, s2 := open(t, cfg), open(t, cfg)
	const repo = "moving"
	if err := s1.PutManifest(ctx, repo, image("base"), []string{"latest", "stable"}, "v0"); err != nil {
		t.Fatal(err)
	}
	ignoreNotFound := func(err error) error {
		if errors.Is(err, meta.ErrNotFound) {
			return nil
		}
		return err
	}
	for round := range 30 {
		a, b := image(fmt.Sprintf("a-%d", round)), image(fmt.Sprintf("b-%d", round))
		steps := []func() error{
			func() error { return s1.PutManifest(ctx, repo, a, []string{"latest", "stable"}, "pa") },
			func() error { _, err := s2.DeleteManifest(ctx, repo, a.Digest, "da"); return ignoreNotFound(err) },
			func() error { return s2.PutManifest(ctx, repo, b, []string{"latest"}, "pb") },
			func() error { _, err := s1.DeleteManifest(ctx, repo, b.Digest, "db"); return ignoreNotFound(err) },
			func() error { return ignoreNotFound(s2.DeleteTag(ctx, repo, "stable", "dt")) },
		}
		var wg sync.WaitGroup
		for i, step := range steps {
			wg.Go(func() {
				if err := step(); err != nil {
					t.Errorf("round %d step %d: %v", round, i, err)
				}
			})
		}
		wg.Wait()
		noDangling(t, s1, repo, round)
		if t.Failed() {
			return
		}
	}
}

// noDangling checks that every tag of repo resolves.
func noDangling(t *testing.T, s *Store, repo string, round int) {
	t.Helper()
	tags, err := s.Tags(t.Context(), repo, "", -1)
	if err != nil {
		t.Fatalf("round %d: Tags: %v", round, err)
	}
	for _, tag := range tags {
		if _, err := s.Tag(t.Context(), repo, tag); err != nil {
			t.Errorf("round %d: tag %s dangles: %v", round, tag, err)
		}
	}
}

// TestNewWaitsForTables runs two New calls at once against a dynalite
// that keeps new tables CREATING for 500 ms (its default): both must
// succeed (one creates, the other meets ResourceInUseException) and
// return only once every table is ACTIVE.
func TestNewWaitsForTables(t *testing.T) {
	t.Parallel()
	server(t)
	slow, err := startDynalite()
	if err != nil {
		t.Fatalf("start dynalite: %v", err)
	}
	t.Cleanup(slow.stop)
	cfg := testConfig(slow)
	stores := make([]*Store, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range stores {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			stores[i], errs[i] = New(ctx, cfg, zerologNop)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("New #%d: %v", i, err)
		}
		t.Cleanup(func() { _ = stores[i].Close() })
	}
	for _, table := range []string{cfg.RepoMetaTable, cfg.ImageMetaTable, cfg.RepoBlobsTable, cfg.VersionTable} {
		if st := tableStatus(t, stores[0], table); st != "ACTIVE" {
			t.Errorf("table %s is %s after New, want ACTIVE", table, st)
		}
	}
	ctx := t.Context()
	if err := stores[0].PutManifest(ctx, "r", image("a"), []string{"x"}, "v1"); err != nil {
		t.Fatalf("PutManifest: %v", err)
	}
	if m, err := stores[1].Tag(ctx, "r", "x"); err != nil || m.Digest != image("a").Digest {
		t.Errorf("Tag via the other store = %s, %v", m.Digest, err)
	}
	// A third Store finds the tables and the layout version in place.
	open(t, cfg)
}

func BenchmarkPutManifest(b *testing.B) {
	s := newStore(b)
	ctx := b.Context()
	i := 0
	for b.Loop() {
		name := fmt.Sprintf("m%d", i)
		if err := s.PutManifest(ctx, "bench", image(name), []string{name}, name); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkTag(b *testing.B) {
	s := newStore(b)
	ctx := b.Context()
	if err := s.PutManifest(ctx, "bench", image("a"), []string{"latest"}, "v1"); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := s.Tag(ctx, "bench", "latest"); err != nil {
			b.Fatal(err)
		}
	}
}
