package e2e

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// cxHoldProxy stands between the cluster and an upstream: GETs of one blob
// send its first bytes, then wait until released. It counts those GETs.
type cxHoldProxy struct {
	URL     string
	digest  string
	after   int
	release chan struct{}
	once    sync.Once
	gets    atomic.Int64
	held    chan struct{} // closed when a GET reached the hold
	heldOne sync.Once
}

func cxStartHoldProxy(t *testing.T, upstream, digest string, after int) *cxHoldProxy {
	t.Helper()
	u, err := url.Parse(upstream)
	must(t, err)
	rp := httputil.NewSingleHostReverseProxy(u)
	hp := &cxHoldProxy{digest: digest, after: after, release: make(chan struct{}), held: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	hp.URL = "http://" + ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+hp.digest) {
			rp.ServeHTTP(w, r)
			return
		}
		hp.gets.Add(1)
		res, err := http.Get(upstream + r.URL.Path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer res.Body.Close()
		for k, v := range res.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(res.StatusCode)
		if _, err := io.CopyN(w, res.Body, int64(hp.after)); err != nil {
			return
		}
		w.(http.Flusher).Flush()
		hp.heldOne.Do(func() { close(hp.held) })
		<-hp.release
		_, _ = io.Copy(w, res.Body)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { hp.Release(); srv.Close() })
	return hp
}

// Release lets the held GETs finish.
func (hp *cxHoldProxy) Release() { hp.once.Do(func() { close(hp.release) }) }

// streamSetup is an upstream Berth holding one ~6 MiB single-layer image
// behind a hold proxy (GETs of the layer stop after its first MiB until
// released), and the 3-member cluster syncing from that proxy on demand.
type streamSetup struct {
	up     *syncProc
	img    cxUpImage
	layer  string
	hold   *cxHoldProxy
	c      *cluster
	owner  *reg
	others []*reg // the members that do not own img.repo
}

// streamFirst is how much of the layer the hold proxy lets through.
const streamFirst = 1 << 20

func startStreamSetup(t *testing.T, ref string) *streamSetup {
	t.Helper()
	st := &streamSetup{up: syncStartBerth(t, "upstream-berth", nil)}
	st.img = cxPushUp(t, st.up, ref, cxRandomImage(t, 6<<20, 1))
	st.layer = st.img.layers[0]
	st.hold = cxStartHoldProxy(t, st.up.URL, st.layer, streamFirst)
	st.c = cxSyncCluster(t, map[string]any{"urls": []string{st.hold.URL}, "onDemand": true, "maxRetries": 1, "retryDelay": "100ms"})
	st.owner = st.c.member(st.c.cxOwner(t, st.img.repo))
	for _, m := range st.c.Members {
		if m != st.owner {
			st.others = append(st.others, m)
		}
	}
	return st
}

