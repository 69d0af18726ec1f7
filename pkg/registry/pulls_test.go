package registry

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/meta/bolt"
)

// failingPulls is a bolt store whose RecordPulls fails for the repositories
// in fail; during is called inside a failing write (a pull noted while a
// flush is in progress).
type failingPulls struct {
	*bolt.Store
	mu     sync.Mutex
	fail   map[string]bool
	during func(repo string)
}

func (f *failingPulls) RecordPulls(ctx context.Context, repo string, pulls map[string]time.Time) error {
	f.mu.Lock()
	fail, during := f.fail[repo], f.during
	f.mu.Unlock()
	if fail {
		if during != nil {
			during(repo)
		}
		return errors.New("transient failure")
	}
	return f.Store.RecordPulls(ctx, repo, pulls)
}

func (f *failingPulls) setFail(repos ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = map[string]bool{}
	for _, r := range repos {
		f.fail[r] = true
	}
}

func newFailingPulls(t *testing.T) (*Registry, *failingPulls) {
	t.Helper()
	e := newEnv(t)
	fp := &failingPulls{Store: e.md}
	return New(e.store, fp, zerolog.Nop()), fp
}

// recorded returns the pull times metadata holds for repo.
func recorded(t *testing.T, fp *failingPulls, repo string) map[string]time.Time {
	t.Helper()
	got, err := fp.Store.Pulls(t.Context(), repo)
	if err != nil {
		t.Fatalf("Pulls(%s): %v", repo, err)
	}
	return got
}

var (
	pullA = digest.FromString("a").String()
	pullB = digest.FromString("b").String()
	pullC = digest.FromString("c").String()
)

// A failed write keeps that repository's pulls for the next flush, and
// the other repositories are still written.
func TestFlushPullsKeepsFailedRepos(t *testing.T) {
	reg, fp := newFailingPulls(t)
	repos := []string{"r1", "r2", "r3", "r4"}
	for _, repo := range repos {
		reg.NotePull(repo, pullA)
	}
	fp.setFail("r2")
	if err := reg.FlushPulls(t.Context()); err == nil {
		t.Fatal("FlushPulls with a failing repository: no error")
	}
	for _, repo := range repos {
		_, ok := recorded(t, fp, repo)[pullA]
		if want := repo != "r2"; ok != want {
			t.Errorf("after failed flush, %s recorded = %v, want %v", repo, ok, want)
		}
	}
	fp.setFail()
	if err := reg.FlushPulls(t.Context()); err != nil {
		t.Fatalf("second FlushPulls: %v", err)
	}
	for _, repo := range repos {
		if _, ok := recorded(t, fp, repo)[pullA]; !ok {
			t.Errorf("after second flush, pull of %s not recorded", repo)
		}
	}
}

// A flush with a cancelled context (shutdown) loses nothing: a later flush
// with a live context writes every pull.
func TestFlushPullsCancelled(t *testing.T) {
	reg, fp := newFailingPulls(t)
	repos := []string{"r1", "r2", "r3"}
	for _, repo := range repos {
		reg.NotePull(repo, pullA)
		reg.NotePull(repo, pullB)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := reg.FlushPulls(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("FlushPulls(cancelled) = %v, want context.Canceled", err)
	}
	if err := reg.FlushPulls(t.Context()); err != nil {
		t.Fatalf("second FlushPulls: %v", err)
	}
	for _, repo := range repos {
		got := recorded(t, fp, repo)
		if len(got) != 2 {
			t.Errorf("%s: recorded %v, want pulls of %s and %s", repo, got, pullA, pullB)
		}
	}
}

// Pulls put back after a failure merge with pulls noted meanwhile, keeping
// the later time of each digest.
func TestFlushPullsRequeueMerges(t *testing.T) {
	reg, fp := newFailingPulls(t)
	reg.NotePull("r", pullA)
	reg.NotePull("r", pullB)
	first := reg.pulls.m["r"][pullA]
	fp.setFail("r")
	var during time.Time
	fp.during = func(repo string) {
		time.Sleep(time.Millisecond) // a later time even on coarse clocks
		reg.NotePull(repo, pullA)
		reg.NotePull(repo, pullC)
		reg.pulls.mu.Lock()
		during = reg.pulls.m[repo][pullA]
		reg.pulls.mu.Unlock()
	}
	if err := reg.FlushPulls(t.Context()); err == nil {
		t.Fatal("FlushPulls: no error")
	}
	if !during.After(first) {
		t.Fatalf("pull noted during the flush at %v, not after %v", during, first)
	}
	pending := reg.pulls.m["r"]
	if len(pending) != 3 || !pending[pullA].Equal(during) {
		t.Fatalf("pending after failed flush = %v, want %s at %v, %s and %s", pending, pullA, during, pullB, pullC)
	}
	fp.setFail()
	if err := reg.FlushPulls(t.Context()); err != nil {
		t.Fatalf("second FlushPulls: %v", err)
	}
	got := recorded(t, fp, "r")
	if len(got) != 3 || !got[pullA].Equal(during) {
		t.Errorf("recorded %v, want %s at %v, %s and %s", got, pullA, during, pullB, pullC)
	}
	if len(reg.pulls.m) != 0 {
		t.Errorf("pending after successful flush = %v", reg.pulls.m)
	}
}
