package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"
)

// TestSync runs the sync extension between real processes: the upstream
// is a single-node Berth or `crane registry serve` (a third-party
// registry), the downstream a single-node Berth with extensions.sync.
func TestSync(t *testing.T) {
	t.Run("OnDemand", func(t *testing.T) {
		for _, kind := range []string{"berth", "crane"} {
			t.Run(kind, func(t *testing.T) { testSyncOnDemand(t, kind) })
		}
	})
	t.Run("Periodic", testSyncPeriodic)
	t.Run("UpstreamDown", testSyncUpstreamDown)
}

// syncExtensions is an extensions section with sync over registries.
func syncExtensions(registries ...map[string]any) map[string]any {
	return map[string]any{"sync": map[string]any{"registries": registries}}
}

// testSyncOnDemand pulls through the downstream images only the upstream
// has: digests are upstream's, an index comes with every platform, and 20
// concurrent pulls of one missing image cost one upstream fetch.
func testSyncOnDemand(t *testing.T, kind string) {
	var up *syncProc
	if kind == "crane" {
		up = syncStartCrane(t)
	} else {
		up = syncStartBerth(t, "upstream", nil)
	}
	img, err := random.Image(4096, 3)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := random.Index(512, 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	busy, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	imgDigest := syncPush(t, up.Host, "library/alpine:3.20", img)
	idxDigest := syncPush(t, up.Host, "multi/arch:v1", idx)
	busyDigest := syncPush(t, up.Host, "busy/box:1", busy)

	down := syncStartBerth(t, "downstream", syncExtensions(map[string]any{
		"urls": []string{up.URL}, "onDemand": true, "maxRetries": 2, "retryDelay": "200ms",
	}))
	crane := tool(t, "crane")

	// A real client pulls through the downstream.
	if got := strings.TrimSpace(runStdout(t, crane, "digest", "--insecure", down.Host+"/library/alpine:3.20")); got != imgDigest {
		t.Errorf("crane digest through downstream = %s, upstream pushed %s", got, imgDigest)
	}
	if got := strings.TrimSpace(runStdout(t, crane, "digest", "--insecure", up.Host+"/library/alpine:3.20")); got != imgDigest {
		t.Errorf("crane digest on upstream = %s, want %s", got, imgDigest)
	}
	dir := filepath.Join(t.TempDir(), "pulled")
	run(t, crane, "pull", "--insecure", "--format", "oci", down.Host+"/library/alpine:3.20", dir)
	layers, _ := img.Layers()
	for _, l := range layers {
		d, _ := l.Digest()
		if _, err := os.Stat(filepath.Join(dir, "blobs", d.Algorithm, d.Hex)); err != nil {
			t.Errorf("pulled image lacks layer %s: %v", d, err)
		}
	}
	if got := strings.TrimSpace(runStdout(t, crane, "digest", "--insecure", down.Host+"/multi/arch:v1")); got != idxDigest {
		t.Errorf("index digest through downstream = %s, want %s", got, idxDigest)
	}

	// 20 concurrent pulls of a missing image: one upstream fetch.
	fetches := `registry="` + up.Host + `"`
	before := syncMetric(t, down, "berth_sync_upstream_fetches_total", fetches)
	var wg sync.WaitGroup
	results := make([]syncResp, 20)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = syncGet(http.MethodGet, down.URL+"/v2/busy/box/manifests/1")
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.Err != nil || r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != busyDigest {
			t.Errorf("pull %d: %d %v digest %q body %.200s", i, r.Status, r.Err, r.Header.Get("Docker-Content-Digest"), r.Body)
		}
	}
	if after := syncMetric(t, down, "berth_sync_upstream_fetches_total", fetches); after-before != 1 {
		t.Errorf("berth_sync_upstream_fetches_total went %v -> %v, want +1 for 20 concurrent pulls", before, after)
	}
	// Clients get the manifest while the copy goes on; it ends shortly.
	waitUntil(t, 30*time.Second, "three on-demand copies to end", func() bool {
		return syncMetric(t, down, "berth_sync_images_total", `mode="ondemand"`) >= 3
	})
	if n := syncMetric(t, down, "berth_sync_images_total", `mode="ondemand"`); n != 3 {
		t.Errorf("berth_sync_images_total{mode=ondemand} = %v, want 3", n)
	}

	// With upstream gone, everything synced is served locally: the index's
	// platform manifests came with it.
	up.Kill()
	im, _ := idx.IndexManifest()
	for _, c := range im.Manifests {
		if r := syncGet(http.MethodHead, down.URL+"/v2/multi/arch/manifests/"+c.Digest.String()); r.Status != http.StatusOK {
			t.Errorf("platform manifest %s after upstream stopped: %d", c.Digest, r.Status)
		}
	}
	if r := syncGet(http.MethodGet, down.URL+"/v2/library/alpine/manifests/3.20"); r.Status != http.StatusOK {
		t.Errorf("synced tag after upstream stopped: %d %s", r.Status, r.Body)
	}
}