// TestClusterSyncStreams: an on-demand pull is not held until the whole
// image is stored. While upstream has sent only the first 1 MiB of a ~6 MiB
// layer, a client asking a non-owner gets upstream's manifest, and a
// client asking through HAProxy gets that first MiB of the layer (with
// the full Content-Length) — streamed from the owner's copy in flight —
// while nothing is tagged yet. A crane pull started meanwhile completes
// once upstream sends the rest, and so does the owner's copy: the layer
// was downloaded from upstream once for all of them. Then skopeo --all
// pulls a multi-platform image through HAProxy: one image copy, counted on
// the owner only, and one upstream GET of each platform manifest.
func TestClusterSyncStreams(t *testing.T) {
	defer timed(t)()
	crane := tool(t, "crane")
	st := startStreamSetup(t, "stream/app:1")
	up, img, layer, hold, c := st.up, st.img, st.layer, st.hold, st.c
	owner, other := st.owner.Host, st.others[0]
	const first = streamFirst

	res := other.do(t, "GET", "/v2/"+img.repo+"/manifests/"+img.tag, map[string]string{"Accept": syncAccept}, nil)
	if res.Status != 200 || sha256Digest(res.Body) != img.digest || res.Header.Get("Docker-Content-Digest") != img.digest {
		t.Fatalf("manifest via the non-owner %s while the layer is held upstream: %s", other.Host, res)
	}

	req, err := http.NewRequest(http.MethodGet, c.LBReg.URL+"/v2/"+img.repo+"/blobs/"+layer, nil)
	must(t, err)
	lr, err := httpClient.Do(req)
	must(t, err)
	defer lr.Body.Close()
	if lr.StatusCode != 200 || lr.ContentLength <= 2*first || lr.Header.Get("Docker-Content-Digest") != layer {
		t.Fatalf("layer via HAProxy while held: %d, Content-Length %d", lr.StatusCode, lr.ContentLength)
	}
	head := make([]byte, first)
	if _, err := io.ReadFull(lr.Body, head); err != nil {
		t.Fatalf("reading the layer's first MiB while upstream holds the rest: %v", err)
	}
	// The proxy marks the hold just after flushing the bytes read above.
	select {
	case <-hold.held:
	case <-time.After(10 * time.Second):
		t.Fatal("the hold proxy never held the layer")
	}
	for _, e := range c.entries() {
		if tags := cxTags(t, e, img.repo); len(tags) != 0 {
			t.Errorf("tags of %s via %s before its layer is stored: %q", img.repo, c.name(e), tags)
		}
	}

	// A real client joins the copy in flight.
	dir := filepath.Join(t.TempDir(), "pulled")
	pulled := make(chan cmdResult, 1)
	go func() {
		pulled <- execCmd(context.Background(), clientEnv(t), "", 2*time.Minute, crane, "pull", "--insecure", "--format", "oci", c.Members[2].Host+"/"+img.repo+":"+img.tag, dir)
	}()
	// crane cannot finish while the layer is held: it waits on the copy in
	// flight like every other reader (a slow machine only makes this wait
	// pass more easily; finishing early would be the bug).
	select {
	case r := <-pulled:
		t.Fatalf("crane pull finished while upstream still held the layer: %v\n%s", r.Err, r.Combined)
	case <-time.After(time.Second):
	}
	hold.Release()

	rest, err := io.ReadAll(lr.Body)
	if err != nil {
		t.Fatalf("reading the rest of the layer: %v", err)
	}
	if d := sha256Digest(append(head, rest...)); d != layer {
		t.Errorf("layer streamed through HAProxy: %s, want %s", d, layer)
	}
	if r := <-pulled; r.Err != nil {
		t.Fatalf("crane pull during the copy: %v\n%s", r.Err, r.Combined)
	}
	if d := layoutDigest(t, dir, ""); d != img.digest {
		t.Errorf("crane pulled %s, upstream has %s", d, img.digest)
	}
	waitUntil(t, 30*time.Second, img.repo+" tagged on the cluster", func() bool {
		return slices.Contains(cxTags(t, c.LBReg, img.repo), img.tag)
	})
	// The owner logs "image synced" just after storing the tag.
	for deadline := time.Now().Add(5 * time.Second); len(c.cxSynced(t, img.repo, "ondemand")[owner]) == 0 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	if s := c.cxSynced(t, img.repo, "ondemand"); len(s) != 1 || len(s[owner]) != 1 {
		t.Errorf("\"image synced\" lines per member %v, want one on the owner %s", cxCounts(s), owner)
	}
	if n := hold.gets.Load(); n != 1 {
		t.Errorf("upstream GETs of the layer = %d, want 1 (the owner's copy, shared with every reader)", n)
	}
	for _, e := range c.entries() {
		res := e.do(t, "GET", "/v2/"+img.repo+"/blobs/"+layer, nil, nil)
		if res.Status != 200 || !bytes.Equal(res.Body[:first], head) || sha256Digest(res.Body) != layer {
			t.Errorf("stored layer via %s: %d, digest %s", c.name(e), res.Status, sha256Digest(res.Body))
		}
	}

	// A multi-platform image pulled whole by a real client (skopeo --all:
	// the index, then each platform manifest by digest, then blobs) through
	// HAProxy while its copy is in flight: one image copy on the owner, one
	// upstream GET of each platform manifest.
	idx := cxPushUp(t, up, "stream/multi:1", cxRandomIndex(t))
	fetches := "berth_sync_upstream_fetches_total"
	before := c.cxMetrics(t, fetches)
	idxOwner := c.cxOwner(t, idx.repo)
	out := filepath.Join(t.TempDir(), "multi")
	run(t, tool(t, "skopeo"), "--insecure-policy", "copy", "--all", "--src-tls-verify=false",
		"docker://"+c.LBReg.Host+"/"+idx.repo+":"+idx.tag, "dir:"+out) // dir: keeps manifests as served
	top, err := os.ReadFile(filepath.Join(out, "manifest.json"))
	must(t, err)
	if d := sha256Digest(top); d != idx.digest {
		t.Errorf("skopeo --all pulled index %s, upstream has %s", d, idx.digest)
	}
	for _, ch := range idx.children {
		b, err := os.ReadFile(filepath.Join(out, strings.TrimPrefix(ch, "sha256:")+".manifest.json"))
		if err != nil || sha256Digest(b) != ch {
			t.Errorf("skopeo --all: platform manifest %s: %v", ch, err)
		}
	}
	waitUntil(t, 30*time.Second, idx.repo+" tagged on the cluster", func() bool {
		return slices.Contains(cxTags(t, c.LBReg, idx.repo), idx.tag)
	})
	after := c.cxMetrics(t, fetches)
	for _, m := range c.Members {
		want := 0.0
		if m.Host == idxOwner {
			want = 1
		}
		if d := after[m.Host] - before[m.Host]; d != want {
			t.Errorf("skopeo --all of an index: %s on %s went +%v, want +%v (owner %s)", fetches, m.Host, d, want, idxOwner)
		}
	}
	for _, ch := range idx.children {
		if n := cxUpstreamGets(t, up, idx.repo, ch); n != 1 {
			t.Errorf("upstream GETs of platform manifest %s: %d, want 1", ch, n)
		}
	}
	requireStorageOK(t, c.StorageRoot())
	c.requireNoMisroutes(t)
}

