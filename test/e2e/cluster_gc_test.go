package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
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
// collects (gcDelay 4s, gcInterval 2s). Once passes have run past the
// delay, storage holds exactly the blobs of what is still referenced
// (listed in versitygw's directory and compared with the model), the
// index of each repository exactly the kept manifests, everything kept
// pulls with its digest through every member and HAProxy, what was removed
// answers 404, the bytes reclaimed (metrics and log lines) are what the
// model dropped, and each repository was collected by its owner only.
func TestClusterGC(t *testing.T) {
	defer timed(t)()
	crane := tool(t, "crane")
	// gcDelay bounds how long a push may take between storing a blob (or a
	// child manifest) and the manifest that references it: a slow machine
	// needs seconds.
	const gcDelay = 4 * time.Second
	c := startCluster(t, clusterOpts{LB: true, Storage: map[string]any{"gcDelay": gcDelay.String(), "gcInterval": "2s"}})
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
	time.Sleep(gcDelay + 100*time.Millisecond)
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
