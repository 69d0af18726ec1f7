package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The cluster tests run three members on 127.0.0.1/2/3 (same port) over one
// versitygw bucket and one set of dynalite tables, mostly behind HAProxy
// (balance roundrobin, /readyz health checks, retries 2 + option redispatch).

// requireNoMisroutes fails on log lines showing that a member received a
// forwarded request it must not serve (421) or rejected a hop header: in a
// healthy cluster requests take at most one hop and carry valid headers.
func (c *cluster) requireNoMisroutes(t *testing.T) {
	t.Helper()
	for _, m := range c.Members {
		for _, l := range m.logSince(t, 0) {
			msg := l.str("message")
			if l.num("status") == http.StatusMisdirectedRequest || msg == "rejected forwarded request" ||
				msg == "forwarded request for a repository this member does not own" {
				t.Errorf("member %s logged a misrouted forward: %v", m.Host, l)
			}
		}
	}
}

// TestClusterConformance runs the OCI conformance suite through HAProxy and
// directly against each member, with its own repositories each time: 0
// failures, 0 errors, 0 skips every time.
func TestClusterConformance(t *testing.T) {
	defer timed(t)()
	c := startCluster(t, clusterOpts{LB: true})
	for i, e := range c.entries() {
		name := fmt.Sprintf("m%d", i+1)
		if e == c.LBReg {
			name = "lb"
		}
		t.Run(name, func(t *testing.T) {
			defer timed(t)()
			runConformance(t, e.Host, "conf-"+name+"/repo1", "conf-"+name+"/repo2")
		})
	}
	requireStorageOK(t, c.StorageRoot())
	c.requireNoMisroutes(t)
}

