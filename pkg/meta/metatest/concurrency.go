package metatest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/berthreg/berth/pkg/meta"
)

// Shape of testConcurrentPuts.
const (
	writers       = 8
	putsPerWriter = 50
)

// testConcurrentPuts runs writers goroutines each putting putsPerWriter
// manifests with distinct tags into one repository, alongside a reader;
// every tag must be present afterwards.
func testConcurrentPuts(t *testing.T, s meta.Store) {
	ctx := t.Context()
	const repo = "busy/repo"
	put(t, s, repo, image("seed"), "seed")

	done := make(chan struct{})
	var readers sync.WaitGroup
	readers.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			tags, err := s.Tags(ctx, repo, "", -1)
			if err != nil {
				t.Errorf("concurrent Tags: %v", err)
				return
			}
			if len(tags) > 0 {
				if _, err := s.Tag(ctx, repo, tags[len(tags)-1]); err != nil {
					t.Errorf("concurrent Tag(%s): %v", tags[len(tags)-1], err)
					return
				}
			}
		}
	})

	var wg sync.WaitGroup
	versions := make(map[string]bool)
	var want []string
	for w := range writers {
		for i := range putsPerWriter {
			name := fmt.Sprintf("w%d-%03d", w, i)
			versions[name] = true
			want = append(want, name)
		}
		wg.Go(func() {
			for i := range putsPerWriter {
				name := fmt.Sprintf("w%d-%03d", w, i)
				if err := s.PutManifest(ctx, repo, image(name), []string{name}, name); err != nil {
					t.Errorf("PutManifest(%s): %v", name, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(done)
	readers.Wait()
	if t.Failed() {
		return
	}

	slices.Sort(want)
	wantTags(t, s, repo, want...)
	for _, name := range want {
		wantTag(t, s, repo, name, image(name))
	}
	v, err := s.Version(ctx, repo)
	if err != nil {
		t.Fatalf("Version: %v", err)
	}
	if !versions[v] {
		t.Errorf("Version = %q, want one of the written versions", v)
	}
}

// testCanceledContext calls every method with a done context: each must
// fail with the context's error and change nothing.
func testCanceledContext(t *testing.T, s meta.Store) {
	a := image("a")
	put(t, s, "r", a, "1", "x")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()

	calls := []struct {
		name string
		call func() error
	}{
		{"PutManifest", func() error { return s.PutManifest(ctx, "new", image("b"), []string{"y"}, "2") }},
		{"DeleteManifest", func() error { _, err := s.DeleteManifest(ctx, "r", a.Digest, "2"); return err }},
		{"DeleteTag", func() error { return s.DeleteTag(ctx, "r", "x", "2") }},
		{"Manifest", func() error { _, err := s.Manifest(ctx, "r", a.Digest); return err }},
		{"Tag", func() error { _, err := s.Tag(ctx, "r", "x"); return err }},
		{"Tags", func() error { _, err := s.Tags(ctx, "r", "", -1); return err }},
		{"Repos", func() error { _, err := s.Repos(ctx, "", -1); return err }},
		{"Referrers", func() error { _, err := s.Referrers(ctx, "r", a.Digest); return err }},
		{"Version", func() error { _, err := s.Version(ctx, "r"); return err }},
		{"ReplaceRepo", func() error { return s.ReplaceRepo(ctx, meta.Repo{Name: "r", Version: "2"}) }},
		{"DeleteRepo", func() error { return s.DeleteRepo(ctx, "r") }},
	}
	for _, c := range calls {
		if err := c.call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with cancelled context: err = %v, want context.Canceled", c.name, err)
		}
	}

	repos, err := s.Repos(t.Context(), "", -1)
	if err != nil {
		t.Fatalf("Repos: %v", err)
	}
	wantList(t, "Repos", repos, []string{"r"})
	wantTag(t, s, "r", "x", a)
	wantVersion(t, s, "r", "1")
}
