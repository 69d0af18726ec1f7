package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// An in-process cluster: N listeners on 127.0.0.1:0 are opened first, the
// member list is built from their addresses, then each member serves a fake
// registry that asks its Router where a request belongs.

type tmember struct {
	c    *tcluster
	addr string
	rt   *Router
	srv  *http.Server

	notReady    atomic.Bool  // /readyz answers 503
	forwardedIn atomic.Int64 // requests that arrived with a hop header
	served      atomic.Int64 // requests the local handler served
	hopLeaked   atomic.Int64 // local handler saw a hop header
}

type tcluster struct {
	t       *testing.T
	key     []byte
	addrs   []string
	members []*tmember
	byAddr  map[string]*tmember
	client  *http.Client
	// firstBody receives the address of the first member that read request
	// body bytes in its local handler.
	firstBody chan string
	bodyOnce  sync.Once
}

type clusterOpts struct {
	health   time.Duration // > 0: start health checks at this interval
	wrapPeer func(self, peer string, rt http.RoundTripper) http.RoundTripper
}

func newTestCluster(t *testing.T, n int, o clusterOpts) *tcluster {
	t.Helper()
	c := &tcluster{t: t, key: testKey, byAddr: map[string]*tmember{}, firstBody: make(chan string, 1)}
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		lns = append(lns, ln)
		c.addrs = append(c.addrs, ln.Addr().String())
	}
	for i, addr := range c.addrs {
		m := &tmember{c: c, addr: addr}
		opts := Options{
			Members:        c.addrs,
			HashKey:        c.key,
			Self:           addr,
			Log:            zerolog.Nop(),
			HealthInterval: o.health,
			// Generous: a loaded machine must never make a healthy peer
			// miss a check; a dead peer refuses connections at once.
			HealthTimeout: 30 * time.Second,
		}
		if o.wrapPeer != nil {
			opts.Transport = func(peer string) http.RoundTripper {
				tr := &http.Transport{Proxy: nil, DisableCompression: true}
				t.Cleanup(tr.CloseIdleConnections)
				return o.wrapPeer(addr, peer, tr)
			}
		}
		rt, err := New(opts)
		if err != nil {
			t.Fatalf("New(%s): %v", addr, err)
		}
		m.rt = rt
		m.srv = &http.Server{Handler: m, ErrorLog: log.New(io.Discard, "", 0)}
		go m.srv.Serve(lns[i])
		t.Cleanup(func() { m.srv.Close() })
		c.members = append(c.members, m)
		c.byAddr[addr] = m
	}
	if o.health > 0 {
		for _, m := range c.members {
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			m.rt.Start(ctx)
		}
	}
	tr := &http.Transport{Proxy: nil, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	c.client = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	return c
}

func (m *tmember) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/readyz" {
		if m.notReady.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
		return
	}
	p := r.URL.Path
	if !strings.HasPrefix(p, "/v2/") || !strings.HasSuffix(p, "/x") || len(p) <= len("/v2//x") {
		http.NotFound(w, r)
		return
	}
	repo := p[len("/v2/") : len(p)-len("/x")]
	if r.Header.Get(HopHeader) != "" {
		m.forwardedIn.Add(1)
	}
	local := http.HandlerFunc(m.serveLocal)
	if m.rt.Forward(w, r, repo, local) {
		return
	}
	if r.Header.Get(HopHeader) != "" {
		m.hopLeaked.Add(1)
	}
	local.ServeHTTP(w, r)
}

