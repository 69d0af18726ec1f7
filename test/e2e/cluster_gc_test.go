package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// cxExp is what the GC tests expect of one pushed image: its manifests and
// blobs (manifests included), by digest.
type cxExp struct {
	name      string
	digest    string
	manifests []string
	blobs     map[string]int64
}

func cxExpOf(m *cxImg) cxExp {
	return cxExp{name: m.Name, digest: m.Digest, manifests: m.Manifests(), blobs: m.Blobs()}
}

// cxGCRepo is the model of one repository of TestClusterGC.
type cxGCRepo struct {
	name   string
	entry  *reg
	pushed map[string]int64  // every blob ever stored: digest -> size
	mans   map[string]bool   // every manifest ever pushed
	apiDel map[string]bool   // manifests deleted by digest through the API
	keep   []cxExp           // what must survive
	tags   map[string]string // tag -> digest after the test
}

func cxNewGCRepo(name string, e *reg) *cxGCRepo {
	return &cxGCRepo{name: name, entry: e, pushed: map[string]int64{}, mans: map[string]bool{}, apiDel: map[string]bool{}, tags: map[string]string{}}
}

// add records a push of x (stored blobs and manifests).
func (r *cxGCRepo) add(x cxExp) {
	for d, n := range x.blobs {
		r.pushed[d] = n
	}
	for _, d := range x.manifests {
		r.mans[d] = true
	}
}

// push pushes m under ref through the repository's entry and records it.
func (r *cxGCRepo) push(t *testing.T, m *cxImg, ref string) {
	t.Helper()
	m.push(t, r.entry, r.name, ref)
	r.add(cxExpOf(m))
}

func (r *cxGCRepo) wantBlobs() map[string]int64 {
	out := map[string]int64{}
	for _, k := range r.keep {
		for d, n := range k.blobs {
			out[d] = n
		}
	}
	return out
}

func (r *cxGCRepo) wantManifests() map[string]bool {
	out := map[string]bool{}
	for _, k := range r.keep {
		for _, d := range k.manifests {
			out[d] = true
		}
	}
	return out
}

// del sends a DELETE of a manifest (tag or digest) and wants 202.
func (r *cxGCRepo) del(t *testing.T, ref string) {
	t.Helper()
	res := r.entry.do(t, "DELETE", "/v2/"+r.name+"/manifests/"+ref, nil, nil)
	if res.Status != http.StatusAccepted {
		t.Fatalf("DELETE %s:%s via %s: %s", r.name, ref, r.entry.Host, res)
	}
	if strings.HasPrefix(ref, "sha256:") {
		r.apiDel[ref] = true
	}
}

// cxRemoval is one "garbage collection removed ..." log line.
type cxRemoval struct {
	on, repo, kind, ref string
	size                int64
}

// gcRemovals reads every removal line of every member.
func (c *cluster) cxGCRemovals(t *testing.T) []cxRemoval {
	t.Helper()
	var out []cxRemoval
	for _, m := range c.Members {
		for _, l := range m.logSince(t, 0) {
			if !strings.HasPrefix(l.str("message"), "garbage collection removed ") {
				continue
			}
			out = append(out, cxRemoval{on: m.Host, repo: l.str("repo"), kind: l.str("kind"), ref: l.str("ref"), size: int64(l.num("size"))})
		}
	}
	return out
}

// passLines returns a member's "garbage collection pass" lines after mark.
func cxPassLines(t *testing.T, m *reg, mark int64) []logLine {
	t.Helper()
	var out []logLine
	for _, l := range m.logSince(t, mark) {
		if l.str("message") == "garbage collection pass" {
			out = append(out, l)
		}
	}
	return out
}

// waitPasses waits until every member has logged n passes after marks.
func (c *cluster) cxWaitPasses(t *testing.T, marks map[string]int64, n int, timeout time.Duration) {
	t.Helper()
	waitUntil(t, timeout, fmt.Sprintf("%d garbage collection passes on every member", n), func() bool {
		for _, m := range c.Members {
			if len(cxPassLines(t, m, marks[m.Host])) < n {
				return false
			}
		}
		return true
	})
}