// testSyncPeriodic: after one interval, the repositories the content rules
// select exist under their local names with upstream's digests, and
// nothing else; a tag pushed later arrives at a following interval.
func testSyncPeriodic(t *testing.T) {
	up := syncStartBerth(t, "upstream", nil)
	want := map[string]string{} // local repo:tag -> digest
	push := func(ref, local string) {
		img, err := random.Image(512, 1)
		if err != nil {
			t.Fatal(err)
		}
		d := syncPush(t, up.Host, ref, img)
		if local != "" {
			want[local] = d
		}
	}
	push("library/alpine:1.0", "mirror/alpine:1.0")
	push("library/alpine:1.1", "mirror/alpine:1.1")
	push("library/alpine:edge", "") // tag regex
	push("library/busybox:1.36", "mirror/busybox:1.36")
	push("tools/lint:v1.2.3", "tools/lint:v1.2.3")
	push("tools/lint:dev", "")      // not semver
	push("tools/deep/x:v1.0.0", "") // "*" is one segment
	push("other/app:1.0", "")       // no rule

	down := syncStartBerth(t, "downstream", syncExtensions(map[string]any{
		"urls": []string{up.URL}, "pollInterval": "2s", "maxRetries": 1, "retryDelay": "100ms",
		"content": []map[string]any{
			{"prefix": "library/**", "destination": "/mirror", "stripPrefix": true, "tags": map[string]any{"regex": "^[0-9]"}},
			{"prefix": "tools/*", "tags": map[string]any{"semver": true}},
		},
	}))
	digestOf := func(repoTag string) string {
		repo, tag, _ := strings.Cut(repoTag, ":")
		r := syncGet(http.MethodHead, down.URL+"/v2/"+repo+"/manifests/"+tag)
		if r.Status != http.StatusOK {
			return ""
		}
		return r.Header.Get("Docker-Content-Digest")
	}
	waitUntil(t, 20*time.Second, "the first periodic sync", func() bool {
		for k, d := range want {
			if digestOf(k) != d {
				return false
			}
		}
		return true
	})
	got := map[string]bool{}
	for _, repo := range syncList(t, down.URL+"/v2/_catalog", "repositories") {
		for _, tag := range syncList(t, down.URL+"/v2/"+repo+"/tags/list", "tags") {
			got[repo+":"+tag] = true
		}
	}
	var extra []string
	for k := range got {
		if _, ok := want[k]; !ok {
			extra = append(extra, k)
		}
	}
	slices.Sort(extra)
	if len(extra) > 0 {
		t.Errorf("synced beyond the content rules: %v", extra)
	}

	// A new matching tag arrives at a following interval.
	push("library/alpine:1.2", "mirror/alpine:1.2")
	waitUntil(t, 15*time.Second, "mirror/alpine:1.2", func() bool { return digestOf("mirror/alpine:1.2") == want["mirror/alpine:1.2"] })
	if n := syncMetric(t, down, "berth_sync_images_total", `mode="periodic"`); n != float64(len(want)) {
		t.Errorf("berth_sync_images_total{mode=periodic} = %v, want %d (unchanged tags are not copied again)", n, len(want))
	}
}

// testSyncUpstreamDown: with upstream down an on-demand pull gets a clean
// 503 UNAVAILABLE and nothing partial appears; once upstream is back the
// next interval catches up.
func testSyncUpstreamDown(t *testing.T) {
	up := syncStartBerth(t, "upstream", nil)
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	aDigest := syncPush(t, up.Host, "app/a:1", img)
	down := syncStartBerth(t, "downstream", syncExtensions(map[string]any{
		"urls": []string{up.URL}, "onDemand": true, "pollInterval": "2s", "maxRetries": 1, "retryDelay": "100ms",
		"content": []map[string]any{{"prefix": "app/**"}},
	}))
	waitUntil(t, 20*time.Second, "app/a:1 by periodic sync", func() bool {
		return slices.Contains(syncList(t, down.URL+"/v2/app/a/tags/list", "tags"), "1")
	})

	up.Kill()
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		r := syncGet(method, down.URL+"/v2/app/b/manifests/1")
		if r.Err != nil || r.Status != http.StatusServiceUnavailable {
			t.Errorf("%s of a missing image with upstream down: %d %v %s", method, r.Status, r.Err, r.Body)
		}
		if method == http.MethodGet && (ociErrorCode(r.Body) != "UNAVAILABLE" || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json")) {
			t.Errorf("error body %q (%s), want JSON with code UNAVAILABLE", r.Body, r.Header.Get("Content-Type"))
		}
	}
	if tags := syncList(t, down.URL+"/v2/app/b/tags/list", "tags"); len(tags) != 0 {
		t.Errorf("app/b visible after a failed sync: %v", tags)
	}
	if slices.Contains(syncList(t, down.URL+"/v2/_catalog", "repositories"), "app/b") {
		t.Error("app/b in the catalog after a failed sync")
	}
	if r := syncGet(http.MethodGet, down.URL+"/v2/app/a/manifests/1"); r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != aDigest {
		t.Errorf("synced image with upstream down: %d %s", r.Status, r.Body)
	}
	if n := syncMetric(t, down, "berth_sync_upstream_errors_total", `kind="unreachable"`); n == 0 {
		t.Error("no unreachable upstream errors counted")
	}

	up.Restart()
	img2, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	bDigest := syncPush(t, up.Host, "app/b:1", img2)
	waitUntil(t, 15*time.Second, "the next interval to catch up", func() bool {
		return slices.Contains(syncList(t, down.URL+"/v2/app/b/tags/list", "tags"), "1")
	})
	if r := syncGet(http.MethodGet, down.URL+"/v2/app/b/manifests/1"); r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != bDigest {
		t.Errorf("app/b:1 after catch-up: %d digest %q, want %s", r.Status, r.Header.Get("Docker-Content-Digest"), bDigest)
	}
}
