package sync

import (
	"context"
	"net/http"
	"slices"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/berthreg/berth/pkg/config"
)

func TestPeriodicRulesAndOwnership(t *testing.T) {
	up := newUpstream(t, true)
	want := map[string]string{} // local repo:tag -> digest
	push := func(ref, local string) {
		d := up.push(t, ref, randomImage(t, 64, 1)).String()
		if local != "" {
			want[local] = d
		}
	}
	push("library/alpine:1.0", "mirror/alpine:1.0")
	push("library/alpine:1.1", "mirror/alpine:1.1")
	push("library/alpine:2.0-rc1", "")
	push("library/alpine:latest", "")
	push("library/busybox:1.0", "") // owned by another member
	push("tools/a/b:v1.2.3", "tools/a/b:v1.2.3")
	push("tools/a/b:dev", "")
	push("other/x:1.0", "") // no rule
	push("pinned:7", "pinned/pinned:7")

	rc := regConfig(up.URL)
	rc.OnDemand = false
	rc.PollInterval = config.Duration(time.Hour)
	rc.Content = []config.SyncContent{
		{Prefix: "library/**", Destination: "/mirror", StripPrefix: true,
			Tags: &config.SyncTags{Regex: ptr(`^[0-9]`), ExcludeRegex: ptr(`-rc`)}},
		{Prefix: "tools/**", Tags: &config.SyncTags{Semver: ptr(true)}},
		{Prefix: "pinned", Destination: "pinned"},
	}
	var mu gosync.Mutex
	var asked []string
	e := newSyncEnv(t, []config.SyncRegistry{rc}, func(d *Deps) {
		d.Owns = func(repo string) bool {
			mu.Lock()
			defer mu.Unlock()
			asked = append(asked, repo)
			return repo != "mirror/busybox"
		}
	})
	ctx := t.Context()
	e.s.SyncOnce(ctx)

	got := map[string]string{}
	repos, err := e.reg.Catalog(ctx, "", -1)
	if err != nil {
		t.Fatal(err)
	}
	for _, repo := range repos {
		tags, _ := e.reg.Tags(ctx, repo, "", -1)
		for _, tag := range tags {
			got[repo+":"+tag] = e.digest(t, repo, tag)
		}
	}
	if len(got) != len(want) {
		t.Errorf("synced %v\nwant %v", got, want)
	}
	for k, d := range want {
		if got[k] != d {
			t.Errorf("%s = %q, want %s", k, got[k], d)
		}
	}
	slices.Sort(asked)
	if want := []string{"mirror/alpine", "mirror/busybox", "pinned/pinned", "tools/a/b"}; !slices.Equal(asked, want) {
		t.Errorf("ownership asked for %v, want the local names %v", asked, want)
	}
	if n := up.count("GET", "/v2/library/busybox/tags/list"); n != 0 {
		t.Errorf("listed tags of a repository another member owns (%d)", n)
	}
	if got := counter(t, e.s.m.images, up.Host, modePeriodic); got != 4 {
		t.Errorf("images_total{periodic} = %v, want 4", got)
	}

	// A second pass copies nothing: local digests match.
	fetches := counter(t, e.s.m.fetches, up.Host)
	e.s.SyncOnce(ctx)
	if got := counter(t, e.s.m.fetches, up.Host); got != fetches {
		t.Errorf("second pass fetched %v images", got-fetches)
	}
}

func TestPeriodicLiteralWithoutCatalog(t *testing.T) {
	up := newUpstream(t, true)
	want := up.push(t, "org/app:1", randomImage(t, 64, 1))
	up.setFail(func(r *http.Request) (int, bool) {
		return http.StatusNotFound, strings.HasSuffix(r.URL.Path, "/_catalog") // like Docker Hub
	})
	rc := regConfig(up.URL)
	rc.PollInterval = config.Duration(time.Hour)
	rc.Content = []config.SyncContent{{Prefix: "org/app"}}
	e := newSyncEnv(t, []config.SyncRegistry{rc}, nil)
	e.s.SyncOnce(t.Context())
	if got := e.digest(t, "org/app", "1"); got != want.String() {
		t.Errorf("org/app:1 = %q, want %s", got, want)
	}
	if n := up.total("/_catalog"); n != 0 {
		t.Errorf("catalog listed %d times for a literal prefix", n)
	}
}

func TestRunCatchesUpAfterOutage(t *testing.T) {
	up := newUpstream(t, true)
	first := up.push(t, "app/one:1", randomImage(t, 64, 1))
	up.setFail(func(r *http.Request) (int, bool) { return http.StatusServiceUnavailable, true })
	rc := regConfig(up.URL)
	rc.PollInterval = config.Duration(50 * time.Millisecond)
	rc.Content = []config.SyncContent{{Prefix: "app/*"}}
	e := newSyncEnv(t, []config.SyncRegistry{rc}, nil)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { e.s.Run(ctx); close(done) }()

	waitFor(t, "an upstream error", func() bool { return counter(t, e.s.m.errors, up.Host, kindServer) > 0 })
	if e.digest(t, "app/one", "1") != "" {
		t.Fatal("synced while upstream was down")
	}
	up.setFail(nil)
	second := up.push(t, "app/two:1", randomImage(t, 64, 1))
	waitFor(t, "catch-up", func() bool {
		return e.digest(t, "app/one", "1") == first.String() && e.digest(t, "app/two", "1") == second.String()
	})
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
