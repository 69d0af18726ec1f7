package storagetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/berthreg/berth/pkg/storage"
)

func testIndexUnknown(t *testing.T, d storage.Driver) {
	_, _, err := d.Index(context.Background(), "nothing/here")
	wantErr(t, "Index", err, storage.ErrRepoUnknown)
}

func testPutIndexCAS(t *testing.T, d storage.Driver) {
	ctx := context.Background()
	v1Data := []byte(`{"schemaVersion":2,"manifests":[]}`)
	if err := d.PutIndex(ctx, "r", v1Data, "stale"); !errors.Is(err, storage.ErrIndexConflict) {
		t.Fatalf("PutIndex of a new repo expecting a version: %v, want ErrIndexConflict", err)
	}
	if err := d.PutIndex(ctx, "r", v1Data, ""); err != nil {
		t.Fatalf("PutIndex new: %v", err)
	}
	err := d.PutIndex(ctx, "r", []byte(`{}`), "")
	wantErr(t, "second PutIndex expecting none", err, storage.ErrIndexConflict)

	data, v1, err := d.Index(ctx, "r")
	if err != nil || string(data) != string(v1Data) || v1 == "" {
		t.Fatalf("Index = %q, %q, %v", data, v1, err)
	}
	v2Data := []byte(`{"schemaVersion":2,"manifests":[{}]}`)
	if err := d.PutIndex(ctx, "r", v2Data, v1); err != nil {
		t.Fatalf("PutIndex at v1: %v", err)
	}
	err = d.PutIndex(ctx, "r", []byte(`{}`), v1)
	wantErr(t, "PutIndex at stale v1", err, storage.ErrIndexConflict)
	data, v2, err := d.Index(ctx, "r")
	if err != nil || string(data) != string(v2Data) || v2 == v1 {
		t.Fatalf("Index = %q, %q, %v; want v2 data, version != %q", data, v2, err, v1)
	}
}

func testPutIndexConcurrent(t *testing.T, d storage.Driver) {
	ctx := context.Background()
	if err := d.PutIndex(ctx, "r", []byte(`{"n":0}`), ""); err != nil {
		t.Fatal(err)
	}
	for round := 1; round <= 5; round++ {
		_, v, err := d.Index(ctx, "r")
		if err != nil {
			t.Fatal(err)
		}
		const n = 8
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				errs[i] = d.PutIndex(ctx, "r", fmt.Appendf(nil, `{"n":%d,"i":%d}`, round, i), v)
			})
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, storage.ErrIndexConflict):
				t.Fatalf("round %d: PutIndex: %v", round, err)
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d PutIndex calls won, want 1", round, won)
		}
	}
}

func testRepos(t *testing.T, d storage.Driver) {
	ctx := context.Background()
	want := []string{"a", "a/b", "c/d/e", "c1"}
	for _, repo := range want {
		if err := d.PutIndex(ctx, repo, []byte(`{}`), ""); err != nil {
			t.Fatal(err)
		}
		mustPut(t, d, repo, []byte("blob of "+repo))
	}
	mustPut(t, d, "no/index", []byte("blob without index"))
	u := mustNewUpload(t, d, "pending")
	mustAppend(t, u, []byte("upload without index"))

	var got []string
	if err := d.Repos(ctx, func(repo string) error {
		got = append(got, repo)
		return nil
	}); err != nil {
		t.Fatalf("Repos: %v", err)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("Repos = %q, want %q", got, want)
	}

	stop := errors.New("stop")
	calls := 0
	err := d.Repos(ctx, func(string) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("Repos with failing fn = %v after %d calls, want stop after 1", err, calls)
	}
}
