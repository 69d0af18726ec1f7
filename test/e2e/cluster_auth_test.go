package e2e

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Users of the cluster auth test: alice may do everything under auth/,
// reader may only read there.
var clusterAuthUsers = map[string]string{
	"alice":  "alice-Cl-5d1e",
	"reader": "reader-Cl-9e3a",
}

func clusterAccessControl() map[string]any {
	return map[string]any{
		"repositories": map[string]any{
			"auth/**": map[string]any{"policies": []any{
				map[string]any{"users": []string{"alice"}, "actions": []string{"read", "create", "update", "delete"}},
				map[string]any{"users": []string{"reader"}, "actions": []string{"read"}},
			}},
		},
	}
}

// TestClusterAuth runs three members with htpasswd authentication and
// access control (the same files on every member) over TLS, behind HAProxy
// (TLS terminated and re-encrypted). skopeo --creds, oras -u/-p, crane auth
// login and regctl registry login push and pull through HAProxy and
// directly against members with identical digests. A read-only user cannot
// write, also when entering at a member that does not own the repository.
// A made-up hop header - garbage, or even one correctly signed with the
// cluster's key - grants nothing: without credentials it gets 401/403,
// with read-only credentials it cannot write. Forwarded requests are
// authorised again by the owner, which logs the user.
func TestClusterAuth(t *testing.T) {
	defer timed(t)()
	crane, skopeo, oras, regctl := tool(t, "crane"), tool(t, "skopeo"), tool(t, "oras"), tool(t, "regctl")
	pw := clusterAuthUsers
	alice, reader := "alice", "reader"
	c := startSecureCluster(t, secureOpts{LB: true, Users: pw, AccessControl: clusterAccessControl()})
	m1, m2, m3, lb := c.Members[0], c.Members[1], c.Members[2], c.LBReg
	start := c.marks()
	work := t.TempDir()
	layer := filepath.Join(work, "layer.tar")
	writeLayerTar(t, layer, 200<<10)
	caPEM := string(cmReadFile(t, c.PKI.CA))
	var hosts []string
	for _, m := range c.Members {
		hosts = append(hosts, m.Host)
	}
	ring := cmRing(t, hosts)
	nonOwner := func(repo string) *reg {
		for _, m := range c.Members {
			if m.Host != ring.Owner(repo) {
				return m
			}
		}
		return nil
	}

	t.Run("challenge", func(t *testing.T) {
		for _, e := range c.entries() {
			res := c.do(t, e, "GET", "/v2/", "", "", nil, nil)
			if res.Status != http.StatusUnauthorized || !strings.HasPrefix(res.Header.Get("WWW-Authenticate"), "Basic ") || ociErrorCode(res.Body) != "UNAUTHORIZED" {
				t.Errorf("anonymous GET /v2/ via %s: %s", c.name(e), res)
			}
			if res := c.do(t, e, "GET", "/v2/", alice, pw[alice], nil, nil); res.Status != http.StatusOK {
				t.Errorf("alice GET /v2/ via %s: %s", c.name(e), res)
			}
			if res := c.do(t, e, "GET", "/v2/", alice, "wrong", nil, nil); res.Status != http.StatusUnauthorized {
				t.Errorf("alice with a wrong password GET /v2/ via %s: %s", c.name(e), res)
			}
		}
	})

	// crane: log in everywhere, push through HAProxy, read through members.
	layout := filepath.Join(work, "layout")
	var craneDigest string
	t.Run("crane", func(t *testing.T) {
		for _, e := range c.entries() {
			c.must(t, crane, "auth", "login", e.Host, "-u", alice, "-p", pw[alice])
		}
		out := c.must(t, crane, "append", "--oci-empty-base", "-f", layer, "-t", lb.Host+"/auth/crane:v1")
		_, craneDigest, _ = strings.Cut(strings.TrimSpace(out), "@")
		for _, e := range c.Members {
			if d := strings.TrimSpace(c.must(t, crane, "digest", e.Host+"/auth/crane:v1")); d != craneDigest {
				t.Errorf("crane digest auth/crane:v1 via %s: %s, pushed %s", e.Host, d, craneDigest)
			}
		}
		c.must(t, crane, "pull", "--format", "oci", m3.Host+"/auth/crane:v1", layout)
		if d := layoutDigest(t, layout, ""); d != craneDigest {
			t.Errorf("crane pull via %s: %s, pushed %s", m3.Host, d, craneDigest)
		}
	})
	if craneDigest == "" {
		t.Fatal("nothing pushed")
	}

	t.Run("skopeo", func(t *testing.T) {
		sk := []string{skopeo, "--insecure-policy"}
		creds := alice + ":" + pw[alice]
		for i, e := range []*reg{m1, lb} {
			repo := fmt.Sprintf("auth/skopeo%d", i)
			df := filepath.Join(t.TempDir(), "digest")
			c.must(t, append(sk, "copy", "--dest-creds", creds, "--dest-cert-dir", c.PKI.CertDir, "--digestfile", df,
				"oci:"+layout, "docker://"+e.Host+"/"+repo+":v1")...)
			d := strings.TrimSpace(string(cmReadFile(t, df)))
			for _, from := range c.entries() {
				if from == e {
					continue
				}
				var insp struct{ Digest string }
				out := c.must(t, append(sk, "inspect", "--creds", creds, "--cert-dir", c.PKI.CertDir, "docker://"+from.Host+"/"+repo+":v1")...)
				if err := json.Unmarshal([]byte(out), &insp); err != nil || insp.Digest != d {
					t.Errorf("skopeo inspect %s:v1 via %s: %v %q, pushed %s via %s", repo, c.name(from), err, insp.Digest, d, c.name(e))
				}
			}
			dir := filepath.Join(t.TempDir(), "out")
			c.must(t, append(sk, "copy", "--src-creds", creds, "--src-cert-dir", c.PKI.CertDir,
				"docker://"+m2.Host+"/"+repo+":v1", "oci:"+dir+":v1")...)
			if got := layoutDigest(t, dir, "v1"); got != d {
				t.Errorf("skopeo copy %s:v1 via %s: %s, pushed %s", repo, m2.Host, got, d)
			}
		}
	})

	t.Run("oras", func(t *testing.T) {
		dir := t.TempDir()
		must(t, os.WriteFile(filepath.Join(dir, "artifact.txt"), []byte("oras through the cluster"), 0o644))
		ref := m2.Host + "/auth/oras:v1"
		res := execCmd(context.Background(), c.env(t), dir, cmdTimeout,
			oras, "push", "--ca-file", c.PKI.CA, "-u", alice, "-p", pw[alice], ref, "artifact.txt")
		if res.Err != nil {
			t.Fatalf("oras push: %v\n%s", res.Err, res.Combined)
		}
		for _, e := range []*reg{lb, m1, m3} {
			out := t.TempDir()
			c.must(t, oras, "pull", "--ca-file", c.PKI.CA, "-u", alice, "-p", pw[alice], "-o", out, e.Host+"/auth/oras:v1")
			if b, err := os.ReadFile(filepath.Join(out, "artifact.txt")); err != nil || string(b) != "oras through the cluster" {
				t.Errorf("oras pull via %s: %q %v", c.name(e), b, err)
			}
		}
		d1 := strings.TrimSpace(c.must(t, crane, "digest", m1.Host+"/auth/oras:v1"))
		if d2 := strings.TrimSpace(c.must(t, crane, "digest", lb.Host+"/auth/oras:v1")); d1 != d2 || d1 == "" {
			t.Errorf("auth/oras:v1 digests via m1 and HAProxy differ: %q %q", d1, d2)
		}
	})

	t.Run("regctl", func(t *testing.T) {
		for _, e := range c.entries() {
			c.must(t, regctl, "registry", "set", "--skip-check", e.Host, "--cacert", caPEM)
			c.must(t, regctl, "registry", "login", e.Host, "-u", alice, "-p", pw[alice])
		}
		c.must(t, regctl, "image", "copy", lb.Host+"/auth/crane:v1", m3.Host+"/auth/regctl:v1")
		for _, e := range []*reg{m1, lb} {
			if d := strings.TrimSpace(c.must(t, regctl, "image", "digest", e.Host+"/auth/regctl:v1")); d != craneDigest {
				t.Errorf("regctl image digest via %s: %s, want %s", c.name(e), d, craneDigest)
			}
		}
		if tags := lines(c.must(t, regctl, "tag", "ls", m2.Host+"/auth/regctl")); !slices.Equal(tags, []string{"v1"}) {
			t.Errorf("regctl tag ls via %s: %q", m2.Host, tags)
		}
	})

	// What a read-only user and forged headers must not change.
	const repoA = "auth/crane"
	ownerA := ring.Owner(repoA)
	entryA := nonOwner(repoA)
	tagsA := func(t *testing.T) []string {
		t.Helper()
		res := c.do(t, c.member(ownerA), "GET", "/v2/"+repoA+"/tags/list", alice, pw[alice], nil, nil)
		if res.Status != http.StatusOK {
			t.Fatalf("tags of %s: %s", repoA, res)
		}
		var tl struct{ Tags []string }
		must(t, json.Unmarshal(res.Body, &tl))
		return tl.Tags
	}
	baseTags := tagsA(t)
	base := snapshot(t, c.StorageRoot())
	man := cmReadFile(t, filepath.Join(layout, "blobs", "sha256", strings.TrimPrefix(craneDigest, "sha256:")))

	t.Run("read-only user at a non-owner", func(t *testing.T) {
		t.Logf("%s is owned by %s; the reader enters at %s and through HAProxy", repoA, ownerA, entryA.Host)
		sk := []string{skopeo, "--insecure-policy"}
		creds := reader + ":" + pw[reader]
		for _, e := range []*reg{entryA, lb} {
			ref := e.Host + "/" + repoA
			c.must(t, crane, "auth", "login", e.Host, "-u", reader, "-p", pw[reader])
			if d := strings.TrimSpace(c.must(t, crane, "digest", ref+":v1")); d != craneDigest {
				t.Errorf("reader: crane digest %s:v1: %s, want %s", ref, d, craneDigest)
			}
			c.must(t, crane, "pull", "--format", "oci", ref+":v1", filepath.Join(t.TempDir(), "pulled"))
			requireDenied(t, "crane append as reader via "+c.name(e), c.mustFail(t, crane, "append", "--oci-empty-base", "-f", layer, "-t", ref+":by-reader"))
			requireDenied(t, "crane tag as reader via "+c.name(e), c.mustFail(t, crane, "tag", ref+":v1", "by-reader"))
			requireDenied(t, "crane delete as reader via "+c.name(e), c.mustFail(t, crane, "delete", ref+"@"+craneDigest))
			requireDenied(t, "skopeo copy as reader via "+c.name(e), c.mustFail(t, append(sk, "copy", "--dest-creds", creds,
				"--dest-cert-dir", c.PKI.CertDir, "oci:"+layout, "docker://"+ref+":by-reader")...))
			dir := t.TempDir()
			must(t, os.WriteFile(filepath.Join(dir, "f.txt"), []byte("x"), 0o644))
			res := execCmd(context.Background(), c.env(t), dir, cmdTimeout, oras, "push", "--ca-file", c.PKI.CA, "-u", reader, "-p", pw[reader], ref+":by-reader", "f.txt")
			if res.Err == nil {
				t.Errorf("oras push as reader via %s succeeded", c.name(e))
			} else {
				requireDenied(t, "oras push as reader via "+c.name(e), res.Combined)
			}
			for _, rq := range []struct{ method, path string }{
				{"PUT", "/v2/" + repoA + "/manifests/by-reader"},
				{"DELETE", "/v2/" + repoA + "/manifests/" + craneDigest},
				{"POST", "/v2/" + repoA + "/blobs/uploads/"},
			} {
				var body []byte
				if rq.method == "PUT" {
					body = man
				}
				res := c.do(t, e, rq.method, rq.path, reader, pw[reader], map[string]string{"Content-Type": mtManifest}, body)
				if res.Status != http.StatusForbidden || ociErrorCode(res.Body) != "DENIED" {
					t.Errorf("reader %s %s via %s: %s, want 403 DENIED", rq.method, rq.path, c.name(e), res)
				}
			}
		}
		c.must(t, crane, "auth", "login", entryA.Host, "-u", alice, "-p", pw[alice])
		c.must(t, crane, "auth", "login", lb.Host, "-u", alice, "-p", pw[alice])
	})

	t.Run("forged hop and identity headers", func(t *testing.T) {
		now := time.Now().Unix()
		forged := []string{
			"1", "garbage",
			fmt.Sprintf("v1 ts=%d nonce=%s from=%s fo=1 ring=- sig=%s", now, randHex(12), m1.Host, randHex(32)),
			fmt.Sprintf("v1 ts=%d nonce=%s from=%s fo=0 ring=- sig=%s", now, randHex(12), ownerA, randHex(32)),
		}
		identity := map[string]string{
			"X-Forwarded-User": alice, "X-Remote-User": alice, "Remote-User": alice, "X-Auth-User": alice,
			"X-Berth-User": alice, "X-Forwarded-Email": alice, "X-Auth-Request-User": alice,
		}
		type try struct {
			method, path string
			body         []byte
			write        bool
		}
		reqs := []try{
			{"GET", "/v2/" + repoA + "/manifests/v1", nil, false},
			{"GET", "/v2/" + repoA + "/tags/list", nil, false},
			{"PUT", "/v2/" + repoA + "/manifests/forged", man, true},
			{"DELETE", "/v2/" + repoA + "/manifests/" + craneDigest, nil, true},
			{"POST", "/v2/" + repoA + "/blobs/uploads/", nil, true},
		}
		count := 0
		check := func(e *reg, hdr map[string]string, what string) {
			t.Helper()
			for _, rq := range reqs {
				h := map[string]string{"Content-Type": mtManifest, "Accept": mtManifest}
				for k, v := range hdr {
					h[k] = v
				}
				// No credentials: nothing at all.
				res := c.do(t, e, rq.method, rq.path, "", "", h, rq.body)
				count++
				if res.Status != http.StatusUnauthorized && res.Status != http.StatusForbidden {
					t.Errorf("%s, no credentials: %s %s via %s: %s, want 401 or 403", what, rq.method, rq.path, c.name(e), res)
				}
				// Read-only credentials: no write; a read gets at most what
				// it gets without the header.
				res = c.do(t, e, rq.method, rq.path, reader, pw[reader], h, rq.body)
				count++
				switch {
				case rq.write && res.Status != http.StatusForbidden:
					t.Errorf("%s, reader's credentials: %s %s via %s: %s, want 403", what, rq.method, rq.path, c.name(e), res)
				case !rq.write && res.Status != http.StatusForbidden && res.Status != http.StatusOK:
					t.Errorf("%s, reader's credentials: %s %s via %s: %s, want 200 or 403", what, rq.method, rq.path, c.name(e), res)
				}
			}
		}
		for _, e := range c.entries() {
			for _, v := range forged {
				check(e, map[string]string{"X-Berth-Hop": v}, fmt.Sprintf("X-Berth-Hop %q", v))
			}
			check(e, identity, "identity headers")
		}

		// A hop header signed with the cluster's key, as a member sends it
		// (what an attacker who learnt the hashKey could make, or a member
		// forwarding a request): it still grants nothing, the member it
		// reaches - owner or not - authenticates and authorises the client.
		hop := newTestHopSigner(hosts)
		// Control: the header is genuine (a member that does not own the
		// repository answers 421 instead of 403 DENIED for a bad header).
		res := c.do(t, entryA, "GET", "/v2/"+repoA+"/manifests/v1", alice, pw[alice],
			map[string]string{"Accept": mtManifest, "X-Berth-Hop": hop.sign("GET", "/v2/"+repoA+"/manifests/v1", ownerA, entryA.Host, false)}, nil)
		if res.Status != http.StatusMisdirectedRequest {
			t.Fatalf("control: a hop header signed by the test, with alice's credentials, to the non-owner %s: %s; want 421 "+
				"(the test's signer no longer matches pkg/cluster/hop.go?)", entryA.Host, res)
		}
		for _, m := range c.Members {
			from := m1.Host
			if m == m1 {
				from = m2.Host
			}
			for _, rq := range reqs {
				for _, fo := range []bool{false, true} {
					for _, who := range []string{"", reader} {
						h := map[string]string{"Content-Type": mtManifest, "Accept": mtManifest,
							"X-Berth-Hop": hop.sign(rq.method, rq.path, from, m.Host, fo)}
						res := c.do(t, m, rq.method, rq.path, who, pw[who], h, rq.body)
						count++
						name := "no credentials"
						if who != "" {
							name = who + "'s credentials"
						}
						switch {
						case who == "" && res.Status != http.StatusUnauthorized:
							t.Errorf("signed hop (fo=%v), %s: %s %s via %s: %s, want 401", fo, name, rq.method, rq.path, m.Host, res)
						case who != "" && rq.write && res.Status != http.StatusForbidden:
							t.Errorf("signed hop (fo=%v), %s: %s %s via %s: %s, want 403", fo, name, rq.method, rq.path, m.Host, res)
						}
					}
				}
			}
		}
		t.Logf("%d requests with forged headers refused what the caller could not do", count)
	})

	// Nothing the reader or the forgers tried changed anything.
	if got := tagsA(t); !slices.Equal(got, baseTags) {
		t.Errorf("tags of %s changed: %q, were %q", repoA, got, baseTags)
	}
	if d := diffSnapshots(base, snapshot(t, c.StorageRoot())); d != "" {
		t.Errorf("storage changed by refused requests:\n%s", d)
	}

	t.Run("owner re-checks", func(t *testing.T) {
		// Every request a member forwarded is logged by the owner with the
		// same req_id and the same user: the owner authenticated the
		// client's credentials itself.
		time.Sleep(100 * time.Millisecond)
		reqs := c.requests(t, start)
		onOwner := map[string]reqLine{}
		for _, l := range reqs {
			if !l.has("owner") {
				onOwner[l.str("req_id")+" "+l.On] = l
			}
		}
		users := map[string]int{}
		for _, l := range reqs {
			if !l.has("owner") || l.str("owner") == l.On {
				continue
			}
			o, ok := onOwner[l.str("req_id")+" "+l.str("owner")]
			switch {
			case !ok:
				t.Errorf("%s forwarded %s %s (req_id %s) to %s, which has no line for it", l.On, l.str("method"), l.str("path"), l.str("req_id"), l.str("owner"))
			case o.str("user") == "" || o.str("user") != l.str("user"):
				t.Errorf("%s forwarded %s %s (req_id %s, user %q) to %s, whose line names user %q: %v", l.On, l.str("method"), l.str("path"),
					l.str("req_id"), l.str("user"), l.str("owner"), o.str("user"), o.logLine)
			default:
				users[o.str("user")]++
			}
		}
		if users[alice] == 0 || users[reader] == 0 {
			t.Errorf("forwarded requests authenticated by their owner, by user: %v; want some of alice's and reader's", users)
		}
		t.Logf("forwarded requests re-authenticated by their owner, by user: %v", users)
	})

	t.Run("no secrets in the logs", func(t *testing.T) {
		files := []string{c.LB.p.Log}
		for _, m := range c.Members {
			files = append(files, m.LogPath, filepath.Join(m.Dir, "stderr.log"))
		}
		for _, f := range files {
			b, _ := os.ReadFile(f)
			for u, p := range pw {
				if strings.Contains(string(b), p) {
					t.Errorf("%s holds %s's password", f, u)
				}
			}
		}
	})
	problems, _ := problemLines(t, c.Members, start)
	for _, p := range problems {
		// The control above asks for a 421 on purpose, and forged hop
		// headers are rejected (and logged) on purpose.
		if strings.Contains(p, `"status":421`) || strings.Contains(p, "does not own") || strings.Contains(p, `"message":"rejected forwarded request"`) {
			continue
		}
		t.Errorf("member log: %s", p)
	}
	requireNoPanic(t, c.Members...)
}