// layoutRepos lists the repositories in storage (directories holding an
// index.json), as a collector sees them.
func cxLayoutRepos(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() && (strings.HasPrefix(rel, "_") || d.Name() == "blobs") {
			return filepath.SkipDir
		}
		if !d.IsDir() && d.Name() == "index.json" {
			out = append(out, filepath.ToSlash(filepath.Dir(rel)))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// TestClusterGC pushes, untags, overwrites and deletes across 15
// repositories through every member and HAProxy while every member
// collects (gcDelay 1s, gcInterval 2s). Once passes have run past the
// delay, storage holds exactly the blobs of what is still referenced
// (listed in versitygw's directory and compared with the model), the
// index of each repository exactly the kept manifests, everything kept
// pulls with its digest through every member and HAProxy, what was removed
// answers 404, the bytes reclaimed (metrics and log lines) are what the
// model dropped, and each repository was collected by its owner only.
func TestClusterGC(t *testing.T) {
	defer timed(t)()
	crane := tool(t, "crane")
	c := startCluster(t, clusterOpts{LB: true, Storage: map[string]any{"gcDelay": "1s", "gcInterval": "2s"}})
	root := c.StorageRoot()
	entries := c.entries()
	work := t.TempDir()
	var repos []*cxGCRepo
	repo := func(name string) *cxGCRepo {
		r := cxNewGCRepo("gc/"+name, entries[len(repos)%len(entries)])
		repos = append(repos, r)
		return r
	}
	L := make([][]byte, 6) // layers shared between images
	for i := range L {
		L[i] = cxLayer(t, 4<<10+i*3<<10)
	}
	uniq := func(n int) []byte { return cxLayer(t, n) }

	// slow: a layer streamed in one PATCH over ~5 s to the owner, while
	// every member runs passes; the session is in use throughout, then the
	// image is pushed. (Started first; joined before the passes are awaited.)
	slowRepo := "gc/slow"
	slowTo := c.member(c.cxOwner(t, slowRepo))
	slowImg := cxImage("slow", cxLayer(t, 1<<20))
	type slowResult struct {
		id  string
		err error
	}
	slowDone := make(chan slowResult, 1)
	go func() {
		id, err := cxSlowPush(slowTo, slowRepo, slowImg, 16, 300*time.Millisecond)
		slowDone <- slowResult{id, err}
	}()

	// keep: one image; a stray blob and an abandoned upload go.
	keep := repo("keep")
	a := cxImage("keep-a", L[0], uniq(20<<10))
	keep.push(t, a, "v1")
	keep.keep, keep.tags["v1"] = []cxExp{cxExpOf(a)}, a.Digest
	stray := randBytes(t, 33<<10)
	keep.entry.pushBlob(t, keep.name, stray)
	keep.pushed[sha256Digest(stray)] = int64(len(stray))
	res := keep.entry.do(t, "POST", "/v2/"+keep.name+"/blobs/uploads/", nil, nil)
	if res.Status != http.StatusAccepted {
		t.Fatalf("POST upload: %s", res)
	}
	abandoned := uploadPath(t, res)
	res = keep.entry.do(t, "PATCH", abandoned, map[string]string{"Content-Type": "application/octet-stream", "Content-Range": "0-9999"}, randBytes(t, 10000))
	if res.Status != http.StatusAccepted {
		t.Fatalf("PATCH upload: %s", res)
	}
	abandoned = uploadPath(t, res)
	abandonedID := path.Base(strings.Split(abandoned, "?")[0])

	// untag: v2 deleted; its own blobs go, the layer it shares stays.
	untag := repo("untag")
	a, b := cxImage("untag-a", L[0], uniq(10<<10)), cxImage("untag-b", L[0], uniq(12<<10))
	untag.push(t, a, "v1")
	untag.push(t, b, "v2")
	untag.del(t, "v2")
	untag.keep, untag.tags["v1"] = []cxExp{cxExpOf(a)}, a.Digest

	// overwrite: latest moves from a to b.
	over := repo("overwrite")
	a, b = cxImage("over-a", L[1], uniq(9<<10)), cxImage("over-b", L[1], L[2])
	over.push(t, a, "latest")
	over.push(t, b, "latest")
	over.keep, over.tags["latest"] = []cxExp{cxExpOf(b)}, b.Digest

	// deldigest: a (tagged twice) deleted by digest; b stays.
	deld := repo("deldigest")
	a, b = cxImage("deld-a", L[3], uniq(7<<10)), cxImage("deld-b", L[3])
	deld.push(t, a, "v1")
	deld.push(t, a, "v1b")
	deld.push(t, b, "v2")
	deld.del(t, a.Digest)
	deld.keep, deld.tags["v2"] = []cxExp{cxExpOf(b)}, b.Digest

	// twotags: one of two tags of a manifest deleted; it stays.
	two := repo("twotags")
	a = cxImage("two-a", uniq(8<<10))
	two.push(t, a, "v1")
	two.push(t, a, "stable")
	two.del(t, "v1")
	two.keep, two.tags["stable"] = []cxExp{cxExpOf(a)}, a.Digest

	// index: an index keeps its untagged children; a manifest pushed by
	// digest only goes.
	ix := repo("index")
	c1, c2 := cxImage("ix-c1", L[0], uniq(5<<10)), cxImage("ix-c2", L[0], uniq(6<<10))
	idx := cxIndexOf("ix", c1, c2)
	ix.push(t, idx, "multi")
	d := cxImage("ix-d", uniq(11<<10))
	ix.push(t, d, d.Digest)
	ix.keep, ix.tags["multi"] = []cxExp{cxExpOf(idx)}, idx.Digest

	// index-over: the index's tag moves to a plain image; the index goes,
	// then its children in the next round, then their blobs.
	ixo := repo("index-over")
	c1, c2 = cxImage("ixo-c1", L[4], uniq(5<<10)), cxImage("ixo-c2", uniq(6<<10))
	idx = cxIndexOf("ixo", c1, c2)
	ixo.push(t, idx, "multi")
	p := cxImage("ixo-p", L[4], uniq(3<<10))
	ixo.push(t, p, "multi")
	ixo.keep, ixo.tags["multi"] = []cxExp{cxExpOf(p)}, p.Digest

	// referrer: a referrer of a present subject stays, untagged.
	rf := repo("referrer")
	a = cxImage("rf-a", uniq(4<<10))
	rf.push(t, a, "v1")
	sbom := cxReferrer("rf-sbom", a, []byte(`{"sbom":"`+randHex(8)+`"}`))
	rf.push(t, sbom, sbom.Digest)
	rf.keep, rf.tags["v1"] = []cxExp{cxExpOf(a), cxExpOf(sbom)}, a.Digest

	// orphan-ref: the subject is deleted; without deleteReferrers the
	// referrer stays.
	orf := repo("orphan-ref")
	a = cxImage("orf-a", L[5], uniq(4<<10))
	orf.push(t, a, "v1")
	sbom = cxReferrer("orf-sbom", a, []byte(`{"sbom":"`+randHex(8)+`"}`))
	orf.push(t, sbom, sbom.Digest)
	orf.del(t, a.Digest)
	orf.keep = []cxExp{cxExpOf(sbom)}

	// all-gone: the only image deleted by digest.
	gone := repo("all-gone")
	a = cxImage("gone-a", L[0], uniq(15<<10))
	gone.push(t, a, "v1")
	gone.del(t, a.Digest)

	// gen-N: three generations pushed to latest through different entries.
	for g := 0; g < 4; g++ {
		r := repo(fmt.Sprintf("gen-%d", g))
		var last *cxImg
		for k := 0; k < 3; k++ {
			last = cxImage(fmt.Sprintf("gen%d-%d", g, k), L[g], uniq(2<<10+k*1024))
			last.push(t, entries[(g+k)%len(entries)], r.name, "latest")
			r.add(cxExpOf(last))
		}
		r.keep, r.tags["latest"] = []cxExp{cxExpOf(last)}, last.Digest
	}

	// crane: crane append through HAProxy, then again over the same tag
	// with one layer in common.
	cr := repo("crane")
	var tars []string
	for i := 0; i < 3; i++ {
		p := filepath.Join(work, fmt.Sprintf("t%d.tar", i))
		writeLayerTar(t, p, 16<<10+i*8<<10)
		tars = append(tars, p)
	}
	ref := c.LBReg.Host + "/" + cr.name + ":v1"
	run(t, crane, "append", "--insecure", "--oci-empty-base", "-f", tars[0], "-f", tars[1], "-t", ref)
	cr.add(cxRemoteExp(t, c.LBReg, cr.name, "v1"))
	run(t, crane, "append", "--insecure", "--oci-empty-base", "-f", tars[0], "-f", tars[2], "-t", ref)
	last := cxRemoteExp(t, c.LBReg, cr.name, "v1")
	cr.add(last)
	cr.keep, cr.tags["v1"] = []cxExp{last}, last.digest
	t.Logf("%d repositories set up", len(repos))
	if sr := <-slowDone; sr.err != nil {
		t.Errorf("an upload streaming for ~5 s to %s, the owner of %s, failed while members collected: %v", slowTo.Host, slowRepo, sr.err)
		for _, m := range c.Members {
			for _, l := range m.logSince(t, 0) {
				if sr.id != "" && strings.Contains(fmt.Sprint(l), sr.id) {
					t.Logf("  %s: %v", m.Host, l)
				}
			}
		}
	} else {
		r := cxNewGCRepo(slowRepo, slowTo)
		r.add(cxExpOf(slowImg))
		r.keep, r.tags["v1"] = []cxExp{cxExpOf(slowImg)}, slowImg.Digest
		repos = append(repos, r)
	}

	// Wait out gcDelay, then for two passes on every member (the second
	// started after the first ended, so after the mark).
	time.Sleep(1100 * time.Millisecond)
	marks := c.marks()
	c.cxWaitPasses(t, marks, 2, 30*time.Second)

	var names []string
	for _, r := range repos {
		names = append(names, r.name)
	}
	owner := c.cxOwners(t, names)

	// 1. Storage holds exactly what the model keeps.
	pushedBytes, keptBytes, diskBytes := int64(0), int64(0), int64(0)
	for _, r := range repos {
		want := r.wantBlobs()
		got := cxBlobFiles(t, root, r.name)
		if d := cxSetDiff(want, got); d != "" {
			t.Errorf("%s: blobs in storage: %s", r.name, d)
		}
		for dg, n := range want {
			if got[dg] != n && got[dg] != 0 {
				t.Errorf("%s: blob %s has %d bytes in storage, want %d", r.name, dg, got[dg], n)
			}
			keptBytes += n
		}
		for _, n := range got {
			diskBytes += n
		}
		for _, n := range r.pushed {
			pushedBytes += n
		}
		lay := cxLayoutManifests(t, root, r.name)
		if d := cxSetDiff(r.wantManifests(), lay); d != "" {
			t.Errorf("%s: manifests in index.json: %s", r.name, d)
		}
		gotTags := map[string]string{}
		for dg, tags := range lay {
			for _, tg := range tags {
				gotTags[tg] = dg
			}
		}
		if fmt.Sprint(gotTags) != fmt.Sprint(r.tags) {
			t.Errorf("%s: tags in index.json %v, want %v", r.name, gotTags, r.tags)
		}
	}
	if diskBytes != keptBytes {
		t.Errorf("blob bytes in storage: %d, want %d (what is still referenced)", diskBytes, keptBytes)
	}
	if _, err := os.Stat(filepath.Join(root, "_uploads", abandonedID)); !os.IsNotExist(err) {
		t.Errorf("abandoned upload %s still in storage (%v)", abandonedID, err)
	}

	// 2. Everything kept pulls with its digest through every entry; what
	// went answers 404.
	for _, r := range repos {
		want := r.wantBlobs()
		for i, e := range entries {
			tags := cxTags(t, e, r.name)
			if !slices.Equal(tags, cxKeys(r.tags)) {
				t.Errorf("tags of %s via %s: %q, want %q", r.name, c.name(e), tags, cxKeys(r.tags))
			}
			for tg, dg := range r.tags {
				res := e.do(t, "GET", "/v2/"+r.name+"/manifests/"+tg, map[string]string{"Accept": syncAccept}, nil)
				if res.Status != 200 || sha256Digest(res.Body) != dg || res.Header.Get("Docker-Content-Digest") != dg {
					t.Errorf("GET %s:%s via %s: %d digest %s, want %s", r.name, tg, c.name(e), res.Status, sha256Digest(res.Body), dg)
				}
			}
			for dg := range r.wantManifests() {
				res := e.do(t, "GET", "/v2/"+r.name+"/manifests/"+dg, map[string]string{"Accept": syncAccept}, nil)
				if res.Status != 200 || sha256Digest(res.Body) != dg {
					t.Errorf("GET %s@%s via %s: %s", r.name, dg, c.name(e), res)
				}
			}
			for dg, n := range want {
				// Every blob through a rotating entry with its bytes, HEAD elsewhere.
				if (len(dg)+i)%len(entries) == 0 {
					res := e.do(t, "GET", "/v2/"+r.name+"/blobs/"+dg, nil, nil)
					if res.Status != 200 || sha256Digest(res.Body) != dg {
						t.Errorf("GET blob %s@%s via %s: %d, %d bytes hashing to %s", r.name, dg, c.name(e), res.Status, len(res.Body), sha256Digest(res.Body))
					}
				} else if res := e.do(t, "HEAD", "/v2/"+r.name+"/blobs/"+dg, nil, nil); res.Status != 200 || res.Header.Get("Content-Length") != fmt.Sprint(n) {
					t.Errorf("HEAD blob %s@%s via %s: %d length %q, want %d", r.name, dg, c.name(e), res.Status, res.Header.Get("Content-Length"), n)
				}
			}
			for dg := range r.mans {
				if r.wantManifests()[dg] {
					continue
				}
				if res := e.do(t, "GET", "/v2/"+r.name+"/manifests/"+dg, map[string]string{"Accept": syncAccept}, nil); res.Status != 404 {
					t.Errorf("GET removed manifest %s@%s via %s: %d, want 404", r.name, dg, c.name(e), res.Status)
				}
			}
			for dg := range r.pushed {
				if _, ok := want[dg]; ok {
					continue
				}
				if res := e.do(t, "HEAD", "/v2/"+r.name+"/blobs/"+dg, nil, nil); res.Status != 404 {
					t.Errorf("HEAD removed blob %s@%s via %s: %d, want 404", r.name, dg, c.name(e), res.Status)
				}
			}
		}
	}
	if res := keep.entry.do(t, "GET", abandoned, nil, nil); res.Status != 404 {
		t.Errorf("abandoned upload after collection: %s, want 404", res)
	}

	// 3. The removal log lines: each removed object exactly once, on the
	// repository's owner; sizes add up to what the model dropped.
	removals := c.cxGCRemovals(t)
	seen := map[string]int{}
	logBytes := int64(0)
	uploadsRemoved := 0
	byRepo := map[string]*cxGCRepo{}
	for _, r := range repos {
		byRepo[r.name] = r
	}
	for _, rm := range removals {
		if rm.on != owner[rm.repo] {
			t.Errorf("%s removed %s %s of %s, owned by %s", rm.on, rm.kind, rm.ref, rm.repo, owner[rm.repo])
		}
		seen[rm.repo+" "+rm.kind+" "+rm.ref]++
		switch rm.kind {
		case "blob":
			logBytes += rm.size
		case "upload":
			uploadsRemoved++
		}
	}
	wantRemoved := map[string]bool{}
	removedBytes := int64(0)
	for _, r := range repos {
		keepB, keepM := r.wantBlobs(), r.wantManifests()
		for dg, n := range r.pushed {
			if _, ok := keepB[dg]; !ok {
				wantRemoved[r.name+" blob "+dg] = true
				removedBytes += n
			}
		}
		for dg := range r.mans {
			if !keepM[dg] && !r.apiDel[dg] {
				wantRemoved[r.name+" manifest "+dg] = true
			}
		}
	}
	wantRemoved["gc/keep upload "+abandonedID] = true
	gotRemoved := map[string]bool{}
	for k, n := range seen {
		if strings.Contains(k, " upload ") && k != "gc/keep upload "+abandonedID {
			continue // sessions of clients in between are not the model's business
		}
		gotRemoved[k] = true
		if n != 1 {
			t.Errorf("removal %q logged %d times", k, n)
		}
	}
	if d := cxSetDiff(wantRemoved, gotRemoved); d != "" {
		t.Errorf("removal log lines: %s", d)
	}
	// Upload sessions belong to their repository: only its owner may end
	// one (the s3 driver's stale-session sweep logs without a repo).
	for _, m := range c.Members {
		if m.Host == owner[keep.name] {
			continue
		}
		for _, l := range m.logSince(t, 0) {
			if l.str("upload") == abandonedID && l.str("message") != "request" && l.str("message") != "request failed" {
				t.Errorf("%s ended the upload session %s of %s, which %s owns: %v", m.Host, abandonedID, keep.name, owner[keep.name], l)
			}
		}
	}
	if logBytes != removedBytes || pushedBytes-keptBytes != removedBytes {
		t.Errorf("removed blob bytes: log lines say %d, model %d (pushed %d, kept %d)", logBytes, removedBytes, pushedBytes, keptBytes)
	}

	// 4. Metrics: summed over members, what the log lines say.
	rb := c.cxMetrics(t, "berth_gc_reclaimed_bytes_total")
	if cxSum(rb) != float64(removedBytes) {
		t.Errorf("berth_gc_reclaimed_bytes_total %v (sum %v), want %d", rb, cxSum(rb), removedBytes)
	}
	for _, kind := range []string{"blob", "manifest"} {
		n := 0
		for k := range wantRemoved {
			if strings.Contains(k, " "+kind+" ") {
				n++
			}
		}
		got := c.cxMetrics(t, "berth_gc_removed_total", `kind="`+kind+`"`)
		if cxSum(got) != float64(n) {
			t.Errorf("berth_gc_removed_total{kind=%q} %v, want %d in all", kind, got, n)
		}
	}
	if got := c.cxMetrics(t, "berth_gc_removed_total", `kind="upload"`); cxSum(got) != float64(uploadsRemoved) {
		t.Errorf("berth_gc_removed_total{kind=upload} %v, but %d upload removals logged", got, uploadsRemoved)
	}
	if got := c.cxMetrics(t, "berth_gc_pass_duration_seconds_count"); cxSum(got) == 0 {
		t.Errorf("berth_gc_pass_duration_seconds_count %v", got)
	}

	// 5. Each pass collects each repository on exactly one member: every
	// pass after the mark covers exactly the repositories the member owns,
	// and the collected-repositories counter agrees with the pass lines.
	all := cxLayoutRepos(t, root)
	ownedBy := map[string]int{}
	for _, r := range all {
		o, ok := owner[r]
		if !ok {
			o = c.cxOwner(t, r)
		}
		ownedBy[o]++
	}
	for _, m := range c.Members {
		before := m.logSize()
		v := cxMetric(t, m, "berth_gc_repositories_collected_total")
		after := m.logSize()
		// Passes logged before the scrape are all counted; one running
		// during it adds up to what the member owns.
		lo, hi := cxPassRepoSum(t, m, before), cxPassRepoSum(t, m, after)+ownedBy[m.Host]
		if v < float64(lo) || v > float64(hi) {
			t.Errorf("%s: berth_gc_repositories_collected_total %v, pass lines say %d..%d (owns %d)", m.Host, v, lo, hi, ownedBy[m.Host])
		}
		for _, l := range cxPassLines(t, m, marks[m.Host]) {
			if l.num("repos") != ownedBy[m.Host] {
				t.Errorf("%s: a pass after the mark collected %d repositories, it owns %d of %d: %v", m.Host, l.num("repos"), ownedBy[m.Host], len(all), l)
			}
		}
	}
	t.Logf("repositories per owner %v; blob bytes %d pushed -> %d in storage (%d reclaimed); %d removal lines",
		ownedBy, pushedBytes, diskBytes, removedBytes, len(removals))
	requireStorageOK(t, root)
	c.requireNoMisroutes(t)
}

// slowPush pushes img to repo through e, its last layer in one PATCH whose
// body arrives in n pieces, one every gap, and returns the session id.
func cxSlowPush(e *reg, repo string, img *cxImg, n int, gap time.Duration) (string, error) {
	layer := img.Layers[len(img.Layers)-1]
	res, err := e.try("POST", "/v2/"+repo+"/blobs/uploads/", nil, nil)
	if err != nil {
		return "", err
	}
	if res.Status != http.StatusAccepted {
		return "", &cxStatusError{"POST upload", res}
	}
	loc := res.Header.Get("Location")
	id := path.Base(strings.Split(loc, "?")[0])
	if strings.HasPrefix(loc, "/") {
		loc = e.URL + loc
	}
	req, err := http.NewRequest("PATCH", loc, &cxSlowReader{data: layer, piece: (len(layer) + n - 1) / n, gap: gap})
	if err != nil {
		return id, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	start := time.Now()
	hr, err := httpClient.Do(req)
	if err != nil {
		return id, fmt.Errorf("PATCH after %s: %w", time.Since(start).Round(time.Millisecond), err)
	}
	body, _ := io.ReadAll(hr.Body)
	hr.Body.Close()
	if hr.StatusCode != http.StatusAccepted {
		return id, fmt.Errorf("PATCH after %s: %d %s", time.Since(start).Round(time.Millisecond), hr.StatusCode, body)
	}
	loc = hr.Header.Get("Location")
	if strings.HasPrefix(loc, "/") {
		loc = e.URL + loc
	}
	res, err = e.try("PUT", withQuery(loc, "digest="+sha256Digest(layer)), nil, nil)
	if err != nil {
		return id, err
	}
	if res.Status != http.StatusCreated {
		return id, &cxStatusError{"closing PUT", res}
	}
	img.Layers = img.Layers[:len(img.Layers)-1]
	err = img.tryPush(e, repo, "v1", false)
	img.Layers = append(img.Layers, layer)
	return id, err
}

// cxSlowReader yields data piece by piece, waiting gap before each piece
// after the first.
type cxSlowReader struct {
	data  []byte
	off   int
	piece int
	gap   time.Duration
}

func (s *cxSlowReader) Read(p []byte) (int, error) {
	if s.off >= len(s.data) {
		return 0, io.EOF
	}
	if s.off > 0 && s.off%s.piece == 0 {
		time.Sleep(s.gap)
	}
	end := min(len(s.data), s.off-s.off%s.piece+s.piece, s.off+len(p))
	n := copy(p, s.data[s.off:end])
	s.off += n
	return n, nil
}

// passRepoSum adds up the repos of m's pass lines in the first limit
// bytes of its log.
func cxPassRepoSum(t *testing.T, m *reg, limit int64) int {
	t.Helper()
	b, err := os.ReadFile(m.LogPath)
	must(t, err)
	if int64(len(b)) > limit {
		b = b[:limit]
	}
	n := 0
	for _, ln := range strings.Split(string(b), "\n") {
		var l logLine
		if json.Unmarshal([]byte(ln), &l) == nil && l.str("message") == "garbage collection pass" {
			n += l.num("repos")
		}
	}
	return n
}

// remoteExp reads repo:tag's manifest through e and returns what it
// references.
func cxRemoteExp(t *testing.T, e *reg, repo, tag string) cxExp {
	t.Helper()
	res := e.do(t, "GET", "/v2/"+repo+"/manifests/"+tag, map[string]string{"Accept": syncAccept}, nil)
	if res.Status != 200 {
		t.Fatalf("GET %s:%s: %s", repo, tag, res)
	}
	var m struct {
		Config cxDesc   `json:"config"`
		Layers []cxDesc `json:"layers"`
	}
	must(t, json.Unmarshal(res.Body, &m))
	x := cxExp{name: repo + ":" + tag, digest: sha256Digest(res.Body), blobs: map[string]int64{sha256Digest(res.Body): int64(len(res.Body))}}
	x.manifests = []string{x.digest}
	for _, d := range append(m.Layers, m.Config) {
		x.blobs[d.Digest] = int64(d.Size)
	}
	return x
}

// listTagsOrNone lists repo's tags through e; a repository without tags
// may answer 404 NAME_UNKNOWN or an empty list.
func cxTags(t *testing.T, e *reg, repo string) []string {
	t.Helper()
	res := e.do(t, "GET", "/v2/"+repo+"/tags/list", nil, nil)
	if res.Status == http.StatusNotFound {
		return nil
	}
	if res.Status != 200 {
		t.Fatalf("tags/list of %s via %s: %s", repo, e.Host, res)
	}
	var body struct {
		Tags []string `json:"tags"`
	}
	must(t, json.Unmarshal(res.Body, &body))
	sort.Strings(body.Tags)
	if len(body.Tags) == 0 {
		return nil
	}
	return body.Tags
}

// cxStressTag is the last acknowledged state of one tag of TestClusterGCStress.
type cxStressTag struct {
	digest string // "" after an acknowledged untag
	blobs  map[string]int64
	by     string // which client and op
}

// cxStressStats counts what the stress clients did.
type cxStressStats struct {
	mu       sync.Mutex
	attempts map[string]int // op -> attempts
	acked    map[string]int // op -> acknowledged
	failures map[string]int // op + error code -> failures a client retried
	gaveUp   int
}

func (s *cxStressStats) add(m map[string]int, k string) {
	s.mu.Lock()
	m[k]++
	s.mu.Unlock()
}

// TestClusterGCStress runs clients that push images reusing a pool of
// layers (HEAD then skip, as real clients do, sometimes pausing between
// the HEAD and the manifest, sometimes mounting from another repository),
// retag earlier manifests and untag, through every member and HAProxy,
// while every member collects every 200ms with gcDelay 1ms; crane pushes
// reusing the same layer tars run beside them. A push may be refused while
// a collection races it (the client retries, counted); afterwards every
// acknowledged tag not moved since pulls through every member and HAProxy
// with its digest and every blob, and crane validates a sample.
func TestClusterGCStress(t *testing.T) {
	defer timed(t)()
	crane := tool(t, "crane")
	c := startCluster(t, clusterOpts{LB: true, Storage: map[string]any{"gcDelay": "1ms", "gcInterval": "200ms"}})
	entries := c.entries()
	const (
		clients   = 4
		repos     = 6
		tagsEach  = 3
		maxPushes = 500
		maxTime   = 30 * time.Second
	)
	pool := make([][]byte, 8)
	for i := range pool {
		pool[i] = cxLayer(t, 2<<10+i*700)
	}
	work := t.TempDir()
	var tars []string
	for i := 0; i < 4; i++ {
		p := filepath.Join(work, fmt.Sprintf("t%d.tar", i))
		writeLayerTar(t, p, 8<<10+i*1024)
		tars = append(tars, p)
	}
	env := clientEnv(t)

	st := &cxStressStats{attempts: map[string]int{}, acked: map[string]int{}, failures: map[string]int{}}
	var (
		mu     sync.Mutex
		final  = map[string]cxStressTag{} // repo:tag -> last acknowledged state
		pushes atomic.Int64
	)
	deadline := time.Now().Add(maxTime)
	done := func() bool { return pushes.Load() >= maxPushes || time.Now().After(deadline) }
	var wg sync.WaitGroup
	for g := 0; g < clients; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := mrand.New(mrand.NewPCG(uint64(g), uint64(time.Now().UnixNano())))
			type pushed struct {
				repo string
				img  *cxImg
			}
			var history []pushed
			for n := 0; !done(); n++ {
				repo := fmt.Sprintf("stress/r%d", rng.IntN(repos))
				tag := fmt.Sprintf("g%d-t%d", g, rng.IntN(tagsEach))
				e := entries[rng.IntN(len(entries))]
				key := repo + ":" + tag
				roll := rng.IntN(100)
				var op string
				var img *cxImg
				switch {
				case roll < 15:
					op = "untag"
				case roll < 30 && len(history) > 0:
					op = "retag" // an earlier manifest, maybe collected since
					h := history[rng.IntN(len(history))]
					repo, key, img = h.repo, h.repo+":"+tag, h.img
				case roll < 40:
					op = "mount"
				default:
					op = "push"
				}
				if img == nil {
					a, b := rng.IntN(len(pool)), rng.IntN(len(pool))
					img = cxImage(fmt.Sprintf("g%d-%d", g, n), pool[a], pool[b])
				}
				st.add(st.attempts, op)
				var err error
				for try := 0; try < 6; try++ {
					switch op {
					case "untag":
						var res *resp
						res, err = e.try("DELETE", "/v2/"+repo+"/manifests/"+tag, nil, nil)
						if err == nil && res.Status != http.StatusAccepted && res.Status != http.StatusNotFound {
							err = &cxStatusError{"DELETE tag", res}
						}
					case "retag":
						// First the manifest alone, as a client copying a known
						// image would; if its blobs went, push it all again.
						var res *resp
						res, err = e.try("PUT", "/v2/"+repo+"/manifests/"+tag, map[string]string{"Content-Type": img.MediaType}, img.Manifest)
						if err == nil && res.Status != http.StatusCreated {
							err = &cxStatusError{"PUT manifest", res}
						}
						if err != nil {
							st.add(st.failures, op+" manifest-only "+cxErrCode(err))
							err = cxStressPush(e, repo, tag, img, rng, "")
						}
					case "mount":
						from := fmt.Sprintf("stress/r%d", rng.IntN(repos))
						err = cxStressPush(e, repo, tag, img, rng, from)
					default:
						err = cxStressPush(e, repo, tag, img, rng, "")
					}
					if err == nil {
						break
					}
					st.add(st.failures, op+" "+cxErrCode(err))
					time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
				}
				if err != nil {
					st.mu.Lock()
					st.gaveUp++
					st.mu.Unlock()
					t.Errorf("client %d: %s %s via %s failed 6 times, last: %v", g, op, key, e.Host, err)
					continue
				}
				st.add(st.acked, op)
				mu.Lock()
				if op == "untag" {
					final[key] = cxStressTag{by: fmt.Sprintf("client %d untag", g)}
				} else {
					final[key] = cxStressTag{digest: img.Digest, blobs: img.Blobs(), by: fmt.Sprintf("client %d %s via %s", g, op, c.name(e))}
					history = append(history, pushed{repo, img})
					pushes.Add(1)
				}
				mu.Unlock()
			}
		}()
	}
	// crane: the same layer tars again and again through HAProxy.
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := mrand.New(mrand.NewPCG(99, uint64(time.Now().UnixNano())))
		for n := 0; !done(); n++ {
			repo := fmt.Sprintf("stress/crane%d", rng.IntN(2))
			tag := fmt.Sprintf("c-t%d", rng.IntN(tagsEach))
			a, b := rng.IntN(len(tars)), rng.IntN(len(tars))
			ref := c.LBReg.Host + "/" + repo + ":" + tag
			st.add(st.attempts, "crane")
			var res cmdResult
			for try := 0; try < 6; try++ {
				res = execCmd(context.Background(), env, work, time.Minute, crane, "append", "--insecure", "--oci-empty-base", "-f", tars[a], "-f", tars[b], "-t", ref)
				if res.Err == nil {
					break
				}
				code := "other"
				for _, k := range []string{"MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN", "BLOB_UPLOAD_UNKNOWN", "MANIFEST_UNKNOWN"} {
					if strings.Contains(res.Combined, k) {
						code = k
						break
					}
				}
				st.add(st.failures, "crane "+code)
			}
			if res.Err != nil {
				t.Errorf("crane append %s failed 6 times, last: %v\n%s", ref, res.Err, res.Combined)
				continue
			}
			_, d, _ := strings.Cut(strings.TrimSpace(res.Stdout), "@")
			st.add(st.acked, "crane")
			mu.Lock()
			final[repo+":"+tag] = cxStressTag{digest: d, by: "crane " + strings.Join([]string{filepath.Base(tars[a]), filepath.Base(tars[b])}, "+")}
			pushes.Add(1)
			mu.Unlock()
		}
	}()
	start := time.Now()
	wg.Wait()
	ran := time.Since(start)

	// Let collections run on what is left, then verify.
	time.Sleep(1 * time.Second)
	removed := c.cxMetrics(t, "berth_gc_removed_total", `kind="blob"`)
	mans := c.cxMetrics(t, "berth_gc_removed_total", `kind="manifest"`)
	passes := c.cxMetrics(t, "berth_gc_pass_duration_seconds_count")
	present, gone, blobsChecked := 0, 0, 0
	for _, key := range cxKeys(final) {
		f := final[key]
		repo, tag, _ := strings.Cut(key, ":")
		for i, e := range entries {
			res := e.do(t, "GET", "/v2/"+repo+"/manifests/"+tag, map[string]string{"Accept": syncAccept}, nil)
			if f.digest == "" {
				if res.Status != http.StatusNotFound {
					t.Errorf("%s (untagged by %s) via %s: %d, want 404", key, f.by, c.name(e), res.Status)
				}
				continue
			}
			if res.Status != 200 || sha256Digest(res.Body) != f.digest {
				t.Errorf("ACKNOWLEDGED %s = %s (%s) via %s: %d digest %s: %s", key, f.digest, f.by, c.name(e), res.Status, sha256Digest(res.Body), res)
				continue
			}
			blobs := f.blobs
			if blobs == nil { // crane: read from the manifest
				blobs = cxRemoteExp(t, e, repo, tag).blobs
			}
			for d, n := range blobs {
				if d == f.digest {
					continue
				}
				blobsChecked++
				res := e.do(t, "GET", "/v2/"+repo+"/blobs/"+d, nil, nil)
				if res.Status != 200 || sha256Digest(res.Body) != d || int64(len(res.Body)) != n {
					t.Errorf("ACKNOWLEDGED %s (%s): blob %s via %s: %d, %d bytes hashing to %s", key, f.by, d, c.name(e), res.Status, len(res.Body), sha256Digest(res.Body))
				}
			}
			if i == (present%len(entries)) && present%5 == 0 {
				out := execCmd(context.Background(), env, work, time.Minute, crane, "validate", "--insecure", "--remote", e.Host+"/"+key)
				if out.Err != nil {
					t.Errorf("crane validate --remote %s via %s: %v\n%s", key, c.name(e), out.Err, out.Combined)
				}
			}
		}
		if f.digest == "" {
			gone++
		} else {
			present++
		}
	}
	st.mu.Lock()
	t.Logf("ran %s: attempts %v, acknowledged %v (%d pushes), retried failures %v, gave up %d",
		ran.Round(time.Millisecond), st.attempts, st.acked, pushes.Load(), st.failures, st.gaveUp)
	st.mu.Unlock()
	t.Logf("verified %d tags present (%d blob reads through %d endpoints) and %d untagged; collected: blobs %v, manifests %v, passes %v",
		present, blobsChecked, len(entries), gone, removed, mans, passes)
	if pushes.Load() < 100 {
		t.Errorf("only %d acknowledged pushes in %s: too few to exercise the race", pushes.Load(), ran)
	}
	if cxSum(removed) == 0 || cxSum(mans) == 0 {
		t.Errorf("the collectors removed nothing (blobs %v, manifests %v): the stress did not race collection", removed, mans)
	}
	requireStorageOK(t, c.StorageRoot())
}

