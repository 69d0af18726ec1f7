package dynamo

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/berthreg/berth/pkg/meta"
	"github.com/berthreg/berth/pkg/meta/metatest"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	metatest.Run(t, func(t *testing.T) meta.Store { return newStore(t) })
}

// TestConformanceSmallPages reruns the suite with every Query cut into
// pages of two items, so paging paths are taken everywhere.
func TestConformanceSmallPages(t *testing.T) {
	t.Parallel()
	metatest.Run(t, func(t *testing.T) meta.Store {
		s := newStore(t)
		s.pageLimit = 2
		return s
	})
}

// digestOf returns a well-formed digest derived from name.
func digestOf(name string) string {
	return fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(name)))
}

// image returns a manifest record named name.
func image(name string) meta.Manifest {
	return meta.Manifest{Digest: digestOf(name), MediaType: "application/vnd.oci.image.manifest.v1+json", Size: int64(len(name))}
}

func TestReposPagination(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newStore(t)
	s.pageLimit = 7
	var all []string
	for i := range 250 {
		all = append(all, fmt.Sprintf("org/repo-%03d", i))
	}
	parallel(t, 8, len(all), func(i int) error {
		return s.PutManifest(ctx, all[i], image("a"), []string{"latest"}, "v1")
	})

	got, err := s.Repos(ctx, "", -1)
	if err != nil {
		t.Fatalf("Repos: %v", err)
	}
	if !slices.Equal(got, all) {
		t.Fatalf("Repos = %d names, want %d in order", len(got), len(all))
	}
	// Page through with last, 40 at a time (each call crosses pages of 7).
	var paged []string
	for last := ""; ; {
		page, err := s.Repos(ctx, last, 40)
		if err != nil {
			t.Fatalf("Repos(%q, 40): %v", last, err)
		}
		if len(page) == 0 {
			break
		}
		paged = append(paged, page...)
		last = page[len(page)-1]
	}
	if !slices.Equal(paged, all) {
		t.Errorf("paging by 40 gave %d names, want %d in order", len(paged), len(all))
	}
	got, err = s.Repos(ctx, "org/repo-100", 3)
	if err != nil || !slices.Equal(got, all[101:104]) {
		t.Errorf("Repos(org/repo-100, 3) = %q, %v; want %q", got, err, all[101:104])
	}
}

func TestTagsAndReferrersAcrossPages(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newStore(t)
	s.pageLimit = 3
	subject := image("subject")
	var tags []string
	for i := range 60 {
		tags = append(tags, fmt.Sprintf("t%02d", i))
	}
	if err := s.PutManifest(ctx, "r", subject, tags, "v0"); err != nil {
		t.Fatalf("PutManifest: %v", err)
	}
	var want []string
	parallel(t, 8, 120, func(i int) error {
		m := image(fmt.Sprintf("ref-%03d", i))
		m.Subject = subject.Digest
		return s.PutManifest(ctx, "r", m, nil, fmt.Sprint(i))
	})
	for i := range 120 {
		want = append(want, digestOf(fmt.Sprintf("ref-%03d", i)))
	}
	slices.Sort(want)

	got, err := s.Tags(ctx, "r", "t09", 25)
	if err != nil || !slices.Equal(got, tags[10:35]) {
		t.Errorf("Tags(t09, 25) = %q, %v; want %q", got, err, tags[10:35])
	}
	refs, err := s.Referrers(ctx, "r", subject.Digest)
	if err != nil {
		t.Fatalf("Referrers: %v", err)
	}
	var gotRefs []string
	for _, m := range refs {
		gotRefs = append(gotRefs, m.Digest)
	}
	if !slices.Equal(gotRefs, want) {
		t.Errorf("Referrers: got %d, want %d ordered by digest", len(gotRefs), len(want))
	}
}