// testHopSigner makes X-Berth-Hop values the way pkg/cluster/hop.go does,
// from the cluster's hashKey: HMAC-SHA256 keyed by
// sha256("berth cluster hop v1\0" + hashKey) over method, request URI,
// timestamp, nonce, sender, receiver, failover flag and the sender's
// membership epoch (the first 6 bytes of sha256 of the member list).
type testHopSigner struct {
	key  []byte
	ring string
}

func newTestHopSigner(members []string) *testHopSigner {
	k := sha256.Sum256(append([]byte("berth cluster hop v1\x00"), clusterHashKey...))
	r := sha256.Sum256([]byte(strings.Join(members, "\n")))
	return &testHopSigner{key: k[:], ring: hex.EncodeToString(r[:6])}
}

func (s *testHopSigner) sign(method, uri, from, to string, failover bool) string {
	ts := fmt.Sprint(time.Now().Unix())
	nonce := randHex(12)
	fo := "0"
	if failover {
		fo = "1"
	}
	h := hmac.New(sha256.New, s.key)
	for _, p := range []string{method, uri, ts, nonce, from, to, fo, s.ring} {
		h.Write([]byte(p))
		h.Write([]byte{'\n'})
	}
	return fmt.Sprintf("v1 ts=%s nonce=%s from=%s fo=%s ring=%s sig=%s", ts, nonce, from, fo, s.ring, hex.EncodeToString(h.Sum(nil)))
}