// stressPush pushes img to repo:tag through e like a client: each blob is
// HEADed and skipped when present (mounted from `from` when set), with a
// random pause before the manifest to widen the race with collection.
func cxStressPush(e *reg, repo, tag string, img *cxImg, rng *mrand.Rand, from string) error {
	blobs := append([][]byte{img.Config}, img.Layers...)
	for _, b := range blobs {
		d := sha256Digest(b)
		res, err := e.try("HEAD", "/v2/"+repo+"/blobs/"+d, nil, nil)
		if err != nil {
			return err
		}
		if res.Status == http.StatusOK {
			continue
		}
		if from != "" && from != repo {
			res, err := e.try("POST", "/v2/"+repo+"/blobs/uploads/?mount="+d+"&from="+from, nil, nil)
			if err != nil {
				return err
			}
			if res.Status == http.StatusCreated {
				continue
			}
			if res.Status != http.StatusAccepted {
				return &cxStatusError{"POST mount", res}
			}
			// Not mounted: a session was started; finish it with the blob.
			if err := cxFinishUpload(e, res, b); err != nil {
				return err
			}
			continue
		}
		if err := cxUpload(e, repo, b, false); err != nil {
			return err
		}
	}
	if rng.IntN(4) == 0 {
		time.Sleep(time.Duration(rng.IntN(40)) * time.Millisecond)
	}
	return img.putManifest(e, repo, tag)
}