// serveLocal is the member's "registry": it consumes the body and says who
// served the request.
func (m *tmember) serveLocal(w http.ResponseWriter, r *http.Request) {
	m.served.Add(1)
	if r.Header.Get(HopHeader) != "" {
		m.hopLeaked.Add(1)
	}
	// A handler must get a server request: non-nil Body, RequestURI set,
	// a URL without scheme and host.
	if r.Body == nil || r.RequestURI == "" || r.URL.Host != "" {
		http.Error(w, fmt.Sprintf("local handler got a client-side request: Body %v, RequestURI %q, URL %s",
			r.Body, r.RequestURI, r.URL), http.StatusInternalServerError)
		return
	}
	h := sha256.New()
	body := &notifyReader{r: r.Body, f: func() {
		m.c.bodyOnce.Do(func() { m.c.firstBody <- m.addr })
	}}
	n, err := io.Copy(h, body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("X-Served-By", m.addr)
	w.Header().Set("X-Body-Sha256", hex.EncodeToString(h.Sum(nil)))
	w.Header().Set("X-Body-Len", strconv.FormatInt(n, 10))
	w.Header().Set("X-Query", r.URL.RawQuery)
	fmt.Fprintf(w, "served-by:%s", m.addr)
}

type notifyReader struct {
	r    io.Reader
	once sync.Once
	f    func()
}

func (n *notifyReader) Read(p []byte) (int, error) {
	k, err := n.r.Read(p)
	if k > 0 {
		n.once.Do(n.f)
	}
	return k, err
}

// ring is the shared ring (every member has the same one).
func (c *tcluster) ring() *Ring { return c.members[0].rt.Ring() }

// repoWhere returns the first repo whose ranking satisfies ok.
func (c *tcluster) repoWhere(ok func(rank []string) bool) string {
	c.t.Helper()
	for _, repo := range repoNames(10000) {
		if ok(c.ring().Rank(repo)) {
			return repo
		}
	}
	c.t.Fatal("no repo with the wanted ranking")
	return ""
}

type result struct {
	status int
	header http.Header
	body   string
}

func (c *tcluster) do(method, addr, uri string, body io.Reader, hdr http.Header) (result, error) {
	req, err := http.NewRequest(method, "http://"+addr+uri, body)
	if err != nil {
		return result{}, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return result{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return result{resp.StatusCode, resp.Header, string(b)}, err
}

func (c *tcluster) mustDo(method, addr, uri string, body io.Reader, hdr http.Header) result {
	c.t.Helper()
	res, err := c.do(method, addr, uri, body, hdr)
	if err != nil {
		c.t.Fatalf("%s %s%s: %v", method, addr, uri, err)
	}
	return res
}

// expectServedBy checks a 200 answered by member want.
func expectServedBy(t *testing.T, what string, res result, want string) {
	t.Helper()
	if res.status != http.StatusOK || res.body != "served-by:"+want {
		t.Fatalf("%s: %d %q, want 200 served-by:%s", what, res.status, res.body, want)
	}
}

// expectOCIError checks status and an OCI error body with code.
func expectOCIError(t *testing.T, what string, res result, status int, code string) string {
	t.Helper()
	if res.status != status {
		t.Fatalf("%s: status %d (%q), want %d", what, res.status, res.body, status)
	}
	if ct := res.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: Content-Type %q, want application/json", what, ct)
	}
	var e struct {
		Errors []struct{ Code, Message string }
	}
	if err := json.Unmarshal([]byte(res.body), &e); err != nil || len(e.Errors) != 1 {
		t.Fatalf("%s: body %q is not an OCI error: %v", what, res.body, err)
	}
	if e.Errors[0].Code != code || e.Errors[0].Message == "" {
		t.Errorf("%s: error %+v, want code %s with a message", what, e.Errors[0], code)
	}
	return e.Errors[0].Message
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (c *tcluster) totals() (forwardedIn, served, leaked int64) {
	for _, m := range c.members {
		forwardedIn += m.forwardedIn.Load()
		served += m.served.Load()
		leaked += m.hopLeaked.Load()
	}
	return
}

func TestRouterRoutesToOwner(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	repos := append(repoNames(30), "a", "a/b/c/d", "library/alpine")
	perOwner := map[string]int64{}
	var requests, remote int64
	for _, repo := range repos {
		owner := c.ring().Owner(repo)
		for _, m := range c.members {
			if got := m.rt.Owner(repo); got != owner {
				t.Fatalf("%s: Owner(%q) = %s, member 0 says %s", m.addr, repo, got, owner)
			}
			uri := "/v2/" + repo + "/x?n=10&last=a%2Fb+c"
			res := c.mustDo("GET", m.addr, uri, nil, nil)
			expectServedBy(t, "GET "+repo+" via "+m.addr, res, owner)
			if q := res.header.Get("X-Query"); q != "n=10&last=a%2Fb+c" {
				t.Errorf("query arrived as %q", q)
			}
			res = c.mustDo("PUT", m.addr, "/v2/"+repo+"/x", strings.NewReader("payload-"+repo), nil)
			expectServedBy(t, "PUT "+repo+" via "+m.addr, res, owner)
			if sum := sha256.Sum256([]byte("payload-" + repo)); res.header.Get("X-Body-Sha256") != hex.EncodeToString(sum[:]) {
				t.Errorf("PUT %s via %s: body changed on the way", repo, m.addr)
			}
			requests += 2
			perOwner[owner] += 2
			if m.addr != owner {
				remote += 2
			}
		}
	}
	fwd, served, leaked := c.totals()
	if leaked != 0 {
		t.Errorf("local handlers saw the hop header %d times; Forward must remove it", leaked)
	}
	if fwd != remote {
		t.Errorf("%d requests arrived forwarded, want exactly %d (one hop per non-owner entry)", fwd, remote)
	}
	if served != requests {
		t.Errorf("served %d, want %d", served, requests)
	}
	for _, m := range c.members {
		if got := m.served.Load(); got != perOwner[m.addr] {
			t.Errorf("%s served %d requests, owns %d", m.addr, got, perOwner[m.addr])
		}
	}
	if len(perOwner) != 3 {
		t.Errorf("test repos cover only %d owners", len(perOwner))
	}
}

func TestRouterStreamsLargeBody(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	const chunk, chunks = 1 << 20, 64
	repo := "big/upload"
	owner := c.ring().Owner(repo)
	entry := c.addrs[0]
	if entry == owner {
		entry = c.addrs[1]
	}
	pr, pw := io.Pipe()
	type sent struct {
		sum []byte
		err error
	}
	done := make(chan sent, 1)
	go func() {
		rng := rand.New(rand.NewChaCha8([32]byte{1}))
		h := sha256.New()
		buf := make([]byte, chunk)
		for i := range chunks {
			if i == chunks-1 {
				// Do not finish the body until the owner has bytes: a
				// buffering proxy would never deliver them.
				select {
				case who := <-c.firstBody:
					if who != owner {
						err := fmt.Errorf("first body bytes read by %s, owner is %s", who, owner)
						pw.CloseWithError(err)
						done <- sent{err: err}
						return
					}
				case <-time.After(10 * time.Second):
					err := errors.New("owner received no body bytes before the client wrote the last chunk: the body is buffered")
					pw.CloseWithError(err)
					done <- sent{err: err}
					return
				}
			}
			for j := 0; j < len(buf); j += 8 {
				v := rng.Uint64()
				for k := range 8 {
					buf[j+k] = byte(v >> (8 * k))
				}
			}
			h.Write(buf)
			if _, err := pw.Write(buf); err != nil {
				done <- sent{err: err}
				return
			}
		}
		pw.Close()
		done <- sent{sum: h.Sum(nil)}
	}()
	res, err := c.do("PUT", entry, "/v2/"+repo+"/x", pr, nil)
	s := <-done
	if s.err != nil {
		t.Fatal(s.err)
	}
	if err != nil {
		t.Fatalf("PUT: %v", err)
	}
	expectServedBy(t, "64 MiB PUT via "+entry, res, owner)
	if got := res.header.Get("X-Body-Len"); got != strconv.Itoa(chunk*chunks) {
		t.Errorf("owner received %s bytes, want %d", got, chunk*chunks)
	}
	if got := res.header.Get("X-Body-Sha256"); got != hex.EncodeToString(s.sum) {
		t.Errorf("owner body sha256 %s, client sent %x", got, s.sum)
	}
	if n := c.byAddr[entry].served.Load(); n != 0 {
		t.Errorf("entry member served %d requests itself", n)
	}
}

func TestRouterRejectsForgedHop(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	repo := "library/alpine"
	owner := c.ring().Owner(repo)
	uri := "/v2/" + repo + "/x"
	other := newHopSigner([]byte("not-the-cluster!"))
	genuine := newHopSigner(c.key)
	forged := map[string]func(to string) string{
		"random":       func(to string) string { return "8d0e1f7a9c3b" },
		"random v1":    func(to string) string { return "v1 ts=1 nonce=2 from=3 fo=1 ring=x sig=4" },
		"other key":    func(to string) string { return other.sign("GET", uri, owner, to, false, "") },
		"other key fo": func(to string) string { return other.sign("GET", uri, c.addrs[0], to, true, "") },
		"other method": func(to string) string { return genuine.sign("DELETE", uri, owner, to, true, "") },
		"other uri":    func(to string) string { return genuine.sign("GET", "/v2/other/x", owner, to, true, "") },
		"stale": func(to string) string {
			s := newHopSigner(c.key)
			s.now = func() time.Time { return time.Now().Add(-5 * time.Minute) }
			return s.sign("GET", uri, owner, to, true, "")
		},
		"future": func(to string) string {
			s := newHopSigner(c.key)
			s.now = func() time.Time { return time.Now().Add(5 * time.Minute) }
			return s.sign("GET", uri, owner, to, true, "")
		},
		"tampered failover": func(to string) string {
			return strings.Replace(genuine.sign("GET", uri, owner, to, false, ""), "fo=0", "fo=1", 1)
		},
	}
	for name, value := range forged {
		for _, m := range c.members {
			t.Run(name+" to "+m.addr, func(t *testing.T) {
				f0, s0, _ := c.totals()
				res := c.mustDo("GET", m.addr, uri, nil, http.Header{HopHeader: {value(m.addr)}})
				expectOCIError(t, name, res, http.StatusForbidden, "DENIED")
				f1, s1, _ := c.totals()
				if s1 != s0 || f1 != f0+1 {
					t.Errorf("a forged request was served (%d) or forwarded (%d)", s1-s0, f1-f0-1)
				}
			})
		}
	}
	// HEAD gets the status without a body.
	res := c.mustDo("HEAD", owner, uri, nil, http.Header{HopHeader: {"garbage"}})
	if res.status != http.StatusForbidden || res.body != "" {
		t.Errorf("HEAD with forged hop: %d %q", res.status, res.body)
	}
}

type capturedHop struct {
	method, uri, value string
}

func TestRouterRejectsReplayedHop(t *testing.T) {
	var mu sync.Mutex
	var captured []capturedHop
	c := newTestCluster(t, 3, clusterOpts{wrapPeer: func(self, peer string, next http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if v := r.Header.Get(HopHeader); v != "" {
				mu.Lock()
				captured = append(captured, capturedHop{r.Method, r.URL.RequestURI(), v})
				mu.Unlock()
			}
			return next.RoundTrip(r)
		})
	}})
	repo := "library/alpine"
	rank := c.ring().Rank(repo)
	owner := rank[0]
	uri := "/v2/" + repo + "/x"
	expectServedBy(t, "GET via non-owner", c.mustDo("GET", rank[1], uri, nil, nil), owner)
	mu.Lock()
	if len(captured) != 1 {
		mu.Unlock()
		t.Fatalf("captured %d hop headers, want 1", len(captured))
	}
	hop := captured[0]
	mu.Unlock()
	if hop.method != "GET" || hop.uri != uri {
		t.Fatalf("captured %+v", hop)
	}
	served := c.byAddr[owner].served.Load()
	res := c.mustDo("GET", owner, uri, nil, http.Header{HopHeader: {hop.value}})
	expectOCIError(t, "replayed hop header", res, http.StatusForbidden, "DENIED")
	if got := c.byAddr[owner].served.Load(); got != served {
		t.Errorf("the replayed request was served")
	}
	// Replayed to a member that does not own the repo: not served either.
	res = c.mustDo("GET", rank[2], uri, nil, http.Header{HopHeader: {hop.value}})
	if res.status == http.StatusOK {
		t.Errorf("captured hop header replayed to %s was served: %q", rank[2], res.body)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestRouterMisdirectedHop(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	repo := "library/alpine"
	rank := c.ring().Rank(repo)
	owner, notOwner := rank[0], rank[1]
	uri := "/v2/" + repo + "/x"
	signer := newHopSigner(c.key) // another member's signer: same key, own nonces
	epoch := c.members[0].rt.epoch()

	res := c.mustDo("GET", notOwner, uri, nil, http.Header{HopHeader: {signer.sign("GET", uri, rank[2], notOwner, false, epoch)}})
	msg := expectOCIError(t, "genuine hop to a non-owner", res, http.StatusMisdirectedRequest, "UNAVAILABLE")
	for _, want := range []string{notOwner, owner, repo} {
		if !strings.Contains(msg, want) {
			t.Errorf("421 message %q does not mention %s", msg, want)
		}
	}
	if fwd, served, _ := c.totals(); fwd != 1 || served != 0 {
		t.Errorf("after a misdirected hop: %d forwarded-in, %d served; want 1, 0 (no second hop)", fwd, served)
	}

	// The failover flag says the sender knows: the receiver serves.
	res = c.mustDo("GET", notOwner, uri, nil, http.Header{HopHeader: {signer.sign("GET", uri, rank[2], notOwner, true, epoch)}})
	expectServedBy(t, "failover hop to a non-owner", res, notOwner)

	// A sender with another member list (a resize in progress) is served:
	// the receiver never forwards again, and storage is shared.
	resizing := newHopSigner(c.key)
	otherEpoch := ringEpoch(append(append([]string(nil), c.addrs...), "127.0.0.9:1"))
	res = c.mustDo("GET", notOwner, uri, nil, http.Header{HopHeader: {resizing.sign("GET", uri, rank[2], notOwner, false, otherEpoch)}})
	expectServedBy(t, "hop from a member with another member list", res, notOwner)

	// A genuine hop to the owner is served there.
	res = c.mustDo("GET", owner, uri, nil, http.Header{HopHeader: {signer.sign("GET", uri, rank[2], owner, false, epoch)}})
	expectServedBy(t, "hop to the owner", res, owner)
	if _, _, leaked := c.totals(); leaked != 0 {
		t.Errorf("hop header reached the local handler %d times", leaked)
	}
}

// TestRouterRetriesGetOnDeadOwner: without health checks, a GET or HEAD to
// an owner that refuses connections is retried on the next member.
func TestRouterRetriesGetOnDeadOwner(t *testing.T) {
	for _, method := range []string{"GET", "HEAD"} {
		for _, entryRank := range []int{1, 2} {
			t.Run(fmt.Sprintf("%s via rank %d", method, entryRank), func(t *testing.T) {
				c := newTestCluster(t, 3, clusterOpts{})
				repo := "library/alpine"
				rank := c.ring().Rank(repo)
				c.byAddr[rank[0]].srv.Close()
				entry := c.byAddr[rank[entryRank]]
				res, err := c.do(method, entry.addr, "/v2/"+repo+"/x", nil, nil)
				if err != nil {
					t.Fatal(err)
				}
				if res.status != http.StatusOK || res.header.Get("X-Served-By") != rank[1] {
					t.Fatalf("%s via %s with dead owner: %d served by %q (%q); want 200 from the next member %s",
						method, entry.addr, res.status, res.header.Get("X-Served-By"), res.body, rank[1])
				}
				if entry.rt.Owns(repo) != (rank[1] == entry.addr) || entry.rt.Owner(repo) != rank[1] {
					t.Errorf("after the failed dial %s still thinks %s owns %s", entry.addr, entry.rt.Owner(repo), repo)
				}
				if _, _, leaked := c.totals(); leaked != 0 {
					t.Errorf("hop header reached the local handler %d times", leaked)
				}
			})
		}
	}
}

// TestRouterPutToDeadOwner: a dial that fails sends nothing, so a request
// with a body goes, body intact, to the next member at once.
func TestRouterPutToDeadOwner(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	repo := "library/alpine"
	rank := c.ring().Rank(repo)
	c.byAddr[rank[0]].srv.Close()
	sum := sha256.Sum256([]byte("layer"))
	for _, entry := range rank[1:] {
		res := c.mustDo("PUT", entry, "/v2/"+repo+"/x", strings.NewReader("layer"), nil)
		expectServedBy(t, "PUT via "+entry, res, rank[1])
		if got := res.header.Get("X-Body-Sha256"); got != hex.EncodeToString(sum[:]) {
			t.Errorf("PUT via %s: next member got body sha256 %q, want %x", entry, got, sum)
		}
	}
}

func TestRouterHealthFailover(t *testing.T) {
	for _, mode := range []string{"stopped", "not ready"} {
		t.Run(mode, func(t *testing.T) {
			c := newTestCluster(t, 3, clusterOpts{health: 100 * time.Millisecond})
			repo := "library/alpine"
			rank := c.ring().Rank(repo)
			owner, next := c.byAddr[rank[0]], rank[1]
			uri := "/v2/" + repo + "/x"
			others := []*tmember{c.byAddr[rank[1]], c.byAddr[rank[2]]}
			for _, m := range c.members {
				expectServedBy(t, "before", c.mustDo("GET", m.addr, uri, nil, nil), owner.addr)
			}
			switch mode {
			case "stopped":
				owner.srv.Close()
			case "not ready":
				owner.notReady.Store(true)
			}
			// GET continuously through both survivors while health notices.
			switched := func() bool {
				return others[0].rt.Owner(repo) == next && others[1].rt.Owner(repo) == next
			}
			deadline := time.Now().Add(30 * time.Second)
			gets, extra := 0, 10
			for extra > 0 {
				if time.Now().After(deadline) {
					t.Fatalf("health did not switch %s to %s within 30s", repo, next)
				}
				for _, m := range others {
					// A not-ready owner still answers until m notices;
					// a stopped one cannot.
					ok := map[string]bool{"served-by:" + next: true}
					if mode == "not ready" && m.rt.Owner(repo) != next {
						ok["served-by:"+owner.addr] = true
					}
					res, err := c.do("GET", m.addr, uri, nil, nil)
					gets++
					if err != nil {
						t.Fatalf("GET %d via %s: %v", gets, m.addr, err)
					}
					if res.status != http.StatusOK || !ok[res.body] {
						t.Fatalf("GET %d via %s during the switch: %d %q", gets, m.addr, res.status, res.body)
					}
				}
				if switched() {
					extra--
				}
			}
			if !c.byAddr[next].rt.Owns(repo) || others[1].rt.Owns(repo) {
				t.Errorf("after the switch Owns(%s): %s %v, %s %v", repo, next, c.byAddr[next].rt.Owns(repo), others[1].addr, others[1].rt.Owns(repo))
			}

			// The owner comes back: ownership returns on its first good check.
			switch mode {
			case "stopped":
				ln, err := net.Listen("tcp", owner.addr)
				if err != nil {
					t.Skipf("cannot listen on %s again: %v", owner.addr, err)
				}
				srv := &http.Server{Handler: owner, ErrorLog: log.New(io.Discard, "", 0)}
				go srv.Serve(ln)
				t.Cleanup(func() { srv.Close() })
			case "not ready":
				owner.notReady.Store(false)
			}
			waitFor(t, "the owner to be up again", 30*time.Second, func() bool {
				return others[0].rt.Owner(repo) == owner.addr && others[1].rt.Owner(repo) == owner.addr
			})
			for _, m := range c.members {
				expectServedBy(t, "after recovery", c.mustDo("GET", m.addr, uri, nil, nil), owner.addr)
			}
		})
	}
}

func TestRouterSelfLastServes(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{health: 100 * time.Millisecond})
	self := c.members[0]
	repo := c.repoWhere(func(rank []string) bool { return rank[2] == self.addr })
	for _, m := range c.members[1:] {
		m.srv.Close()
	}
	waitFor(t, "health to mark both peers down", 30*time.Second, func() bool { return self.rt.Owns(repo) })
	expectServedBy(t, "GET", c.mustDo("GET", self.addr, "/v2/"+repo+"/x", nil, nil), self.addr)
	expectServedBy(t, "PUT", c.mustDo("PUT", self.addr, "/v2/"+repo+"/x", strings.NewReader("layer"), nil), self.addr)
	// Every repository is this member's now.
	for _, r := range repoNames(100) {
		if !self.rt.Owns(r) {
			t.Fatalf("Owns(%q) = false with every peer down", r)
		}
	}
}

func TestRouterNew(t *testing.T) {
	members := memberNames(3)
	tests := []struct {
		name string
		opts Options
	}{
		{"bad key", Options{Members: members, HashKey: []byte("short"), Self: members[0]}},
		{"no members", Options{HashKey: testKey, Self: members[0]}},
		{"self not a member", Options{Members: members, HashKey: testKey, Self: "elsewhere:5000"}},
		{"no self", Options{Members: members, HashKey: testKey}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if rt, err := New(tc.opts); err == nil {
				t.Fatalf("New = %v, nil; want error", rt)
			}
		})
	}
}

func TestRouterUpdate(t *testing.T) {
	three := memberNames(3)
	four := memberNames(4)
	rt, err := New(Options{Members: three, HashKey: testKey, Self: three[1], Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	repos := repoNames(10000)
	before := map[string]string{}
	for _, r := range repos {
		before[r] = rt.Owner(r)
	}
	if err := rt.Update(four); err != nil {
		t.Fatalf("Update(4 members): %v", err)
	}
	movedN := 0
	for _, r := range repos {
		if after := rt.Owner(r); after != before[r] {
			movedN++
			if after != four[3] {
				t.Fatalf("%q moved from %s to %s, not to the new member", r, before[r], after)
			}
		}
		if rt.Owns(r) != (rt.Owner(r) == three[1]) {
			t.Fatalf("Owns(%q) disagrees with Owner", r)
		}
	}
	if f := float64(movedN) / float64(len(repos)); f < 0.20 || f > 0.30 {
		t.Errorf("adding a 4th member moved %.1f%% of repos, want 20-30%%", 100*f)
	}

	for _, bad := range [][]string{
		{three[0], three[2], four[3]}, // without self
		nil,
		{},
	} {
		if err := rt.Update(bad); err == nil {
			t.Errorf("Update(%v) = nil, want error", bad)
		} else if len(bad) > 0 && !strings.Contains(err.Error(), three[1]) {
			t.Errorf("Update without self: error %q does not name this member", err)
		}
		if got := rt.Ring().Members(); strings.Join(got, ",") != strings.Join(four, ",") {
			t.Fatalf("a failed Update changed the ring to %v", got)
		}
	}

	// Update back and forth while other goroutines route (run with -race).
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				r := repos[i%len(repos)]
				if o := rt.Owner(r); o == "" {
					t.Errorf("Owner(%q) empty during Update", r)
					return
				}
				_ = rt.Owns(r)
			}
		}()
	}
	for i := range 50 {
		ms := three
		if i%2 == 0 {
			ms = four
		}
		if err := rt.Update(ms); err != nil {
			t.Error(err)
		}
	}
	close(stop)
	wg.Wait()
}

