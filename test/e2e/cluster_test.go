package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
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