func TestBlobLocator(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newStore(t)
	d := digestOf("blob")
	for _, repo := range []string{"b", "a", "c/d", "a"} {
		if err := s.AddBlob(ctx, repo, d); err != nil {
			t.Fatalf("AddBlob(%s): %v", repo, err)
		}
	}
	for _, tc := range []struct {
		n    int
		want []string
	}{{-1, []string{"a", "b", "c/d"}}, {2, []string{"a", "b"}}, {0, []string{}}} {
		got, err := s.BlobRepos(ctx, d, tc.n)
		if err != nil || got == nil || !slices.Equal(got, tc.want) {
			t.Errorf("BlobRepos(%d) = %q, %v; want %q", tc.n, got, err, tc.want)
		}
	}
	if got, err := s.BlobRepos(ctx, digestOf("none"), -1); err != nil || got == nil || len(got) != 0 {
		t.Errorf("BlobRepos(unknown) = %q, %v; want []", got, err)
	}
}

// TestCrashLeavesVersionStale simulates a process dying mid-write: its
// token stays in busy, so later writes never record a version (Version
// stays what it was) until ReplaceRepo, the rebuild, takes over.
func TestCrashLeavesVersionStale(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newStore(t)
	if err := s.PutManifest(ctx, "r", image("a"), []string{"a"}, "v1"); err != nil {
		t.Fatal(err)
	}
	crashed, err := s.begin(ctx, "r", fCreate)
	if err != nil {
		t.Fatal(err)
	}
	_ = crashed // never ended
	if err := s.PutManifest(ctx, "r", image("b"), []string{"b"}, "v2"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteTag(ctx, "r", "a", "v3"); err != nil {
		t.Fatal(err)
	}
	wantVersion(t, s, "r", "v1")
	wantTags(t, s, "r", "b")

	if err := s.ReplaceRepo(ctx, meta.Repo{Name: "r", Version: "v9", Manifests: []meta.Manifest{image("c")},
		Tags: map[string]string{"c": image("c").Digest}}); err != nil {
		t.Fatal(err)
	}
	wantVersion(t, s, "r", "v9")
	wantTags(t, s, "r", "c")
	if err := s.end(ctx, crashed, "late", done); !errors.Is(err, errLost) {
		t.Errorf("end of a write whose generation was replaced: %v, want errLost", err)
	}
	if err := s.PutManifest(ctx, "r", image("d"), []string{"d"}, "v10"); err != nil {
		t.Fatal(err)
	}
	wantVersion(t, s, "r", "v10")
}

// TestOverlapAcrossStoresMarksStale: when writes of two processes overlap
// their order is unknown, so the version is marked stale; writes of one
// process are not.
func TestOverlapAcrossStoresMarksStale(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	cfg := testConfig(server(t))
	s1, s2 := open(t, cfg), open(t, cfg)
	if err := s1.PutManifest(ctx, "r", image("a"), []string{"a"}, "v1"); err != nil {
		t.Fatal(err)
	}
	mine, err := s1.begin(ctx, "r", fCreate) // s1's write in flight
	if err != nil {
		t.Fatal(err)
	}
	if err := s1.PutManifest(ctx, "r", image("b"), []string{"b"}, "v2"); err != nil {
		t.Fatal(err)
	}
	if err := s1.end(ctx, mine, "v3", done); err != nil {
		t.Fatal(err)
	}
	wantVersion(t, s1, "r", "v3") // same process: trusted

	theirs, err := s2.begin(ctx, "r", fCreate) // s2's write in flight
	if err != nil {
		t.Fatal(err)
	}
	if err := s1.PutManifest(ctx, "r", image("c"), []string{"c"}, "v4"); err != nil {
		t.Fatal(err)
	}
	wantVersion(t, s1, "r", "v3") // s2 still in flight
	if err := s2.end(ctx, theirs, "v5", done); err != nil {
		t.Fatal(err)
	}
	wantVersion(t, s1, "r", stalePrefix+"v5")
	if err := s1.PutManifest(ctx, "r", image("d"), nil, "v6"); err != nil {
		t.Fatal(err)
	}
	wantVersion(t, s1, "r", "v6")
}

// TestDeleteRepoDuringWrite: a write whose repository is deleted under it
// starts again and recreates the repository with only its own change.
func TestDeleteRepoDuringWrite(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newStore(t)
	if err := s.PutManifest(ctx, "r", image("a"), []string{"a"}, "v1"); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	err := s.write(ctx, "r", fCreate, "v2", func(tx txn) (bool, error) {
		once.Do(func() {
			if err := s.DeleteRepo(ctx, "r"); err != nil {
				t.Errorf("DeleteRepo: %v", err)
			}
		})
		return true, s.putManifest(ctx, tx, image("b"), []string{"b"})
	})
	if err != nil {
		t.Fatalf("write: %v", err)
	}
	wantTags(t, s, "r", "b")
	wantVersion(t, s, "r", stalePrefix+"v2")
	if repos, err := s.Repos(ctx, "", -1); err != nil || !slices.Equal(repos, []string{"r"}) {
		t.Errorf("Repos = %q, %v; want [r]", repos, err)
	}
}

func TestRefusedNames(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newStore(t)
	if err := s.PutManifest(ctx, "a#b", image("a"), nil, "v1"); err == nil || errors.Is(err, meta.ErrNotFound) {
		t.Errorf("PutManifest(a#b) = %v, want a refusal", err)
	}
	if _, err := s.Tags(ctx, "a#b", "", -1); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("Tags(a#b) = %v, want ErrNotFound", err)
	}
	if err := s.DeleteRepo(ctx, "a#b"); err != nil {
		t.Errorf("DeleteRepo(a#b) = %v, want nil", err)
	}
}