func TestRouterOwnsAgreesWithOwner(t *testing.T) {
	members := memberNames(3)
	var rts []*Router
	for _, m := range members {
		rt, err := New(Options{Members: members, HashKey: testKey, Self: m, Log: zerolog.Nop()})
		if err != nil {
			t.Fatal(err)
		}
		rts = append(rts, rt)
	}
	check := func(stage string) {
		t.Helper()
		for _, r := range repoNames(1000) {
			owners := 0
			for _, rt := range rts {
				if rt.Owns(r) != (rt.Owner(r) == rt.Self()) {
					t.Fatalf("%s: %s: Owns(%q) = %v, Owner = %s", stage, rt.Self(), r, rt.Owns(r), rt.Owner(r))
				}
				if rt.Owns(r) {
					owners++
				}
			}
			if owners != 1 {
				t.Fatalf("%s: %q owned by %d members", stage, r, owners)
			}
		}
	}
	for _, rt := range rts {
		if rt.Self() == "" {
			t.Fatal("empty Self")
		}
		for _, r := range repoNames(200) {
			if rt.Owner(r) != rt.Ring().Owner(r) {
				t.Fatalf("all up: Owner(%q) = %s, ring owner %s", r, rt.Owner(r), rt.Ring().Owner(r))
			}
		}
	}
	check("all up")
	// members[2] is down, as every survivor sees it.
	rts[0].health.markDown(members[2])
	rts[1].health.markDown(members[2])
	rts = rts[:2]
	check("one down")
	for _, r := range repoNames(200) {
		rank := rts[0].Ring().Rank(r)
		want := rank[0]
		if want == members[2] {
			want = rank[1]
		}
		if got := rts[0].Owner(r); got != want {
			t.Fatalf("Owner(%q) = %s with %s down, want %s", r, got, members[2], want)
		}
	}
}