// TestClusterSyncOwnerKilled: kill -9 of the owner in the middle of an
// on-demand copy streaming a layer to a client. The client's read fails
// (never a short body taken for the layer), nothing of the image is tagged
// by the dead copy, and once the survivors see the owner down the next
// pull through HAProxy is served, copied afresh from upstream by the
// member now answering for the repository, with upstream's digests.
func TestClusterSyncOwnerKilled(t *testing.T) {
	defer timed(t)()
	crane := tool(t, "crane")
	st := startStreamSetup(t, "kill/app:1")
	img, layer, hold, c := st.img, st.layer, st.hold, st.c
	owner, survivors := st.owner, st.others
	via := survivors[0]
	const first = streamFirst

	res := via.do(t, "GET", "/v2/"+img.repo+"/manifests/"+img.tag, map[string]string{"Accept": syncAccept}, nil)
	if res.Status != 200 || sha256Digest(res.Body) != img.digest {
		t.Fatalf("manifest via %s: %s", via.Host, res)
	}
	req, err := http.NewRequest(http.MethodGet, via.URL+"/v2/"+img.repo+"/blobs/"+layer, nil)
	must(t, err)
	lr, err := httpClient.Do(req)
	must(t, err)
	defer lr.Body.Close()
	if _, err := io.ReadFull(lr.Body, make([]byte, first)); err != nil || lr.StatusCode != 200 {
		t.Fatalf("first MiB of the layer via %s: %d %v", via.Host, lr.StatusCode, err)
	}

	owner.Kill9()
	if rest, err := io.ReadAll(lr.Body); err == nil {
		t.Fatalf("the layer read through %s ended cleanly (%d more bytes) after its owner was killed", via.Host, len(rest))
	}
	hold.Release()
	waitUntil(t, 30*time.Second, "the survivors to see "+owner.Host+" down", func() bool {
		for _, s := range survivors {
			if up, _ := peerState(s, owner.Host); up {
				return false
			}
		}
		return true
	})
	if tags := cxTags(t, c.LBReg, img.repo); len(tags) != 0 {
		t.Errorf("tags of %s after its copy died with the owner: %q", img.repo, tags)
	}

	dir := filepath.Join(t.TempDir(), "pulled")
	r := execCmd(context.Background(), clientEnv(t), "", 2*time.Minute, crane, "pull", "--insecure", "--format", "oci", c.LBReg.Host+"/"+img.repo+":"+img.tag, dir)
	if r.Err != nil {
		t.Fatalf("crane pull through HAProxy after the owner died: %v\n%s", r.Err, r.Combined)
	}
	if d := layoutDigest(t, dir, ""); d != img.digest {
		t.Errorf("crane pulled %s, upstream has %s", d, img.digest)
	}
	waitUntil(t, 30*time.Second, img.repo+" tagged by a survivor", func() bool {
		return slices.Contains(cxTags(t, c.LBReg, img.repo), img.tag)
	})
	for _, s := range survivors {
		res := s.do(t, "GET", "/v2/"+img.repo+"/blobs/"+layer, nil, nil)
		if res.Status != 200 || sha256Digest(res.Body) != layer {
			t.Errorf("layer via %s after the failover: %d %s", s.Host, res.Status, sha256Digest(res.Body))
		}
	}
	if n := hold.gets.Load(); n < 2 {
		t.Errorf("upstream GETs of the layer = %d, want 2 (the dead owner's copy, then the survivor's)", n)
	}
	requireNoPanic(t, survivors...)
}
