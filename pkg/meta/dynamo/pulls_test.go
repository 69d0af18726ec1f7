package dynamo

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/berthreg/berth/pkg/meta"
)

// wantPulls checks Pulls(repo) against want, compared at the stored
// (millisecond) precision.
func wantPulls(t *testing.T, s meta.PullRecorder, repo string, want map[string]time.Time) {
	t.Helper()
	got, err := s.Pulls(t.Context(), repo)
	if err != nil {
		t.Fatalf("Pulls(%s): %v", repo, err)
	}
	if got == nil {
		t.Fatalf("Pulls(%s) = nil, want a map", repo)
	}
	if len(got) != len(want) {
		t.Errorf("Pulls(%s) has %d digests %v, want %d %v", repo, len(got), slices.Sorted(maps.Keys(got)), len(want), slices.Sorted(maps.Keys(want)))
	}
	for d, w := range want {
		g, ok := got[d]
		if !ok {
			t.Errorf("Pulls(%s)[%s] missing", repo, d)
			continue
		}
		if !g.Equal(w.Truncate(time.Millisecond)) {
			t.Errorf("Pulls(%s)[%s] = %s, want %s", repo, d, g.Format(time.RFC3339Nano), w.Truncate(time.Millisecond).Format(time.RFC3339Nano))
		}
	}
}

func TestPullsRecordAndKeepLatest(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newStore(t)
	base := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
	a, b, c := digestOf("a"), digestOf("b"), digestOf("c")

	wantPulls(t, s, "lib/app", map[string]time.Time{})

	if err := s.RecordPulls(ctx, "lib/app", map[string]time.Time{a: base, b: base.Add(time.Minute)}); err != nil {
		t.Fatalf("RecordPulls: %v", err)
	}
	wantPulls(t, s, "lib/app", map[string]time.Time{a: base, b: base.Add(time.Minute)})

	// An older time never replaces a newer one; a newer one does; a new
	// digest is added; the equal time is a no-op.
	err := s.RecordPulls(ctx, "lib/app", map[string]time.Time{
		a: base.Add(time.Hour), b: base, c: base.Add(2 * time.Second),
	})
	if err != nil {
		t.Fatalf("RecordPulls (second batch): %v", err)
	}
	if err := s.RecordPulls(ctx, "lib/app", map[string]time.Time{c: base.Add(2 * time.Second)}); err != nil {
		t.Fatalf("RecordPulls (same time): %v", err)
	}
	wantPulls(t, s, "lib/app", map[string]time.Time{a: base.Add(time.Hour), b: base.Add(time.Minute), c: base.Add(2 * time.Second)})

	// Repositories are separate, including one whose name is a prefix.
	if err := s.RecordPulls(ctx, "lib/app2", map[string]time.Time{a: base}); err != nil {
		t.Fatalf("RecordPulls(lib/app2): %v", err)
	}
	wantPulls(t, s, "lib/app2", map[string]time.Time{a: base})
	wantPulls(t, s, "lib", map[string]time.Time{})

	// An empty batch is fine.
	if err := s.RecordPulls(ctx, "lib/app", nil); err != nil {
		t.Errorf("RecordPulls(nil): %v", err)
	}
}

// TestPullsBesideBlobHints checks that pull items and blob location hints
// share the RepoBlobs table without seeing each other.
func TestPullsBesideBlobHints(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newStore(t)
	d := digestOf("layer")
	now := time.Now()
	if err := s.AddBlob(ctx, "lib/app", d); err != nil {
		t.Fatalf("AddBlob: %v", err)
	}
	if err := s.RecordPulls(ctx, "lib/app", map[string]time.Time{d: now}); err != nil {
		t.Fatalf("RecordPulls: %v", err)
	}
	repos, err := s.BlobRepos(ctx, d, -1)
	if err != nil || !slices.Equal(repos, []string{"lib/app"}) {
		t.Errorf("BlobRepos = %q, %v; want [lib/app]", repos, err)
	}
	wantPulls(t, s, "lib/app", map[string]time.Time{d: now})
}

func TestPullsPaginated(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newStore(t)
	s.pageLimit = 3
	base := time.Now().Add(-time.Hour)
	want := map[string]time.Time{}
	for i := range 40 {
		want[digestOf(fmt.Sprint(i))] = base.Add(time.Duration(i) * time.Second)
	}
	if err := s.RecordPulls(ctx, "org/many", want); err != nil {
		t.Fatalf("RecordPulls: %v", err)
	}
	wantPulls(t, s, "org/many", want)
}

// TestPullsConcurrentRecorders has two Stores (two members) record
// interleaved times for the same digests: the latest always survives.
func TestPullsConcurrentRecorders(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	cfg := testConfig(server(t))
	s1, s2 := open(t, cfg), open(t, cfg)
	base := time.Now().Add(-time.Hour)
	digests := []string{digestOf("x"), digestOf("y"), digestOf("z")}
	const rounds = 20
	var wg sync.WaitGroup
	errs := make(chan error, 2*rounds)
	for w, s := range []*Store{s1, s2} {
		wg.Go(func() {
			// Writer w records the times base+w, base+2+w, … so the two
			// interleave, in a shuffled order.
			for _, i := range permute(rounds, w) {
				at := base.Add(time.Duration(2*i+w) * time.Second)
				batch := map[string]time.Time{}
				for _, d := range digests {
					batch[d] = at
				}
				if err := s.RecordPulls(ctx, "team/svc", batch); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("RecordPulls: %v", err)
	}
	latest := base.Add(time.Duration(2*(rounds-1)+1) * time.Second)
	want := map[string]time.Time{}
	for _, d := range digests {
		want[d] = latest
	}
	wantPulls(t, s1, "team/svc", want)
	wantPulls(t, s2, "team/svc", want)
}

// permute returns 0..n-1 in an order that differs by seed (a fixed
// permutation, so failures reproduce).
func permute(n, seed int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = (i*7 + seed*3) % n
	}
	return out
}

func TestPullsRefusesBadInput(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	if err := s.RecordPulls(t.Context(), "bad#name", map[string]time.Time{digestOf("a"): time.Now()}); err == nil {
		t.Error("RecordPulls(bad#name) succeeded, want an error")
	}
	if _, err := s.Pulls(t.Context(), ""); err == nil {
		t.Error("Pulls(\"\") succeeded, want an error")
	}
}
