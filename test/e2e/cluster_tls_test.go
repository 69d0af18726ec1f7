package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// repoOwnedBy returns the first name prefix/rNN whose owner in the
// cluster's current member list is owner.
func repoOwnedBy(t *testing.T, c *cluster, prefix, owner string) string {
	t.Helper()
	var hosts []string
	for _, m := range c.Members {
		hosts = append(hosts, m.Host)
	}
	ring := cmRing(t, hosts)
	for i := 0; i < 1000; i++ {
		if r := fmt.Sprintf("%s/r%02d", prefix, i); ring.Owner(r) == owner {
			return r
		}
	}
	t.Fatalf("no repository under %s owned by %s", prefix, owner)
	return ""
}

// TestClusterTLS runs the members over HTTPS (http.tls, certificates of a
// test CA valid for 127.0.0.1-4) talking to each other over TLS
// (cluster.tls: that CA and a client certificate). crane (SSL_CERT_FILE)
// and skopeo (--dest-cert-dir, --src-cert-dir) push through one member and
// pull through the others with identical digests, the pushes being
// forwarded over TLS to owners. Then a peer presents a certificate of
// another CA: forwards to it fail cleanly (503 UNAVAILABLE JSON with
// Retry-After, nothing reaches it), the members then see it down and
// serve its repositories in its place; a real member started with such a
// certificate stays down for the others, no member panics.
func TestClusterTLS(t *testing.T) {
	defer timed(t)()
	crane, skopeo := tool(t, "crane"), tool(t, "skopeo")
	c := startSecureCluster(t, secureOpts{})
	m1, m2, m3 := c.Members[0], c.Members[1], c.Members[2]
	start := c.marks()
	work := t.TempDir()
	layer := filepath.Join(work, "layer.tar")
	writeLayerTar(t, layer, 300<<10)
	want := map[string]string{} // repo:v1 -> digest

	var layout string
	t.Run("crane", func(t *testing.T) {
		// One repository owned by each member, pushed through member 1.
		for _, owner := range c.Members {
			repo := repoOwnedBy(t, c.cluster, "tls/crane", owner.Host)
			out := c.must(t, crane, "append", "--oci-empty-base", "-f", layer, "-t", m1.Host+"/"+repo+":v1")
			_, d, _ := strings.Cut(strings.TrimSpace(out), "@")
			want[repo+":v1"] = d
			for _, e := range []*reg{m2, m3} {
				if got := strings.TrimSpace(c.must(t, crane, "digest", e.Host+"/"+repo+":v1")); got != d {
					t.Errorf("crane digest %s:v1 via %s: %s, pushed %s", repo, e.Host, got, d)
				}
			}
			dir := filepath.Join(work, "pull-"+strings.ReplaceAll(repo, "/", "_"))
			c.must(t, crane, "pull", "--format", "oci", m2.Host+"/"+repo+":v1", dir)
			if got := layoutDigest(t, dir, ""); got != d {
				t.Errorf("crane pull %s:v1 via %s: %s, pushed %s", repo, m2.Host, got, d)
			}
			layout = dir
		}
	})
	if layout == "" {
		t.Fatal("nothing pushed")
	}

	t.Run("skopeo", func(t *testing.T) {
		sk := []string{skopeo, "--insecure-policy"}
		for _, owner := range []*reg{m1, m3} {
			repo := repoOwnedBy(t, c.cluster, "tls/skopeo", owner.Host)
			df := filepath.Join(t.TempDir(), "digest")
			c.must(t, append(sk, "copy", "--dest-cert-dir", c.PKI.CertDir, "--digestfile", df,
				"oci:"+layout, "docker://"+m2.Host+"/"+repo+":v1")...)
			d := strings.TrimSpace(string(cmReadFile(t, df)))
			want[repo+":v1"] = d
			var insp struct{ Digest string }
			out := c.must(t, append(sk, "inspect", "--cert-dir", c.PKI.CertDir, "docker://"+m3.Host+"/"+repo+":v1")...)
			if err := json.Unmarshal([]byte(out), &insp); err != nil || insp.Digest != d {
				t.Errorf("skopeo inspect %s:v1 via %s: %v %q, pushed %s", repo, m3.Host, err, insp.Digest, d)
			}
			dir := filepath.Join(t.TempDir(), "out")
			c.must(t, append(sk, "copy", "--src-cert-dir", c.PKI.CertDir, "docker://"+m1.Host+"/"+repo+":v1", "oci:"+dir+":v1")...)
			if got := layoutDigest(t, dir, "v1"); got != d {
				t.Errorf("skopeo copy %s:v1 via %s: %s, pushed %s", repo, m1.Host, got, d)
			}
		}
		// Without the CA, clients refuse the members' certificates.
		out := execCmd(t.Context(), clientEnv(t), "", time.Minute, skopeo, "inspect", "docker://"+m1.Host+"/"+repoOwnedBy(t, c.cluster, "tls/skopeo", m1.Host)+":v1")
		if out.Err == nil || !strings.Contains(out.Combined, "certificate") {
			t.Errorf("skopeo inspect without the CA: %v\n%s", out.Err, out.Combined)
		}
	})

	// The pushes were forwarded between members (over TLS: members only
	// speak HTTPS) and nothing failed.
	time.Sleep(100 * time.Millisecond)
	forwarded := 0
	for _, l := range c.requests(t, start) {
		if l.has("owner") && l.str("owner") != l.On {
			forwarded++
		}
	}
	if forwarded == 0 {
		t.Errorf("no request was forwarded between members")
	}
	problems, _ := problemLines(t, c.Members, start)
	for _, p := range problems {
		t.Errorf("over TLS: %s", p)
	}
	t.Logf("%d requests forwarded between members over TLS", forwarded)

	t.Run("untrusted peer certificate", func(t *testing.T) {
		repo := repoOwnedBy(t, c.cluster, "tls/crane", m3.Host)
		// A fake member 3 that answers health checks with a certificate of
		// the cluster CA.
		m3.Kill9()
		fake := startFakePeer(t, m3.Host, c.PKI)
		deadline := time.Now().Add(30 * time.Second)
		for {
			clients, _ := fake.stats()
			up1, _ := peerState(m1, m3.Host)
			up2, _ := peerState(m2, m3.Host)
			if up1 && up2 && clients[c.PKI.ClientCN] >= 4 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("members do not see the fake member 3 up: %v %v, health checks it got: %v", up1, up2, clients)
			}
			time.Sleep(50 * time.Millisecond)
		}
		clients, others := fake.stats()
		for who, n := range clients {
			if who != c.PKI.ClientCN {
				t.Errorf("%d health checks came with client certificate %q, want every one with %q (cluster.tls.cert)", n, who, c.PKI.ClientCN)
			}
		}
		if len(others) > 0 {
			t.Errorf("the fake member got requests other than health checks: %v", others)
		}

		// Its certificate now comes from another CA: the next forwards fail
		// the TLS handshake and are answered 503 UNAVAILABLE, until the
		// health checks - two failures a second apart - mark it down and
		// the member serves the request in its place. On a slow machine
		// that can happen within these four requests: an answer other than
		// 503 must then come from a member that sees member 3 down and be
		// the answer of a member serving the repository itself. At least
		// one answer (normally all) must be the 503.
		marks := c.marks()
		fake.switchToOther()
		time.Sleep(100 * time.Millisecond)
		man := []byte(`{"schemaVersion":2}`)
		unavailable := 0
		for _, rq := range []struct {
			e            *reg
			method, path string
			hdr          map[string]string
			body         []byte
			served       func(*resp) bool // the answer when serving in member 3's place
		}{
			{m1, "GET", "/v2/" + repo + "/manifests/v1", map[string]string{"Accept": mtManifest}, nil,
				func(res *resp) bool { return res.Status == http.StatusOK && sha256Digest(res.Body) == want[repo+":v1"] }},
			{m2, "HEAD", "/v2/" + repo + "/manifests/v1", nil, nil,
				func(res *resp) bool {
					return res.Status == http.StatusOK && res.Header.Get("Docker-Content-Digest") == want[repo+":v1"]
				}},
			{m2, "POST", "/v2/" + repo + "/blobs/uploads/", nil, nil,
				func(res *resp) bool { return res.Status == http.StatusAccepted && res.Header.Get("Location") != "" }},
			{m1, "PUT", "/v2/" + repo + "/manifests/never", map[string]string{"Content-Type": mtManifest}, man,
				func(res *resp) bool {
					return res.Status == http.StatusBadRequest && ociErrorCode(res.Body) == "MANIFEST_INVALID"
				}},
		} {
			res := c.do(t, rq.e, rq.method, rq.path, "", "", rq.hdr, rq.body)
			if res.Status != http.StatusServiceUnavailable {
				if up, _ := peerState(rq.e, m3.Host); up || !rq.served(res) {
					t.Errorf("%s %s via %s with the owner's certificate from another CA (member 3 seen up: %v): %s; want 503 with Retry-After, or once member 3 is seen down the member's own answer",
						rq.method, rq.path, rq.e.Host, up, res)
				} else {
					t.Logf("%s %s via %s: member 3 already seen down, served in its place: %d", rq.method, rq.path, rq.e.Host, res.Status)
				}
				continue
			}
			unavailable++
			if res.Header.Get("Retry-After") == "" {
				t.Errorf("%s %s via %s with the owner's certificate from another CA: %s; want 503 with Retry-After", rq.method, rq.path, rq.e.Host, res)
			}
			if rq.method != "HEAD" {
				if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") || ociErrorCode(res.Body) != "UNAVAILABLE" {
					t.Errorf("%s %s via %s: Content-Type %q body %s, want OCI error UNAVAILABLE", rq.method, rq.path, rq.e.Host, ct, res.Body)
				}
			}
		}
		if unavailable == 0 {
			t.Errorf("no forward to the owner with a certificate from another CA was answered 503 UNAVAILABLE")
		}
		if _, others := fake.stats(); len(others) > 0 {
			t.Errorf("requests reached the member with the untrusted certificate: %v", others)
		}
		tlsErrors := 0
		for _, m := range []*reg{m1, m2} {
			for _, l := range m.logSince(t, marks[m.Host]) {
				if l.str("message") == "failed to forward request" && strings.Contains(l.str("error"), "certificate") {
					tlsErrors++
				}
			}
		}
		if tlsErrors == 0 {
			t.Errorf("no member logged a failed forward naming the certificate")
		}

		// The health checks fail too: the members mark it down and serve
		// its repositories in its place.
		deadline = time.Now().Add(15 * time.Second)
		for {
			up1, _ := peerState(m1, m3.Host)
			up2, _ := peerState(m2, m3.Host)
			if !up1 && !up2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("members still see member 3 up with an untrusted certificate: %v %v", up1, up2)
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, e := range []*reg{m1, m2} {
			res := c.do(t, e, "GET", "/v2/"+repo+"/manifests/v1", "", "", map[string]string{"Accept": mtManifest}, nil)
			if res.Status != http.StatusOK || sha256Digest(res.Body) != want[repo+":v1"] {
				t.Errorf("GET %s:v1 via %s with member 3 down: %s", repo, e.Host, res)
			}
		}
		d := c.pushImage(t, m1, "", "", repo, "while-untrusted")
		want[repo+":while-untrusted"] = d
		if _, others := fake.stats(); len(others) > 0 {
			t.Errorf("requests reached the member with the untrusted certificate: %v", others)
		}
		fake.stop()

		// A real member 3 with a certificate of the other CA: the others
		// keep it down; it still reaches them (it trusts the cluster CA).
		marks = c.marks()
		c.useCert(m3, c.PKI.OtherCert, c.PKI.OtherKey)
		m3.readyOverTLS(c.PKI.BothPool)
		m3.Restart()
		time.Sleep(2500 * time.Millisecond) // a few health checks
		for _, m := range []*reg{m1, m2} {
			for _, l := range m.logSince(t, marks[m.Host]) {
				if l.str("message") == "peer is up" && l.str("peer") == m3.Host {
					t.Errorf("%s sees member 3 up although its certificate is not signed by the cluster CA: %v", m.Host, l)
				}
			}
			res := c.do(t, m, "GET", "/v2/"+repo+"/manifests/while-untrusted", "", "", map[string]string{"Accept": mtManifest}, nil)
			if res.Status != http.StatusOK || sha256Digest(res.Body) != d {
				t.Errorf("GET %s:while-untrusted via %s: %s", repo, m.Host, res)
			}
		}
		// Through member 3 itself (for a client trusting its CA), every
		// repository: its own served locally, the others forwarded.
		c3 := &secureCluster{cluster: c.cluster, PKI: c.PKI, Client: tlsClient(c.PKI.BothPool)}
		for r, d := range want {
			repo, tag, _ := strings.Cut(r, ":")
			res := c3.do(t, m3, "GET", "/v2/"+repo+"/manifests/"+tag, "", "", map[string]string{"Accept": mtManifest}, nil)
			if res.Status != http.StatusOK || sha256Digest(res.Body) != d {
				t.Errorf("GET %s via member 3 (certificate of another CA): %s", r, res)
			}
		}
	})
	requireNoPanic(t, c.Members...)
	requireStorageOK(t, c.StorageRoot())
}