// TestRouterClientGone checks a forward whose client hung up before the
// owner answered: nobody is marked down, no 503 is made up, and the
// request is recorded as 499 (client closed request).
func TestRouterClientGone(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	m := c.members[0]
	repo := c.repoWhere(func(rank []string) bool { return rank[0] != m.addr })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req := httptest.NewRequestWithContext(ctx, "GET", "/v2/"+repo+"/x", nil)
	rec := httptest.NewRecorder()
	local := http.HandlerFunc(func(http.ResponseWriter, *http.Request) { t.Error("served locally") })
	if !m.rt.Forward(rec, req, repo, local) {
		t.Fatal("Forward did not take a request for another member's repository")
	}
	if rec.Code != 499 {
		t.Errorf("status %d, want 499", rec.Code)
	}
	owner := c.byAddr[c.ring().Owner(repo)]
	if owner.served.Load() != 0 {
		t.Errorf("the owner served a request whose client was gone")
	}
	if !m.rt.health.up(owner.addr) {
		t.Errorf("the owner was marked down because a client went away")
	}
}

// TestRouterUpdateWhileForwarding: a member whose member list changes while
// it forwards signs each hop with the epoch of the list it chose the target
// from, so a receiver with either list never answers 421. Run with -race.
func TestRouterUpdateWhileForwarding(t *testing.T) {
	c := newTestCluster(t, 4, clusterOpts{})
	sender := c.members[0]
	four, three := c.addrs, c.addrs[:3]
	ring3, err := NewRing(three, c.key)
	if err != nil {
		t.Fatal(err)
	}
	// Repositories that the resize moves between two peers of the sender:
	// under four members the owner is the fourth, under three another peer.
	var repos []string
	for _, r := range repoNames(5000) {
		if c.ring().Owner(r) == four[3] && ring3.Owner(r) != sender.addr {
			repos = append(repos, r)
		}
		if len(repos) == 50 {
			break
		}
	}
	if len(repos) == 0 {
		t.Fatal("no repository moves between peers")
	}

	stop := make(chan struct{})
	var updates sync.WaitGroup
	updates.Add(1)
	go func() {
		defer updates.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ms := four
			if i%2 == 0 {
				ms = three
			}
			if err := sender.rt.Update(ms); err != nil {
				t.Error(err)
				return
			}
		}
	}()

	var (
		wg                    sync.WaitGroup
		misdirected, requests atomic.Int64
	)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 150 {
				r := repos[(w*150+i)%len(repos)]
				res, err := c.do("GET", sender.addr, "/v2/"+r+"/x", nil, nil)
				requests.Add(1)
				if err != nil {
					t.Errorf("GET %s: %v", r, err)
					return
				}
				switch {
				case res.status == http.StatusMisdirectedRequest:
					misdirected.Add(1)
				case res.status != http.StatusOK:
					t.Errorf("GET %s during resizes: %d %q", r, res.status, res.body)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	updates.Wait()
	if n := misdirected.Load(); n > 0 {
		t.Errorf("%d of %d forwards answered 421 while the sender's member list changed", n, requests.Load())
	}
	if fwd, _, leaked := c.totals(); fwd == 0 || leaked != 0 {
		t.Errorf("%d forwarded, hop header leaked %d times; want forwards and no leak", fwd, leaked)
	}
}