func TestNewFailsWithoutRegion(t *testing.T) {
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent")
	cfg := testConfig(server(t))
	cfg.Region = ""
	_, err := New(t.Context(), cfg, zerologNop)
	if err == nil || !strings.Contains(err.Error(), "region") {
		t.Errorf("New without region = %v, want a region error", err)
	}
}

// parallel runs fn(0..n-1) on workers goroutines, failing t on errors.
func parallel(t testing.TB, workers, n int, fn func(i int) error) {
	t.Helper()
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range next {
				if err := fn(i); err != nil {
					t.Errorf("item %d: %v", i, err)
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
}

func wantVersion(t *testing.T, s meta.Store, repo, want string) {
	t.Helper()
	if got, err := s.Version(t.Context(), repo); err != nil || got != want {
		t.Errorf("Version(%s) = %q, %v; want %q", repo, got, err, want)
	}
}

func wantTags(t *testing.T, s meta.Store, repo string, want ...string) {
	t.Helper()
	if got, err := s.Tags(t.Context(), repo, "", -1); err != nil || !slices.Equal(got, want) {
		t.Errorf("Tags(%s) = %q, %v; want %q", repo, got, err, want)
	}
}

// tableStatus returns the status of table as dynalite reports it.
func tableStatus(t *testing.T, s *Store, table string) string {
	t.Helper()
	out, err := s.db.DescribeTable(t.Context(), &dynamodb.DescribeTableInput{TableName: &table})
	if err != nil {
		t.Fatalf("DescribeTable(%s): %v", table, err)
	}
	return string(out.Table.TableStatus)
}

// TestNewAgainstASilentServer: an endpoint that accepts connections and
// never answers makes requests fail after ResponseTimeout (and retries)
// instead of hanging.
func TestNewAgainstASilentServer(t *testing.T) {
	addr := silentServer(t)
	cfg := Config{Endpoint: "http://" + addr, Region: "us-east-1", AccessKey: "k", SecretKey: "s",
		ResponseTimeout: 100 * time.Millisecond}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute) // a backstop, far above the retries
	defer cancel()
	_, err := New(ctx, cfg, zerologNop)
	if err == nil || ctx.Err() != nil {
		t.Fatalf("New against a silent server = %v (context %v); want a timeout of its own", err, ctx.Err())
	}
	t.Logf("failed as expected: %v", err)
}

// silentServer accepts connections, reads what comes, and never answers.
func silentServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go func() { _, _ = io.Copy(io.Discard, c) }()
		}
	}()
	return ln.Addr().String()
}