// errCode names an error for the failure counts: its OCI code and status.
func cxErrCode(err error) string {
	if se, ok := err.(*cxStatusError); ok {
		return fmt.Sprintf("%s:%d:%s", se.What, se.Res.Status, se.code())
	}
	return "transport"
}

// ddbDied reports whether the shared dynalite exits within d (it dies on
// a request aborted mid-body).
func cxDynaliteDied(d time.Duration) bool {
	time.Sleep(d)
	s := &sharedServers
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ddb != nil && s.ddb.exited()
}

// cxAction is one line of `registry gc` output (or JSON action).
type cxAction struct {
	Repo string `json:"repo"`
	Kind string `json:"kind"`
	Ref  string `json:"ref"`
	Size int64  `json:"size"`
}

func (a cxAction) key() string { return a.Repo + " " + a.Kind + " " + a.Ref }

// gcCLI runs `registry gc` with args against the first member's config and
// returns its actions: from --json output, or parsed from the text lines
// ("removed|would remove KIND REPO REF SIZE").
func (c *cluster) cxGC(t *testing.T, args ...string) []cxAction {
	t.Helper()
	out, stderr := c.cxCLI(t, append(append([]string{"gc"}, args...), c.Members[0].cfgPath)...)
	if slices.Contains(args, "--json") {
		var rep struct {
			Repos   int        `json:"repos"`
			Actions []cxAction `json:"actions"`
			Errors  []string   `json:"errors"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("registry gc %v: output is not JSON: %v\n%s", args, err, out)
		}
		if len(rep.Errors) > 0 {
			t.Errorf("registry gc %v: errors %v", args, rep.Errors)
		}
		return rep.Actions
	}
	verb := "removed "
	if slices.Contains(args, "--dry-run") {
		verb = "would remove "
	}
	var acts []cxAction
	summary := false
	for _, l := range lines(out) {
		rest, ok := strings.CutPrefix(l, verb)
		if !ok {
			if strings.Contains(l, " repositories, ") && strings.Contains(l, " objects, ") {
				summary = true
				continue
			}
			t.Errorf("registry gc %v: unexpected output line %q", args, l)
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 4 {
			t.Errorf("registry gc %v: bad line %q", args, l)
			continue
		}
		var n int64
		fmt.Sscan(f[3], &n)
		acts = append(acts, cxAction{Kind: f[0], Repo: f[1], Ref: f[2], Size: n})
	}
	if !summary {
		t.Errorf("registry gc %v: no summary line in\n%s", args, out)
	}
	if !strings.Contains(stderr, "] ") {
		t.Errorf("registry gc %v: no progress lines on stderr: %q", args, stderr)
	}
	return acts
}

func cxActionSet(acts []cxAction) map[string]cxAction {
	out := map[string]cxAction{}
	for _, a := range acts {
		out[a.key()] = a
	}
	return out
}

// cxRetCase is one retention case: one repository, tags pushed in rounds
// (one round per second, so push times differ in S3's one-second
// resolution), the tags pulled (in order) and the tags that must survive.
type cxRetCase struct {
	name     string
	repo     string
	policy   map[string]any
	rounds   [][]string // tags pushed per round
	pulls    []string
	untagged int // manifests pushed by digest only
	survive  []string
	// keepManifests: manifests the retention removed a tag from stay
	// (deleteUntagged false).
	keepManifests bool
}

// TestClusterRetention runs a table of retention policies (one config, one
// policy per glob) over a cluster with periodic collection off, and
// collects with `registry gc CONFIG` beside the servers. Pulls go through
// every member and HAProxy; pull times reach metadata in batches, so the
// owners of the pulled repositories are restarted gracefully (SIGTERM
// flushes them) before the pass. A dry run first prints exactly what the
// real run then removes (also for one repository with --repo); afterwards
// every member serves exactly the surviving tags with their digests. Last,
// a blob younger than gcDelay survives a pass.
func TestClusterRetention(t *testing.T) {
	defer timed(t)()
	cases := []cxRetCase{
		{name: "keep last 2 pushed", repo: "ret/lastn/team/app",
			policy: map[string]any{"keepTags": []map[string]any{{"mostRecentlyPushedCount": 2}}},
			rounds: [][]string{{"t1"}, {"t2"}, {"t3"}, {"t4"}}, survive: []string{"t3", "t4"}},
		{name: "keep tags matching patterns", repo: "ret/pattern/app",
			policy: map[string]any{"keepTags": []map[string]any{{"patterns": []string{`v[0-9]+\.[0-9]+`, "release-.*"}}}},
			rounds: [][]string{{"v1.0", "v2.1", "release-x", "dev", "latest", "v1", "xv1.0"}}, survive: []string{"release-x", "v1.0", "v2.1"}},
		{name: "keep pulled within 1h", repo: "ret/pulled/app",
			policy: map[string]any{"keepTags": []map[string]any{{"pulledWithin": "1h"}}},
			rounds: [][]string{{"p1", "p2", "p3", "p4"}}, pulls: []string{"p1", "p3"}, survive: []string{"p1", "p3"}},
		{name: "keep 2 most recently pulled", repo: "ret/mostpulled/app",
			policy: map[string]any{"keepTags": []map[string]any{{"mostRecentlyPulledCount": 2}}},
			rounds: [][]string{{"q1", "q2", "q3", "q4"}}, pulls: []string{"q2", "q4", "q3", "q1"}, survive: []string{"q1", "q3"}},
		{name: "pattern rules with different criteria", repo: "ret/mixed/app",
			policy: map[string]any{"keepTags": []map[string]any{
				{"patterns": []string{"prod-.*"}, "pulledWithin": "1h"},
				{"patterns": []string{"dev-.*"}, "mostRecentlyPushedCount": 1},
				{"patterns": []string{"stable"}}}},
			rounds: [][]string{{"prod-1", "dev-1", "stable"}, {"prod-2", "dev-2", "other"}}, pulls: []string{"prod-1"},
			survive: []string{"dev-2", "prod-1", "stable"}},
		{name: "a tag any rule keeps stays", repo: "ret/overlap/app",
			policy: map[string]any{"keepTags": []map[string]any{
				{"patterns": []string{"v.*"}, "mostRecentlyPushedCount": 1},
				{"pushedWithin": "1h"}}},
			rounds: [][]string{{"v1"}, {"v2", "latest"}}, survive: []string{"latest", "v1", "v2"}},
		{name: "deleteUntagged false keeps the manifests", repo: "ret/keepuntagged/app",
			policy: map[string]any{"deleteUntagged": false, "keepTags": []map[string]any{{"patterns": []string{"v.*"}}}},
			rounds: [][]string{{"v1", "x1"}}, untagged: 1, survive: []string{"v1"}, keepManifests: true},
		{name: "no policy: every tag stays, untagged manifests go", repo: "ret-none/app",
			rounds: [][]string{{"a", "b"}}, untagged: 1, survive: []string{"a", "b"}},
	}
	var policies []map[string]any
	for _, tc := range cases {
		if tc.policy == nil {
			continue
		}
		// One policy per case: "ret/<case>/**" (the repositories sit deeper).
		seg := strings.Split(tc.repo, "/")
		p := map[string]any{"repositories": []string{seg[0] + "/" + seg[1] + "/**"}}
		for k, v := range tc.policy {
			p[k] = v
		}
		policies = append(policies, p)
	}
	c := startCluster(t, clusterOpts{LB: true, Storage: map[string]any{
		"gcDelay": "1s", "gcInterval": "0s",
		"retention": map[string]any{"policies": policies},
	}})
	entries := c.entries()

	// Push in rounds a second apart; each tag its own image.
	imgs := map[string]*cxImg{} // repo:tag -> image
	untagged := map[string][]*cxImg{}
	maxRounds := 0
	for _, tc := range cases {
		maxRounds = max(maxRounds, len(tc.rounds))
	}
	for r := 0; r < maxRounds; r++ {
		if r > 0 {
			time.Sleep(1100 * time.Millisecond)
		}
		for i, tc := range cases {
			if r >= len(tc.rounds) {
				continue
			}
			for j, tag := range tc.rounds[r] {
				img := cxImage(tc.repo+":"+tag, cxLayer(t, 1024+j))
				img.push(t, entries[(i+j+r)%len(entries)], tc.repo, tag)
				imgs[tc.repo+":"+tag] = img
			}
		}
	}
	for i, tc := range cases {
		for k := 0; k < tc.untagged; k++ {
			img := cxImage(tc.repo+"@untagged", cxLayer(t, 900))
			img.push(t, entries[i%len(entries)], tc.repo, img.Digest)
			untagged[tc.repo] = append(untagged[tc.repo], img)
		}
	}
	// Pulls through rotating entries, a few milliseconds apart (pull times
	// are kept to the millisecond).
	pulled := map[string]bool{}
	for i, tc := range cases {
		for j, tag := range tc.pulls {
			time.Sleep(20 * time.Millisecond)
			e := entries[(i+j)%len(entries)]
			res := e.do(t, "GET", "/v2/"+tc.repo+"/manifests/"+tag, map[string]string{"Accept": syncAccept}, nil)
			if res.Status != 200 || sha256Digest(res.Body) != imgs[tc.repo+":"+tag].Digest {
				t.Fatalf("pull %s:%s via %s: %s", tc.repo, tag, c.name(e), res)
			}
			pulled[tc.repo] = true
		}
	}
	// The owners of pulled repositories flush their pulls when stopped.
	restart := map[string]bool{}
	for repo := range pulled {
		restart[c.cxOwner(t, repo)] = true
	}
	for _, h := range cxKeys(restart) {
		m := c.member(h)
		m.terminate(t, 30*time.Second)
		if cxDynaliteDied(200 * time.Millisecond) {
			t.Fatalf("dynalite died (ECONNRESET on an aborted request) when %s exited on SIGTERM: the member quit with DynamoDB writes in flight, i.e. before its pull times were flushed", h)
		}
		m.start()
	}
	c.waitPeersUp(t, nil, 10*time.Second)
	c.LB.waitStatus(t, map[string]string{"m1": "UP", "m2": "UP", "m3": "UP"}, 10*time.Second)
	time.Sleep(1100 * time.Millisecond) // everything is older than gcDelay

	// Expected removals: the tags outside retention, then the manifests
	// (and their blobs) nothing keeps.
	wantTags := map[string]bool{}
	wantMans := map[string]bool{}
	for _, tc := range cases {
		var all []string
		for _, r := range tc.rounds {
			all = append(all, r...)
		}
		for _, tag := range all {
			if !slices.Contains(tc.survive, tag) {
				wantTags[tc.repo+" tag "+tag] = true
				if !tc.keepManifests {
					wantMans[tc.repo+" manifest "+imgs[tc.repo+":"+tag].Digest] = true
				}
			}
		}
		for _, u := range untagged[tc.repo] {
			if !tc.keepManifests {
				wantMans[tc.repo+" manifest "+u.Digest] = true
			}
		}
	}

	var dry, dryOne, real []cxAction
	t.Run("dry run prints what the real run removes", func(t *testing.T) {
		dry = c.cxGC(t, "--dry-run")
		dryOne = c.cxGC(t, "--dry-run", "--json", "--repo", cases[1].repo)
		// Nothing changed.
		if again := c.cxGC(t, "--dry-run", "--json"); cxSetDiff(cxActionSet(dry), cxActionSet(again)) != "" {
			t.Errorf("a second dry run differs: %s", cxSetDiff(cxActionSet(dry), cxActionSet(again)))
		}
		real = c.cxGC(t, "--json")
		if d := cxSetDiff(cxActionSet(dry), cxActionSet(real)); d != "" {
			t.Errorf("dry run vs real run: the real run %s", strings.NewReplacer("missing", "did not remove", "unexpected", "also removed").Replace(d))
		}
		for k, a := range cxActionSet(dry) {
			if r, ok := cxActionSet(real)[k]; ok && r.Size != a.Size {
				t.Errorf("%s: dry run says %d bytes, real run %d", k, a.Size, r.Size)
			}
		}
		one := map[string]cxAction{}
		for k, a := range cxActionSet(real) {
			if a.Repo == cases[1].repo {
				one[k] = a
			}
		}
		if d := cxSetDiff(one, cxActionSet(dryOne)); d != "" || len(one) == 0 {
			t.Errorf("dry run --repo %s vs the real run's actions on it (%d): %s", cases[1].repo, len(one), d)
		}
		if again := c.cxGC(t, "--dry-run", "--json"); len(again) != 0 {
			t.Errorf("a dry run after the real run still finds %d actions: %v", len(again), again)
		}
		t.Logf("dry run: %d actions, real run: %d, --repo %s: %d", len(dry), len(real), cases[1].repo, len(dryOne))
	})

	t.Run("survivors", func(t *testing.T) {
		got := map[string]bool{}
		for _, a := range real {
			if a.Kind == "tag" || a.Kind == "manifest" {
				got[a.key()] = true
			}
		}
		want := map[string]bool{}
		for k := range wantTags {
			want[k] = true
		}
		for k := range wantMans {
			want[k] = true
		}
		if d := cxSetDiff(want, got); d != "" {
			t.Errorf("tags and manifests removed: %s", d)
		}
		for _, tc := range cases {
			for _, tag := range tc.pulls {
				if slices.Contains(tc.survive, tag) && got[tc.repo+" tag "+tag] {
					t.Errorf("%s: %s:%s was pulled through the cluster, its owner %s then stopped with SIGTERM and restarted, yet the pass removed the tag as not pulled: the pull time never reached metadata",
						tc.name, tc.repo, tag, c.cxOwner(t, tc.repo))
				}
			}
		}
		for _, tc := range cases {
			for _, e := range entries {
				tags := cxTags(t, e, tc.repo)
				if !slices.Equal(tags, tc.survive) {
					t.Errorf("%s: tags via %s %q, want %q", tc.name, c.name(e), tags, tc.survive)
				}
				for _, tag := range tc.survive {
					if !slices.Contains(tags, tag) {
						continue // reported above
					}
					want := imgs[tc.repo+":"+tag]
					res := e.do(t, "GET", "/v2/"+tc.repo+"/manifests/"+tag, map[string]string{"Accept": syncAccept}, nil)
					if res.Status != 200 || sha256Digest(res.Body) != want.Digest {
						t.Errorf("%s: GET %s:%s via %s: %d digest %s, want %s", tc.name, tc.repo, tag, c.name(e), res.Status, sha256Digest(res.Body), want.Digest)
					}
					for d := range want.Blobs() {
						if res := e.do(t, "HEAD", "/v2/"+tc.repo+"/blobs/"+d, nil, nil); res.Status != 200 {
							t.Errorf("%s: blob %s of %s:%s via %s: %d", tc.name, d, tc.repo, tag, c.name(e), res.Status)
						}
					}
				}
			}
			// Removed manifests answer 404; kept ones (deleteUntagged false) 200.
			for k := range imgs {
				repo, tag, _ := strings.Cut(k, ":")
				if repo != tc.repo || slices.Contains(tc.survive, tag) {
					continue
				}
				res := c.LBReg.do(t, "GET", "/v2/"+repo+"/manifests/"+imgs[k].Digest, map[string]string{"Accept": syncAccept}, nil)
				if want := map[bool]int{true: 200, false: 404}[tc.keepManifests]; res.Status != want {
					t.Errorf("%s: manifest of the removed tag %s: %d, want %d", tc.name, k, res.Status, want)
				}
			}
		}
		requireStorageOK(t, c.StorageRoot())
	})

	// A blob younger than gcDelay (1s) is not a candidate: upload one late
	// in a second (S3 keeps times to the second) and collect at once.
	t.Run("young blob survives", func(t *testing.T) {
		const repo = "ret-young/app"
		img := cxImage("young", cxLayer(t, 2048))
		img.push(t, c.LBReg, repo, "v1")
		// Upload late in a second, then collect just after the next one
		// starts: the blob is ~0.15s old, its stored time (whole seconds)
		// up to ~0.95s older.
		var blob []byte
		var uploaded time.Time
		for try := 0; ; try++ {
			for ns := time.Now().Nanosecond(); ns < 880e6 || ns > 920e6; ns = time.Now().Nanosecond() {
				time.Sleep(2 * time.Millisecond)
			}
			blob = randBytes(t, 4096)
			c.LBReg.pushBlob(t, repo, blob)
			uploaded = time.Now()
			if uploaded.Nanosecond() > 880e6 || try == 5 {
				break // acknowledged within the same second
			}
		}
		time.Sleep(time.Duration(1e9-uploaded.Nanosecond()) + 30*time.Millisecond)
		acts := c.cxGC(t, "--json", "--repo", repo)
		age := time.Since(uploaded)
		if age >= time.Second {
			t.Logf("the pass ended %s after the upload, beyond gcDelay: nothing to conclude", age)
			return
		}
		for _, a := range acts {
			if a.Ref == sha256Digest(blob) {
				t.Errorf("registry gc removed blob %s of %s at most %s after its upload was acknowledged (uploaded at %s), with gcDelay 1s: %v",
					a.Ref, repo, age.Round(time.Millisecond), uploaded.Format("15:04:05.000"), a)
			}
		}
		if res := c.LBReg.do(t, "HEAD", "/v2/"+repo+"/blobs/"+sha256Digest(blob), nil, nil); res.Status != 200 {
			t.Errorf("blob uploaded %s before a pass with gcDelay 1s: HEAD %d", age.Round(time.Millisecond), res.Status)
		}
	})
}