// TestClusterClients pushes with skopeo, oras, crane and regctl through
// HAProxy and through member 1, pulls everything back through members 2
// and 3 and through HAProxy with identical digests, and lists every
// repository from every member's catalog (metadata is shared).
func TestClusterClients(t *testing.T) {
	defer timed(t)()
	crane, skopeo, oras, regctl := tool(t, "crane"), tool(t, "skopeo"), tool(t, "oras"), tool(t, "regctl")
	c := startCluster(t, clusterOpts{LB: true})
	m1, m2, m3, lb := c.Members[0], c.Members[1], c.Members[2], c.LBReg
	work := t.TempDir()

	// A 3-layer image as a local OCI layout, the source of every push.
	var layers []string
	for i, n := range []int{1 << 10, 300 << 10, 2 << 20} {
		p := filepath.Join(work, fmt.Sprintf("l%d.tar", i))
		writeLayerTar(t, p, n)
		layers = append(layers, p)
	}
	args := []string{crane, "append", "--insecure", "--oci-empty-base", "-t", lb.Host + "/clients/base:v1"}
	for _, l := range layers {
		args = append(args, "-f", l)
	}
	run(t, args...)
	baseDigest := strings.TrimSpace(runStdout(t, crane, "digest", "--insecure", lb.Host+"/clients/base:v1"))
	layout := filepath.Join(work, "layout")
	run(t, crane, "pull", "--insecure", "--format", "oci", lb.Host+"/clients/base:v1", layout)
	if d := layoutDigest(t, layout, ""); d != baseDigest {
		t.Fatalf("crane pull of the base image: %s, want %s", d, baseDigest)
	}
	// skopeo and regctl want a tag in the layout.
	skLayout := filepath.Join(work, "sklayout")
	run(t, skopeo, "--insecure-policy", "copy", "--src-tls-verify=false", "docker://"+lb.Host+"/clients/base:v1", "oci:"+skLayout+":v1")
	must(t, os.WriteFile(filepath.Join(work, "a.txt"), []byte("hello cluster\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(work, "b.bin"), randBytes(t, 200<<10), 0o644))

	rc := func(hosts ...*reg) []string {
		a := []string{regctl}
		for _, h := range hosts {
			a = append(a, "--host", "reg="+h.Host+",tls=disabled")
		}
		return a
	}
	type pushed struct {
		repo, digest string
		artifact     bool
	}
	var all []pushed
	for _, e := range []*reg{lb, m1} {
		name := "m1"
		if e == lb {
			name = "lb"
		}
		p := "cl-" + name + "/"
		run(t, crane, "push", "--insecure", layout, e.Host+"/"+p+"crane:v1")
		run(t, skopeo, "--insecure-policy", "copy", "--dest-tls-verify=false", "oci:"+skLayout+":v1", "docker://"+e.Host+"/"+p+"skopeo:v1")
		run(t, append(rc(e), "image", "copy", "ocidir://"+skLayout+":v1", e.Host+"/"+p+"regctl:v1")...)
		runIn(t, work, oras, "push", "--plain-http", "--artifact-type", "application/vnd.example.thing",
			e.Host+"/"+p+"oras:v1", "a.txt:text/plain", "b.bin")
		for _, r := range []string{"crane", "skopeo", "regctl"} {
			d := strings.TrimSpace(runStdout(t, crane, "digest", "--insecure", e.Host+"/"+p+r+":v1"))
			if d != baseDigest {
				t.Errorf("%s push via %s: digest %s, want %s", r, c.name(e), d, baseDigest)
			}
			all = append(all, pushed{p + r, baseDigest, false})
		}
		d := strings.TrimSpace(runStdout(t, crane, "digest", "--insecure", e.Host+"/"+p+"oras:v1"))
		all = append(all, pushed{p + "oras", d, true})
	}

	// Pull everything through members 2 and 3 and HAProxy, each client in turn.
	for _, from := range []*reg{m2, m3, lb} {
		for i, p := range all {
			ref := from.Host + "/" + p.repo + ":v1"
			if d := strings.TrimSpace(runStdout(t, crane, "digest", "--insecure", ref)); d != p.digest {
				t.Errorf("crane digest %s: %s, want %s", ref, d, p.digest)
			}
			out := filepath.Join(t.TempDir(), "out")
			if p.artifact {
				run(t, oras, "pull", "--plain-http", "-o", out, ref)
				for _, f := range []string{"a.txt", "b.bin"} {
					want, _ := os.ReadFile(filepath.Join(work, f))
					if got, err := os.ReadFile(filepath.Join(out, f)); err != nil || string(got) != string(want) {
						t.Errorf("oras pull %s: %s differs (%v)", ref, f, err)
					}
				}
				continue
			}
			switch i % 3 {
			case 0:
				run(t, crane, "pull", "--insecure", "--format", "oci", ref, out)
				if d := layoutDigest(t, out, ""); d != p.digest {
					t.Errorf("crane pull %s: %s, want %s", ref, d, p.digest)
				}
			case 1:
				run(t, skopeo, "--insecure-policy", "copy", "--src-tls-verify=false", "docker://"+ref, "oci:"+out+":v1")
				if d := layoutDigest(t, out, "v1"); d != p.digest {
					t.Errorf("skopeo copy %s: %s, want %s", ref, d, p.digest)
				}
			case 2:
				run(t, append(rc(from), "image", "copy", ref, "ocidir://"+out+":v1")...)
				if d := layoutDigest(t, out, "v1"); d != p.digest {
					t.Errorf("regctl image copy %s: %s, want %s", ref, d, p.digest)
				}
			}
			requireStorageOK(t, out)
		}
	}

	// Every member (and HAProxy) lists every repository.
	want := []string{"clients/base"}
	for _, p := range all {
		want = append(want, p.repo)
	}
	for _, e := range c.entries() {
		cat := lines(runStdout(t, crane, "catalog", "--insecure", e.Host))
		for _, r := range want {
			if !slices.Contains(cat, r) {
				t.Errorf("catalog of %s lacks %s: %q", c.name(e), r, cat)
			}
		}
		if tags := lines(runStdout(t, crane, "ls", "--insecure", e.Host+"/cl-lb/skopeo")); !slices.Equal(tags, []string{"v1"}) {
			t.Errorf("tags of cl-lb/skopeo via %s: %q", c.name(e), tags)
		}
	}
	requireStorageOK(t, c.StorageRoot())
	c.requireNoMisroutes(t)
}

// TestClusterOwnership pushes 30 repositories through every member and
// HAProxy and reads the members' access logs: every request for a
// repository is served by one member only (the manifest PUTs with 201 and
// no "owner" field are all on it; every other member that received a
// request for it logged "owner" = that member, with the same req_id on
// both), and each member owns at least one of the 30.
func TestClusterOwnership(t *testing.T) {
	defer timed(t)()
	c := startCluster(t, clusterOpts{LB: true})
	marks := c.marks()
	const n = 30
	digests := map[string]string{}
	for i := 0; i < n; i++ {
		repo := fmt.Sprintf("own/r%02d", i)
		for j, e := range c.entries() {
			tag := fmt.Sprintf("e%d", j)
			d, _ := e.pushImage(t, repo, tag)
			digests[repo+":"+tag] = d
		}
	}
	// Read back every tag through every entry.
	for ref, d := range digests {
		repo, tag, _ := strings.Cut(ref, ":")
		for _, e := range c.entries() {
			res := e.do(t, "GET", "/v2/"+repo+"/manifests/"+tag, map[string]string{"Accept": mtManifest}, nil)
			if res.Status != 200 || sha256Digest(res.Body) != d {
				t.Errorf("GET %s via %s: %d, digest %s, want %s", ref, c.name(e), res.Status, sha256Digest(res.Body), d)
			}
		}
	}
	time.Sleep(100 * time.Millisecond) // access log lines follow the responses
	lines := c.requests(t, marks)
	stored := storedBy(lines)
	owner := map[string]string{}
	perMember := map[string]int{}
	for i := 0; i < n; i++ {
		repo := fmt.Sprintf("own/r%02d", i)
		s := stored[repo]
		if len(s) != 1 {
			t.Errorf("%s: manifest PUTs stored by %v, want exactly one member", repo, s)
			continue
		}
		for m, k := range s {
			owner[repo] = m
			perMember[m]++
			if k != len(c.entries()) {
				t.Errorf("%s: %s stored %d manifest PUTs, want all %d pushes", repo, m, k, len(c.entries()))
			}
		}
	}
	// Consistency: each request line is on the owner, or names the owner.
	servedBy := map[string]map[string]bool{} // req_id -> members that served it without forwarding
	for _, l := range lines {
		if !l.has("owner") {
			if servedBy[l.str("req_id")] == nil {
				servedBy[l.str("req_id")] = map[string]bool{}
			}
			servedBy[l.str("req_id")][l.On] = true
		}
	}
	forwarded := 0
	for _, l := range lines {
		if l.str("member") != l.On || l.str("req_id") == "" {
			t.Errorf("%s logged a request line with member %q and req_id %q: %v", l.On, l.str("member"), l.str("req_id"), l.logLine)
		}
		want, ok := owner[l.str("repo")]
		if !ok {
			continue
		}
		switch {
		case l.has("owner"):
			forwarded++
			if l.str("owner") != want || l.On == want {
				t.Errorf("%s logged owner %q for %s, owner is %s: %v", l.On, l.str("owner"), l.str("repo"), want, l.logLine)
			}
			if !servedBy[l.str("req_id")][want] {
				t.Errorf("forwarded request %s (%s %s) from %s: no line with that req_id on the owner %s",
					l.str("req_id"), l.str("method"), l.str("path"), l.On, want)
			}
		case l.On != want:
			t.Errorf("%s served %s %s itself, but %s owns %s: %v", l.On, l.str("method"), l.str("path"), want, l.str("repo"), l.logLine)
		}
	}
	for _, m := range c.Members {
		if perMember[m.Host] == 0 {
			t.Errorf("member %s owns none of %d repositories: %v", m.Host, n, perMember)
		}
	}
	if forwarded == 0 {
		t.Errorf("no forwarded request was logged with an owner field")
	}
	t.Logf("owners of %d repositories: %v; %d request lines, %d forwarded", n, perMember, len(lines), forwarded)
	c.requireNoMisroutes(t)
}

// TestClusterHopForgery sends client requests carrying a made-up
// X-Berth-Hop header (garbage, the zot-style hop count, well-formed
// values with a bad signature, a stale timestamp, the failover flag): each
// is refused with 403 and an OCI error DENIED, through every member and
// HAProxy, and nothing changes in storage or metadata.
func TestClusterHopForgery(t *testing.T) {
	defer timed(t)()
	c := startCluster(t, clusterOpts{LB: true})
	const repo = "hop/forge"
	goodDigest, _ := c.Members[0].pushImage(t, repo, "v1")
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	configDigest := c.Members[0].pushBlob(t, repo, config)
	newManifest := imageManifest(config, nil, map[string]string{"forged": "yes"})

	base := snapshot(t, c.StorageRoot())
	baseAPI := apiState(t, c.Members[0], repo)
	now := time.Now().Unix()
	var forged []string
	for _, m := range c.Members {
		for _, fo := range []string{"0", "1"} {
			forged = append(forged, fmt.Sprintf("v1 ts=%d nonce=%s from=%s fo=%s sig=%s", now, randHex(12), m.Host, fo, randHex(32)))
		}
	}
	forged = append(forged,
		"1", "garbage", randHex(32), "v1", "v1 ts= nonce= from= fo= sig=",
		fmt.Sprintf("v1 ts=%d nonce=%s from=%s fo=0 sig=%s", now-3600, randHex(12), c.Members[1].Host, randHex(32)),
		fmt.Sprintf("v0 ts=%d nonce=%s from=%s fo=0 sig=%s", now, randHex(12), c.Members[1].Host, randHex(32)),
		fmt.Sprintf("v2 ts=%d nonce=%s from=%s fo=0 sig=%s extra=1", now, randHex(12), c.Members[1].Host, randHex(32)),
	)
	type req struct {
		method, path string
		hdr          map[string]string
		body         []byte
	}
	reqs := []req{
		{"GET", "/v2/" + repo + "/manifests/v1", map[string]string{"Accept": mtManifest}, nil},
		{"HEAD", "/v2/" + repo + "/manifests/v1", nil, nil},
		{"PUT", "/v2/" + repo + "/manifests/forged", map[string]string{"Content-Type": mtManifest}, newManifest},
		{"DELETE", "/v2/" + repo + "/manifests/" + goodDigest, nil, nil},
		{"GET", "/v2/" + repo + "/tags/list", nil, nil},
		{"GET", "/v2/" + repo + "/blobs/" + configDigest, nil, nil},
		{"DELETE", "/v2/" + repo + "/blobs/" + configDigest, nil, nil},
		{"POST", "/v2/" + repo + "/blobs/uploads/", nil, nil},
		{"POST", "/v2/" + repo + "/blobs/uploads/?digest=" + sha256Digest([]byte("x")), map[string]string{"Content-Type": "application/octet-stream"}, []byte("x")},
		{"GET", "/v2/" + repo + "/referrers/" + goodDigest, nil, nil},
	}
	count := 0
	for _, e := range c.entries() {
		for _, v := range forged {
			for _, rq := range reqs {
				h := map[string]string{"X-Berth-Hop": v}
				for k, x := range rq.hdr {
					h[k] = x
				}
				res := e.do(t, rq.method, rq.path, h, rq.body)
				count++
				if res.Status != http.StatusForbidden {
					t.Errorf("%s %s via %s with X-Berth-Hop %q: %s, want 403", rq.method, rq.path, c.name(e), v, res)
					continue
				}
				if rq.method != "HEAD" {
					requireErrorCode(t, res, "DENIED")
				}
			}
		}
	}
	t.Logf("%d forged requests refused", count)
	if d := diffSnapshots(base, snapshot(t, c.StorageRoot())); d != "" {
		t.Errorf("storage changed by forged requests:\n%s", d)
	}
	for _, e := range c.entries() {
		if got := apiState(t, e, repo); got != baseAPI {
			t.Errorf("metadata via %s changed by forged requests:\nbefore: %s\nafter:  %s", c.name(e), baseAPI, got)
		}
		res := e.do(t, "GET", "/v2/"+repo+"/manifests/v1", map[string]string{"Accept": mtManifest}, nil)
		if res.Status != 200 || sha256Digest(res.Body) != goodDigest {
			t.Errorf("GET %s:v1 via %s after forged requests: %s", repo, c.name(e), res)
		}
	}
	// The same requests without the header are served (the refusals were
	// about the header, not the requests).
	if res := c.LBReg.do(t, "PUT", "/v2/"+repo+"/manifests/forged", map[string]string{"Content-Type": mtManifest}, newManifest); res.Status != 201 {
		t.Errorf("PUT without a hop header: %s", res)
	}
}

// op is one client command of the failover load.
type op struct {
	kind       string // pull or push
	entry      string // host the client talked to
	repo, tag  string
	start, end time.Time
	err        error
	out        string
	digest     string // pull: what was pulled; push: what was pushed
}

// TestClusterFailover kills -9 one member while crane pulls (and pushes)
// run through HAProxy and through a surviving member, then restarts it.
func TestClusterFailover(t *testing.T) {
	defer timed(t)()
	crane := tool(t, "crane")
	c := startCluster(t, clusterOpts{LB: true})
	env := clientEnv(t)
	work := t.TempDir()
	var tars []string
	for i := 0; i < 8; i++ {
		p := filepath.Join(work, fmt.Sprintf("l%d.tar", i))
		writeLayerTar(t, p, 32<<10+i*40<<10)
		tars = append(tars, p)
	}

	// 12 repositories, their v1 pushed through member 1.
	marks := c.marks()
	var repos []string
	want := map[string]string{} // repo:tag -> digest
	for i := 0; i < 12; i++ {
		repo := fmt.Sprintf("fo/r%02d", i)
		repos = append(repos, repo)
		out := runStdout(t, crane, "append", "--insecure", "--oci-empty-base", "-f", tars[i%len(tars)], "-t", c.Members[0].Host+"/"+repo+":v1")
		_, d, _ := strings.Cut(strings.TrimSpace(out), "@")
		want[repo+":v1"] = d
	}
	time.Sleep(100 * time.Millisecond)
	owner := map[string]string{}
	count := map[string]int{}
	for repo, s := range storedBy(c.requests(t, marks)) {
		if len(s) != 1 {
			t.Fatalf("%s stored by %v before the kill, want one member", repo, s)
		}
		for m := range s {
			owner[repo] = m
			count[m]++
		}
	}
	// The victim is the member owning the most repositories; the client
	// talks to HAProxy and to the first other member ("survivor").
	victim := c.Members[0]
	for _, m := range c.Members {
		if count[m.Host] > count[victim.Host] {
			victim = m
		}
	}
	var survivors []*reg
	for _, m := range c.Members {
		if m != victim {
			survivors = append(survivors, m)
		}
	}
	surv := survivors[0]
	var victimRepos []string
	for _, r := range repos {
		if owner[r] == victim.Host {
			victimRepos = append(victimRepos, r)
		}
	}
	victimName := fmt.Sprintf("m%d", slices.Index(c.Members, victim)+1)
	t.Logf("owners: %v; victim %s (%s) owns %v; clients use HAProxy and %s", count, victimName, victim.Host, victimRepos, surv.Host)

	// Upload sessions that outlive their owner: started on the victim
	// (through HAProxy) before the kill, continued on the member serving
	// in its place during the outage, finished on the victim after its
	// restart. Sessions live in the bucket, so any member can go on.
	var sessions []*session
	for i, repo := range victimRepos {
		if i == 2 {
			break
		}
		sessions = append(sessions, startSession(t, c.LBReg, repo, []int{6<<20 + 123, 3 << 20, 1<<20 + 7}))
	}

	// The load: two pullers through HAProxy, one through the survivor, one
	// pusher alternating between them; each records every command.
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	results := make(chan []op, 4)
	puller := func(entry string, seed int) {
		var ops []op
		for i := seed; ctx.Err() == nil; i++ {
			repo := repos[i%len(repos)]
			dir := filepath.Join(work, fmt.Sprintf("pull-%s-%d-%d", entry, seed, i))
			o := op{kind: "pull", entry: entry, repo: repo, tag: "v1", start: time.Now()}
			res := execCmd(context.Background(), env, work, time.Minute, crane, "pull", "--insecure", "--format", "oci", entry+"/"+repo+":v1", dir)
			o.end, o.err, o.out = time.Now(), res.Err, res.Combined
			if o.err == nil {
				idx, err := readIndex(filepath.Join(dir, "index.json"))
				if err != nil || len(idx.Manifests) != 1 {
					o.err = fmt.Errorf("pulled layout: %v %+v", err, idx)
				} else {
					o.digest = idx.Manifests[0].Digest
				}
			}
			os.RemoveAll(dir)
			ops = append(ops, o)
		}
		results <- ops
	}
	pusher := func() {
		var ops []op
		for i := 0; ctx.Err() == nil; i++ {
			entry := c.LB.Host
			if i%2 == 1 {
				entry = surv.Host
			}
			repo := repos[(i/2)%len(repos)] // each repository via both entries
			tag := fmt.Sprintf("p%d", i)
			o := op{kind: "push", entry: entry, repo: repo, tag: tag, start: time.Now()}
			res := execCmd(context.Background(), env, work, time.Minute, crane, "append", "--insecure", "--oci-empty-base",
				"-f", tars[i%len(tars)], "-t", entry+"/"+repo+":"+tag)
			o.end, o.err, o.out = time.Now(), res.Err, res.Combined
			if o.err == nil {
				_, o.digest, _ = strings.Cut(strings.TrimSpace(res.Stdout), "@")
			}
			ops = append(ops, o)
		}
		results <- ops
	}
	go puller(c.LB.Host, 0)
	go puller(c.LB.Host, 5)
	go puller(surv.Host, 2)
	go pusher()

	time.Sleep(1500 * time.Millisecond)
	// Watch detection: HAProxy's view and the survivors' logs.
	detected := make(chan map[string]time.Duration, 1)
	killStart := time.Now()
	victim.Kill9()
	killEnd := time.Now()
	go func() {
		got := map[string]time.Duration{}
		for time.Since(killStart) < 25*time.Second && len(got) < 1+len(survivors) {
			if _, ok := got["haproxy"]; !ok {
				if st, err := c.LB.status(); err == nil && strings.HasPrefix(st[victimName], "DOWN") {
					got["haproxy"] = time.Since(killStart)
				}
			}
			for _, s := range survivors {
				if _, ok := got[s.Host]; !ok {
					if up, _ := peerState(s, victim.Host); !up {
						got[s.Host] = time.Since(killStart)
					}
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		detected <- got
	}()
	time.Sleep(5 * time.Second)
	stop()
	var ops []op
	for i := 0; i < 4; i++ {
		ops = append(ops, <-results...)
	}
	det := <-detected
	t.Logf("kill -9 of %s took %s; detection after the kill: %v", victim.Host, killEnd.Sub(killStart), det)
	for _, who := range append([]string{"haproxy"}, survivors[0].Host, survivors[1].Host) {
		if d, ok := det[who]; !ok || d > 20*time.Second {
			t.Errorf("%s did not see %s down within 20s of the kill (after %v)", who, victim.Host, d)
		}
	}

	// Judge every command. A command may fail only if it was running at
	// the moment of the kill AND some request of it could have been on the
	// killed member then: a request in flight on a process that dies gets a
	// reset connection, and neither HAProxy (retries cover only failed
	// connects) nor a forwarding member (which retries only requests whose
	// owner refused the connection) can replay it. A command could have had
	// a request there when it went through HAProxy (round robin spreads its
	// requests over all members) or when its repository is owned by the
	// killed member (a member forwards there). Everything else - every
	// command started after the kill, and every command on the survivor for
	// repositories the victim does not own - must succeed: new connections
	// to the dead member are refused, and HAProxy (retries + redispatch) and
	// the members (mark down, next member) fail over.
	var pulls, pushes, failed, excused int
	for _, o := range ops {
		if o.kind == "pull" {
			pulls++
		} else {
			pushes++
		}
		inFlight := o.start.Before(killEnd) && o.end.After(killStart)
		touches := o.entry == c.LB.Host || owner[o.repo] == victim.Host
		if o.err != nil {
			failed++
			if inFlight && touches {
				excused++
				t.Logf("excused: %s %s/%s:%s via %s (%s - %s, in flight at the kill): %v", o.kind, o.entry, o.repo, o.tag, o.entry,
					o.start.Sub(killStart).Round(time.Millisecond), o.end.Sub(killStart).Round(time.Millisecond), o.err)
				continue
			}
			t.Errorf("%s of %s:%s via %s failed (started %s after the kill, ended %s after; in flight at the kill: %v; may touch the victim: %v): %v\n%s",
				o.kind, o.repo, o.tag, o.entry, o.start.Sub(killStart).Round(time.Millisecond), o.end.Sub(killStart).Round(time.Millisecond),
				inFlight, touches, o.err, tailString(o.out, 10))
			continue
		}
		if o.kind == "pull" && o.digest != want[o.repo+":v1"] {
			t.Errorf("pull of %s:v1 via %s: digest %s, want %s", o.repo, o.entry, o.digest, want[o.repo+":v1"])
		}
		if o.kind == "push" {
			want[o.repo+":"+o.tag] = o.digest
		}
	}
	var after int
	for _, o := range ops {
		if o.start.After(killEnd) {
			after++
		}
	}
	t.Logf("load: %d pulls, %d pushes, %d started after the kill; %d failed, %d of them excused", pulls, pushes, after, failed, excused)
	// For the record: error answers the members gave during the load
	// (clients may have retried them).
	errs := map[string]int{}
	for _, l := range c.requests(t, marks) {
		if l.num("status") >= 500 {
			errs[fmt.Sprintf("%s %s %d owner=%q", l.On, l.str("method"), l.num("status"), l.str("owner"))]++
		}
	}
	t.Logf("5xx answers logged by the survivors during the load: %v", errs)
	// Requests a survivor retried after a failed forward to the dead
	// member: its access line's "owner" must name the member that served
	// the request (the one that logged the req_id without "owner"), or be
	// absent when it served the request itself - not the dead member.
	retried := map[string]string{} // req_id -> member that retried
	for _, m := range survivors {
		for _, l := range m.logSince(t, marks[m.Host]) {
			if l.str("message") == "retrying on the next member" {
				retried[l.str("req_id")] = m.Host
			}
		}
	}
	loadLines := c.requests(t, marks)
	servedBy := map[string]string{}
	for _, l := range loadLines {
		if !l.has("owner") {
			servedBy[l.str("req_id")] = l.On
		}
	}
	for _, l := range loadLines {
		if retried[l.str("req_id")] != l.On || !l.has("owner") {
			continue
		}
		by := servedBy[l.str("req_id")]
		if by == "" && l.str("owner") == l.On {
			continue // served locally and says so
		}
		if l.str("owner") != by {
			if by == "" {
				by = l.On + " itself (no other member logged the req_id)"
			}
			t.Errorf("%s retried %s %s (req_id %s) after failing to reach %s; %s served it, but the access line says owner %q: %v",
				l.On, l.str("method"), l.str("path"), l.str("req_id"), victim.Host, by, l.str("owner"), l.logLine)
		}
	}
	t.Logf("%d requests were retried on the next member after a failed forward", len(retried))

	// The sessions go on through a survivor, from where they stood.
	for _, ss := range sessions {
		ss.next(t, surv)
	}

	// Repositories of the dead member are served by one other member.
	outageMarks := c.marks()
	for i, repo := range victimRepos {
		for _, e := range []*reg{c.LBReg, survivors[0], survivors[1]} {
			ref := e.Host + "/" + repo + ":v1"
			res := execCmd(context.Background(), env, work, time.Minute, crane, "digest", "--insecure", ref)
			if d := strings.TrimSpace(res.Stdout); res.Err != nil || d != want[repo+":v1"] {
				t.Errorf("during the outage, crane digest %s: %q (%v), want %s", ref, d, res.Err, want[repo+":v1"])
			}
		}
		dir := filepath.Join(work, "outage-pull-"+strconv.Itoa(i))
		run(t, crane, "pull", "--insecure", "--format", "oci", survivors[1].Host+"/"+repo+":v1", dir)
		if d := layoutDigest(t, dir, ""); d != want[repo+":v1"] {
			t.Errorf("during the outage, pull of %s:v1 via %s: %s, want %s", repo, survivors[1].Host, d, want[repo+":v1"])
		}
		for j, e := range []*reg{survivors[0], c.LBReg} {
			tag := fmt.Sprintf("outage%d", j)
			out := runStdout(t, crane, "append", "--insecure", "--oci-empty-base", "-f", tars[(i+j)%len(tars)], "-t", e.Host+"/"+repo+":"+tag)
			_, d, _ := strings.Cut(strings.TrimSpace(out), "@")
			want[repo+":"+tag] = d
		}
	}
	time.Sleep(100 * time.Millisecond)
	outageLines := c.requests(t, outageMarks)
	failoverOwner := map[string]string{}
	for _, repo := range victimRepos {
		s := storedBy(outageLines)[repo]
		if len(s) != 1 {
			t.Errorf("during the outage, %s's manifest PUTs were stored by %v, want exactly one member", repo, s)
			continue
		}
		for m, k := range s {
			failoverOwner[repo] = m
			if k != 2 {
				t.Errorf("during the outage, %s stored %d of the 2 manifest PUTs of %s", m, k, repo)
			}
		}
		for _, l := range outageLines {
			if l.str("repo") == repo && l.has("owner") && l.str("owner") != failoverOwner[repo] {
				t.Errorf("during the outage, %s forwarded %s %s to %s, but %s serves it", l.On, l.str("method"), l.str("path"), l.str("owner"), failoverOwner[repo])
			}
		}
	}
	t.Logf("during the outage the victim's repositories were served by %v", failoverOwner)

	// Restart: HAProxy and the survivors see it up, and it owns its
	// repositories again.
	restartAt := time.Now()
	victim.start()
	c.LB.waitStatus(t, map[string]string{"m1": "UP", "m2": "UP", "m3": "UP"}, 10*time.Second)
	c.waitPeersUp(t, nil, 10*time.Second)
	t.Logf("restarted %s; HAProxy and members see it up after %s", victim.Host, time.Since(restartAt).Round(time.Millisecond))
	backMarks := c.marks()
	for i, repo := range victimRepos {
		out := runStdout(t, crane, "append", "--insecure", "--oci-empty-base", "-f", tars[i%len(tars)], "-t", surv.Host+"/"+repo+":back")
		_, d, _ := strings.Cut(strings.TrimSpace(out), "@")
		want[repo+":back"] = d
	}
	time.Sleep(100 * time.Millisecond)
	backLines := c.requests(t, backMarks)
	for _, repo := range victimRepos {
		if s := storedBy(backLines)[repo]; len(s) != 1 || s[victim.Host] != 1 {
			t.Errorf("after the restart, %s's manifest PUT was stored by %v, want its owner %s", repo, s, victim.Host)
		}
		for _, l := range backLines {
			if l.str("repo") == repo && l.On == surv.Host && l.str("owner") != victim.Host {
				t.Errorf("after the restart, %s logged %s %s for %s with owner %q, want %s", surv.Host, l.str("method"), l.str("path"), repo, l.str("owner"), victim.Host)
			}
		}
	}

	// The sessions end on their owner again.
	for _, ss := range sessions {
		ss.next(t, victim)
		ss.finish(t, c.LBReg)
		for _, e := range c.entries() {
			ss.check(t, e)
		}
	}

	// A second outage: what the owner wrote after coming back is what the
	// member standing in for it serves now (no stale state from the first
	// outage).
	//
	// And the first request with a body that a member forwards to the dead
	// owner: the owner refuses the connection, so no byte of it reached
	// anyone and the member can serve it in the owner's place, as it does
	// for requests without a body. Only requests in flight on the dead
	// member may fail. (An upload going on through a member is the case:
	// skopeo does not retry a failed PATCH.)
	late := startSession(t, surv, victimRepos[0], []int{1 << 20, 1 << 20})
	victim.Kill9()
	killedAgain := time.Now()
	chunk := late.data[late.sent:]
	res := surv.do(t, "PATCH", late.path, map[string]string{
		"Content-Type":  "application/octet-stream",
		"Content-Range": fmt.Sprintf("%d-%d", late.sent, len(late.data)-1),
	}, chunk)
	patchAfter := time.Since(killedAgain).Round(time.Millisecond)
	// A GET right after, through the other survivor (which has not tried
	// the dead member yet): it is retried on the next member, and the
	// access line of the forwarding member names who served it.
	other := survivors[1]
	get := other.do(t, "GET", "/v2/"+victimRepos[0]+"/manifests/v1", map[string]string{"Accept": mtManifest}, nil)
	if get.Status != 200 || sha256Digest(get.Body) != want[victimRepos[0]+":v1"] {
		t.Errorf("GET %s:v1 via %s right after its owner was killed: %s", victimRepos[0], other.Host, get)
	}
	time.Sleep(100 * time.Millisecond)
	getID := get.Header.Get("X-Request-Id")
	var getLine logLine
	getServer := ""
	for _, m := range survivors {
		for _, l := range m.logSince(t, 0) {
			if l.str("req_id") != getID || l.str("message") != "request" {
				continue
			}
			if m == other {
				getLine = l
			} else if !l.has("owner") {
				getServer = m.Host
			}
		}
	}
	switch {
	case getLine == nil:
		t.Errorf("no access line on %s for the GET %s", other.Host, getID)
	case getServer == "" && getLine.has("owner") && getLine.str("owner") != other.Host:
		t.Errorf("%s served the GET (req_id %s) itself after failing to reach %s, but its access line says owner %q: %v",
			other.Host, getID, victim.Host, getLine.str("owner"), getLine)
	case getServer != "" && getLine.str("owner") != getServer:
		t.Errorf("%s forwarded the GET (req_id %s) to %s after failing to reach %s, but its access line says owner %q: %v",
			other.Host, getID, getServer, victim.Host, getLine.str("owner"), getLine)
	}
	if res.Status != http.StatusAccepted {
		t.Errorf("PATCH via %s to an upload of %s, %s after its owner %s was killed (nothing in flight there): %s; want 202 from the next member",
			surv.Host, late.repo, patchAfter, victim.Host, res)
		for _, l := range surv.logSince(t, 0) {
			if l.str("req_id") == res.Header.Get("X-Request-Id") {
				t.Logf("%s log: %v", surv.Host, l)
			}
		}
		// Go on as a client would after a while.
		time.Sleep(1100 * time.Millisecond)
		res = surv.do(t, "GET", late.path, nil, nil)
		if res.Status == http.StatusNoContent && res.Header.Get("Range") == fmt.Sprintf("0-%d", late.sent-1) {
			late.path = uploadPath(t, res)
			late.next(t, surv)
		} else {
			t.Fatalf("upload status after the failed PATCH: %s", res)
		}
	} else {
		late.sent = len(late.data)
		late.path = uploadPath(t, res)
	}
	late.finish(t, surv)
	sessions = append(sessions, late)
	for _, e := range append([]*reg{c.LBReg}, survivors...) {
		for _, repo := range victimRepos {
			ref := e.Host + "/" + repo + ":back"
			res := execCmd(context.Background(), env, work, time.Minute, crane, "digest", "--insecure", ref)
			if d := strings.TrimSpace(res.Stdout); res.Err != nil || d != want[repo+":back"] {
				t.Errorf("second outage: crane digest %s: %q (%v), want %s", ref, d, res.Err, want[repo+":back"])
			}
			tags := listTags(t, e, repo)
			for _, tag := range []string{"v1", "outage0", "outage1", "back"} {
				if !slices.Contains(tags, tag) {
					t.Errorf("second outage: tags of %s via %s lack %s: %q", repo, c.name(e), tag, tags)
				}
			}
		}
		for _, ss := range sessions {
			ss.check(t, e)
		}
	}
	victim.start()
	c.LB.waitStatus(t, map[string]string{"m1": "UP", "m2": "UP", "m3": "UP"}, 10*time.Second)
	c.waitPeersUp(t, nil, 10*time.Second)

	// Everything acknowledged - before, during and after the outage - pulls
	// with the same digest from every member and HAProxy, with every blob.
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, e := range c.entries() {
		for _, k := range keys {
			repo, tag, _ := strings.Cut(k, ":")
			res := e.do(t, "GET", "/v2/"+repo+"/manifests/"+tag, map[string]string{"Accept": mtManifest}, nil)
			if res.Status != 200 || sha256Digest(res.Body) != want[k] {
				t.Errorf("GET %s via %s: %d digest %s, want %s", k, c.name(e), res.Status, sha256Digest(res.Body), want[k])
				continue
			}
			var m struct {
				Config struct {
					Digest string `json:"digest"`
					Size   int    `json:"size"`
				} `json:"config"`
				Layers []struct {
					Digest string `json:"digest"`
					Size   int    `json:"size"`
				} `json:"layers"`
			}
			must(t, json.Unmarshal(res.Body, &m))
			for _, b := range append(m.Layers, m.Config) {
				h := e.do(t, "HEAD", "/v2/"+repo+"/blobs/"+b.Digest, nil, nil)
				if h.Status != 200 || h.Header.Get("Content-Length") != strconv.Itoa(b.Size) {
					t.Errorf("HEAD blob %s of %s via %s: %d length %q, want 200 %d", b.Digest, k, c.name(e), h.Status, h.Header.Get("Content-Length"), b.Size)
				}
			}
		}
		// And one full pull per endpoint of something pushed during the outage.
		if len(victimRepos) > 0 {
			ref := e.Host + "/" + victimRepos[0] + ":outage0"
			dir := filepath.Join(t.TempDir(), "final")
			run(t, crane, "pull", "--insecure", "--format", "oci", ref, dir)
			if d := layoutDigest(t, dir, ""); d != want[victimRepos[0]+":outage0"] {
				t.Errorf("pull %s: %s, want %s", ref, d, want[victimRepos[0]+":outage0"])
			}
		}
	}
	t.Logf("%d acknowledged tags verified through %d endpoints", len(keys), len(c.entries()))
	requireStorageOK(t, c.StorageRoot())
}

// TestClusterDNSRoundRobin pushes with skopeo and crane to reg.test:P, a
// name that resolves to all three members, with no load balancer: first
// with a private /etc/hosts listing the members in a rotated order per
// command (each command enters through one member), then through a DNS
// server rotating its answer on every query (each new connection may land
// on another member, so one upload can start on one member and finish on
// another). Everything pulls back through the other members.
func TestClusterDNSRoundRobin(t *testing.T) {
	if err := unshareAvailable(); err != nil {
		t.Skipf("needs a private mount namespace to give clients their own /etc/hosts: %v", err)
	}
	defer timed(t)()
	crane, skopeo := tool(t, "crane"), tool(t, "skopeo")
	c := startCluster(t, clusterOpts{})
	host := fmt.Sprintf("reg.test:%d", c.Port)
	work := t.TempDir()

	// pushAll pushes 10 images with each client; with wantSplit, at least
	// one skopeo push must have entered through several members.
	pushAll := func(t *testing.T, prefix string, wantSplit bool, etc func(i int) (hosts, resolv string)) {
		marks := c.marks()
		type pushed struct{ repo, digest, first string }
		var all []pushed
		for i := 0; i < 10; i++ {
			hosts, resolv := etc(i)
			first := memberIPs[i%3]
			lt := filepath.Join(work, fmt.Sprintf("%s-l%d.tar", prefix, i))
			writeLayerTar(t, lt, 256<<10+i*1024)
			// crane: a new 1-layer image per push.
			repo := fmt.Sprintf("%s/crane%d", prefix, i)
			out := runStdout(t, inPrivateEtc(hosts, resolv, crane, "append", "--insecure", "--oci-empty-base", "-f", lt, "-t", host+"/"+repo+":v1")...)
			_, d, _ := strings.Cut(strings.TrimSpace(out), "@")
			all = append(all, pushed{repo, d, first})
			// skopeo: a docker-archive made offline, so every push uploads new blobs.
			arch := filepath.Join(work, fmt.Sprintf("%s-img%d.tar", prefix, i))
			run(t, crane, "append", "--oci-empty-base", "-f", lt, "-t", "example.test/img:v1", "-o", arch)
			repo = fmt.Sprintf("%s/skopeo%d", prefix, i)
			df := filepath.Join(work, fmt.Sprintf("%s-digest%d", prefix, i))
			run(t, inPrivateEtc(hosts, resolv, skopeo, "--insecure-policy", "copy", "--dest-tls-verify=false", "--digestfile", df,
				"docker-archive:"+arch, "docker://"+host+"/"+repo+":v1")...)
			b, err := os.ReadFile(df)
			must(t, err)
			all = append(all, pushed{repo, strings.TrimSpace(string(b)), first})
		}
		// Where did the clients' requests enter? (Requests that arrived
		// forwarded share their req_id with the forwarder's line.)
		time.Sleep(100 * time.Millisecond)
		lines := c.requests(t, marks)
		fwd := map[string]bool{}
		for _, l := range lines {
			if l.has("owner") {
				fwd[l.str("req_id")] = true
			}
		}
		entries := map[string]map[string]int{} // repo -> entry member -> requests
		total := map[string]int{}
		for _, l := range lines {
			if !strings.HasPrefix(l.str("repo"), prefix+"/") || (!l.has("owner") && fwd[l.str("req_id")]) {
				continue
			}
			if entries[l.str("repo")] == nil {
				entries[l.str("repo")] = map[string]int{}
			}
			entries[l.str("repo")][l.On]++
			total[l.On]++
		}
		multi := 0
		for _, p := range all {
			if strings.Contains(p.repo, "/skopeo") && len(entries[p.repo]) > 1 {
				multi++
			}
		}
		t.Logf("%s: requests entered per member %v; skopeo pushes spread over several members: %d of 10", prefix, total, multi)
		if len(total) < 2 {
			t.Errorf("%s: every request entered through one member %v: the name did not rotate", prefix, total)
		}
		if wantSplit && multi == 0 {
			t.Errorf("%s: no skopeo push had requests on several members: the per-connection rotation was not exercised", prefix)
		}
		// Pull back through the members the hosts order did not put first
		// (with DNS rotation, through the two others of a fixed rotation).
		for i, p := range all {
			for _, m := range c.Members {
				if m.Addr == p.first {
					continue
				}
				ref := m.Host + "/" + p.repo + ":v1"
				if d := strings.TrimSpace(runStdout(t, crane, "digest", "--insecure", ref)); d != p.digest {
					t.Errorf("%s: digest %s, pushed %s", ref, d, p.digest)
				}
				if i%4 == 0 {
					dir := filepath.Join(t.TempDir(), "pull")
					run(t, crane, "pull", "--insecure", "--format", "oci", ref, dir)
					if d := layoutDigest(t, dir, ""); d != p.digest {
						t.Errorf("pull %s: %s, pushed %s", ref, d, p.digest)
					}
				}
			}
		}
		requireStorageOK(t, c.StorageRoot())
	}

	t.Run("hosts-file", func(t *testing.T) {
		defer timed(t)()
		pushAll(t, "dns-hosts", false, func(i int) (string, string) {
			var b strings.Builder
			b.WriteString("127.0.0.1 localhost\n")
			for j := 0; j < 3; j++ {
				fmt.Fprintf(&b, "%s reg.test\n", memberIPs[(i+j)%3])
			}
			p := filepath.Join(work, fmt.Sprintf("hosts%d", i))
			must(t, os.WriteFile(p, []byte(b.String()), 0o644))
			return p, ""
		})
	})

	t.Run("dns-rotation", func(t *testing.T) {
		defer timed(t)()
		// The resolver on a private loopback address, port 53 (clients
		// cannot be given another port).
		dnsIP := fmt.Sprintf("127.53.%d.%d", 1+time.Now().UnixNano()%250, 1+os.Getpid()%250)
		dns := startDNS(t, dnsIP+":53", "reg.test", memberIPs)
		hosts := filepath.Join(work, "hosts-dns")
		must(t, os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"), 0o644))
		resolv := filepath.Join(work, "resolv.conf")
		must(t, os.WriteFile(resolv, []byte("nameserver "+dnsIP+"\noptions timeout:2 attempts:2\n"), 0o644))
		pushAll(t, "dns-rr", true, func(int) (string, string) { return hosts, resolv })
		dns.mu.Lock()
		t.Logf("DNS server answered %d A queries", dns.queries)
		dns.mu.Unlock()
	})
	c.requireNoMisroutes(t)
}

// session is a chunked blob upload driven by raw HTTP, one chunk per call
// to next, through whichever endpoint the test picks.
type session struct {
	repo   string
	data   []byte
	chunks []int
	sent   int
	path   string // upload URL path (and query) from the last Location
	digest string
}

// startSession POSTs an upload to repo through e and sends the first chunk.
func startSession(t *testing.T, e *reg, repo string, chunks []int) *session {
	t.Helper()
	total := 0
	for _, n := range chunks {
		total += n
	}
	ss := &session{repo: repo, data: randBytes(t, total), chunks: chunks}
	ss.digest = sha256Digest(ss.data)
	res := e.do(t, "POST", "/v2/"+repo+"/blobs/uploads/", nil, nil)
	if res.Status != http.StatusAccepted {
		t.Fatalf("POST upload to %s via %s: %s", repo, e.Host, res)
	}
	ss.path = uploadPath(t, res)
	ss.next(t, e)
	return ss
}

// uploadPath is the path and query of a Location header, to be sent to
// any endpoint.
func uploadPath(t *testing.T, res *resp) string {
	t.Helper()
	loc := res.Header.Get("Location")
	if loc == "" {
		t.Fatalf("no Location in %s", res)
	}
	if i := strings.Index(loc, "://"); i >= 0 {
		rest := loc[i+3:]
		if j := strings.Index(rest, "/"); j >= 0 {
			return rest[j:]
		}
	}
	return loc
}

// next checks the upload status through e and sends the next chunk there.
func (ss *session) next(t *testing.T, e *reg) {
	t.Helper()
	if ss.sent > 0 {
		st := e.do(t, "GET", ss.path, nil, nil)
		if st.Status != http.StatusNoContent || st.Header.Get("Range") != fmt.Sprintf("0-%d", ss.sent-1) {
			t.Fatalf("upload %s of %s via %s: status %s, want 204 Range 0-%d", ss.path, ss.repo, e.Host, st, ss.sent-1)
		}
		ss.path = uploadPath(t, st)
	}
	k := 0
	for i, off := 0, 0; i < len(ss.chunks); i++ {
		if off == ss.sent {
			k = i
			break
		}
		off += ss.chunks[i]
	}
	chunk := ss.data[ss.sent : ss.sent+ss.chunks[k]]
	res := e.do(t, "PATCH", ss.path, map[string]string{
		"Content-Type":  "application/octet-stream",
		"Content-Range": fmt.Sprintf("%d-%d", ss.sent, ss.sent+len(chunk)-1),
	}, chunk)
	if res.Status != http.StatusAccepted {
		t.Fatalf("PATCH chunk %d (%d bytes at %d) of %s via %s: %s", k, len(chunk), ss.sent, ss.repo, e.Host, res)
	}
	ss.sent += len(chunk)
	if got := res.Header.Get("Range"); got != fmt.Sprintf("0-%d", ss.sent-1) {
		t.Errorf("PATCH chunk %d of %s via %s: Range %q, want 0-%d", k, ss.repo, e.Host, got, ss.sent-1)
	}
	ss.path = uploadPath(t, res)
}

// finish closes the upload through e.
func (ss *session) finish(t *testing.T, e *reg) {
	t.Helper()
	if ss.sent != len(ss.data) {
		t.Fatalf("finish: %d of %d bytes sent", ss.sent, len(ss.data))
	}
	res := e.do(t, "PUT", withQuery(ss.path, "digest="+ss.digest), nil, nil)
	if res.Status != http.StatusCreated {
		t.Fatalf("closing PUT of the upload to %s via %s: %s", ss.repo, e.Host, res)
	}
}

// check reads the finished blob back through e.
func (ss *session) check(t *testing.T, e *reg) {
	t.Helper()
	res := e.do(t, "GET", "/v2/"+ss.repo+"/blobs/"+ss.digest, nil, nil)
	if res.Status != 200 || sha256Digest(res.Body) != ss.digest {
		t.Errorf("GET blob %s of %s via %s: %d, %d bytes hashing to %s", ss.digest, ss.repo, e.Host, res.Status, len(res.Body), sha256Digest(res.Body))
	}
}
