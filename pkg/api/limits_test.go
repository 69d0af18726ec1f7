package api_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/api"
	"github.com/berthreg/berth/pkg/cluster"
	"github.com/berthreg/berth/pkg/meta/bolt"
	"github.com/berthreg/berth/pkg/registry"
	"github.com/berthreg/berth/pkg/storage/fs"
)

// rawRequest sends a request head announcing contentLength body bytes and
// the first bytes of the body by hand, so that the rest can be stalled or
// never sent. The connection closes when the test ends.
func rawRequest(t *testing.T, addr, method, path string, contentLength int, body []byte, header ...string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, path, addr)
	if contentLength >= 0 {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", contentLength)
	}
	for i := 0; i+1 < len(header); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", header[i], header[i+1])
	}
	b.WriteString("\r\n")
	if _, err := c.Write(append([]byte(b.String()), body...)); err != nil {
		t.Fatal(err)
	}
	return c
}

// readAnswer reads the response on c, or reports that the connection ended
// without one.
func readAnswer(t *testing.T, c net.Conn, within time.Duration) (*http.Response, []byte, error) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// requireCutOff waits for the server to drop c without answering and
// returns how long that took.
func requireCutOff(t *testing.T, c net.Conn, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(within))
	got, err := io.ReadAll(c)
	took := time.Since(start)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %s", within)
	}
	if len(got) != 0 {
		t.Fatalf("got an answer, want the connection dropped: %.200q", got)
	}
	return took
}

// metricValue reads one sample of /metrics ("" when absent).
func metricValue(t *testing.T, ts *testServer, sample string) string {
	t.Helper()
	_, body := ts.get(t, "GET", "/metrics")
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, sample+" "); ok {
			return v
		}
	}
	return ""
}

// invalidPost is a monolithic upload that fails at once (bad digest) when
// it gets past the limits: 429 when the client is at its limit, else 400.
func invalidPost(t *testing.T, url string) *http.Response {
	t.Helper()
	resp, err := http.Post(url+"/v2/test/blobs/uploads/?digest=sha256:nope", "application/octet-stream", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// waitUploads waits until the server at url receives n upload bodies
// (berth_uploads_in_progress): they have been counted against the limits.
// (Probing the sessions instead would hold them and race the uploads.)
func waitUploads(t *testing.T, url string, n int) {
	t.Helper()
	want := fmt.Sprintf("berth_uploads_in_progress %d\n", n)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		resp, err := http.Get(url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in %s/metrics", want, url)
		}
	}
}

// waitStatus polls invalidPost until it answers want.
func waitStatus(t *testing.T, url string, want int) *http.Response {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		resp := invalidPost(t, url)
		if resp.StatusCode == want {
			return resp
		}
		if time.Now().After(deadline) {
			t.Fatalf("upload answered %d, want %d", resp.StatusCode, want)
		}
	}
}

// TestUploadsPerClient: uploads in progress are counted per client; one
// over the limit is answered 429 with Retry-After, requests that upload
// nothing are not counted, and a finished upload frees its place.
func TestUploadsPerClient(t *testing.T) {
	t.Parallel()
	ts := newServerWith(t, api.Options{Log: zerolog.Nop(), Metrics: prometheus.NewRegistry(), Limits: api.Limits{UploadsPerClient: 2}})
	addr := ts.Listener.Addr().String()
	var conns []net.Conn
	for range 2 {
		id := ts.startUpload(t, "test", nil)
		conns = append(conns, rawRequest(t, addr, "PATCH", "/v2/test/blobs/uploads/"+id, 10, []byte("01234")))
	}
	waitUploads(t, ts.URL, 2)
	resp := invalidPost(t, ts.URL)
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third upload: %d, want 429", resp.StatusCode)
	}
	if resp.Header.Get("Retry-After") == "" {
		t.Errorf("429 without Retry-After: %v", resp.Header)
	}
	ts.do(t, nil, call{method: "POST", path: "/v2/test/blobs/uploads/?digest=" + digest.FromString("x").String(), body: []byte("x"),
		status: http.StatusTooManyRequests, code: "TOOMANYREQUESTS", wantHeader: h("Retry-After", "1")})
	ts.do(t, nil, call{method: "PATCH", path: "/v2/test/blobs/uploads/{upload}", body: []byte("x"), status: http.StatusTooManyRequests, code: "TOOMANYREQUESTS"})
	// Nothing to upload: not counted.
	ts.do(t, nil, call{method: "GET", path: "/v2/test/tags/list", status: http.StatusOK})
	ts.do(t, nil, call{method: "POST", path: "/v2/test/blobs/uploads/", status: http.StatusAccepted})
	ts.do(t, nil, call{method: "PUT", path: manifestPath("test", "again"), header: h("Content-Type", mtOCIManifest), body: imgManifest, status: http.StatusCreated})
	if v := metricValue(t, ts, `berth_http_limited_total{limit="uploads_per_client"}`); v == "" || v == "0" {
		t.Errorf("berth_http_limited_total uploads_per_client = %q", v)
	}
	// Finishing one upload frees a place.
	if _, err := conns[0].Write([]byte("56789")); err != nil {
		t.Fatal(err)
	}
	if resp, body, err := readAnswer(t, conns[0], 5*time.Second); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("finished PATCH: %v %s %v", resp, body, err)
	}
	waitStatus(t, ts.URL, http.StatusBadRequest)
}

// TestReadIdleTimeout: a body that stalls is cut after the idle timeout
// without an answer, the session keeps what arrived and can be resumed; a
// body that trickles in for longer than the timeout is received whole.
func TestReadIdleTimeout(t *testing.T) {
	t.Parallel()
	const idle = time.Second
	ts := newServerWith(t, api.Options{Log: zerolog.Nop(), Metrics: prometheus.NewRegistry(), Limits: api.Limits{ReadIdle: idle}})
	addr := ts.Listener.Addr().String()
	data := []byte("0123456789abcdefghij")

	id := ts.startUpload(t, "test", nil)
	c := rawRequest(t, addr, "PATCH", "/v2/test/blobs/uploads/"+id, len(data), data[:10])
	if took := requireCutOff(t, c, 10*time.Second); took < idle-50*time.Millisecond {
		t.Errorf("cut off after %s, before the idle timeout %s", took, idle)
	}
	path := "/v2/test/blobs/uploads/" + id
	ts.do(t, nil, call{method: "GET", path: path, status: http.StatusNoContent, wantHeader: h("Range", "0-9")})
	ts.do(t, nil, call{method: "PUT", path: path + "?digest=" + digest.FromBytes(data).String(),
		header: h("Content-Range", "10-19"), body: data[10:], status: http.StatusCreated})
	if v := metricValue(t, ts, `berth_http_limited_total{limit="read_idle"}`); v != "1" {
		t.Errorf(`berth_http_limited_total{limit="read_idle"} = %q, want 1`, v)
	}

	// A slow body that never pauses for the idle timeout.
	id = ts.startUpload(t, "test", nil)
	start := time.Now()
	slow := data[:8]
	c = rawRequest(t, addr, "PATCH", "/v2/test/blobs/uploads/"+id, len(slow), nil)
	for i := range slow {
		time.Sleep(idle / 5)
		if _, err := c.Write(slow[i : i+1]); err != nil {
			t.Fatalf("write byte %d after %s: %v", i, time.Since(start), err)
		}
	}
	resp, body, err := readAnswer(t, c, 5*time.Second)
	if err != nil || resp.StatusCode != http.StatusAccepted || resp.Header.Get("Range") != "0-7" {
		t.Fatalf("slow PATCH over %s: %v %s %v", time.Since(start), resp, body, err)
	}
}

// TestTruncatedBody: a body that ends before its Content-Length is a
// client error; the session keeps what arrived, and a manifest or a
// monolithic upload stores nothing.
func TestTruncatedBody(t *testing.T) {
	t.Parallel()
	ts := newServer(t)
	addr := ts.Listener.Addr().String()
	send := func(method, path string, n int, body []byte, header ...string) (*http.Response, []byte) {
		t.Helper()
		c := rawRequest(t, addr, method, path, n, body, header...)
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		resp, got, err := readAnswer(t, c, 5*time.Second)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return resp, got
	}
	id := ts.startUpload(t, "test", nil)
	resp, body := send("PATCH", "/v2/test/blobs/uploads/"+id, 100, []byte("0123456789"))
	checkErrorResponse(t, "truncated PATCH", "PATCH", resp, body, "SIZE_INVALID")
	ts.do(t, nil, call{method: "GET", path: "/v2/test/blobs/uploads/" + id, status: http.StatusNoContent, wantHeader: h("Range", "0-9")})

	m := ociManifest(desc(mtOCIConfig, configData), nil, nil, "")
	resp, body = send("PUT", manifestPath("test", "cut"), len(m), m[:len(m)/2], "Content-Type", mtOCIManifest)
	checkErrorResponse(t, "truncated manifest PUT", "PUT", resp, body, "SIZE_INVALID")
	ts.do(t, nil, call{method: "GET", path: manifestPath("test", "cut"), status: http.StatusNotFound, code: "MANIFEST_UNKNOWN"})

	full := []byte("a monolithic upload that never ends")
	d := digest.FromBytes(full)
	resp, body = send("POST", "/v2/test/blobs/uploads/?digest="+d.String(), len(full), full[:8])
	checkErrorResponse(t, "truncated monolithic POST", "POST", resp, body, "SIZE_INVALID")
	ts.do(t, nil, call{method: "HEAD", path: blobPath("test", d), status: http.StatusNotFound})
}

// slowConn reads at most piece bytes at a time, pausing pause before each.
type slowConn struct {
	net.Conn
	piece int
	pause time.Duration
}

func (c *slowConn) Read(p []byte) (int, error) {
	time.Sleep(c.pause)
	_ = c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	return c.Conn.Read(p[:min(len(p), c.piece)])
}

// download reads the response to a GET sent on c through a slowConn and
// returns its body, whole or as far as it came.
func download(t *testing.T, c net.Conn, piece int, pause time.Duration) ([]byte, error) {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReaderSize(&slowConn{Conn: c, piece: piece, pause: pause}, piece), nil)
	if err != nil {
		t.Fatalf("no response: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("download: %d", resp.StatusCode)
	}
	return io.ReadAll(resp.Body)
}

// bigBlob is random content larger than the socket buffers between a
// stalled client and the server.
func bigBlob(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, 12<<20)
	_, _ = rand.Read(b)
	return b
}

// stalledDownload asks for path on a connection with a small receive
// buffer, reads nothing for stall, then reads the response: it returns how
// many body bytes came in all.
func stalledDownload(t *testing.T, addr, path string, stall time.Duration) int {
	t.Helper()
	c := rawRequest(t, addr, "GET", path, -1, nil)
	_ = c.(*net.TCPConn).SetReadBuffer(16 << 10)
	time.Sleep(stall)
	body, err := download(t, c, 1<<20, 0)
	if err == nil {
		t.Errorf("a stalled download ended without an error")
	}
	return len(body)
}

// TestWriteIdleTimeout: a client that stops reading a download is cut off
// after the idle timeout; one that reads slowly but steadily gets it all,
// though the transfer outlasts the timeout.
func TestWriteIdleTimeout(t *testing.T) {
	t.Parallel()
	const idle = time.Second
	ts := newServerWith(t, api.Options{Log: zerolog.Nop(), Metrics: prometheus.NewRegistry(), Limits: api.Limits{WriteIdle: idle}})
	data := bigBlob(t)
	d := ts.seedBlob(t, "test", data)
	addr := ts.Listener.Addr().String()

	if n := stalledDownload(t, addr, blobPath("test", d), 3*idle); n >= len(data) {
		t.Errorf("a stalled client got all %d bytes", n)
	}
	if v := metricValue(t, ts, `berth_http_limited_total{limit="write_idle"}`); v != "1" {
		t.Errorf(`berth_http_limited_total{limit="write_idle"} = %q, want 1`, v)
	}

	data = data[:1<<20]
	d = ts.seedBlob(t, "test", data)
	c := rawRequest(t, addr, "GET", blobPath("test", d), -1, nil)
	start := time.Now()
	body, err := download(t, c, 64<<10, idle/10)
	if err != nil || !bytes.Equal(body, data) {
		t.Fatalf("slow download over %s: got %d of %d bytes: %v", time.Since(start), len(body), len(data), err)
	}
}

// clusterPair is two api.Servers over one registry, each with a real
// cluster router, as two members sharing storage.
type clusterPair struct {
	entry, owner     *api.Server
	entryURL, ownURL string
	repo             string // a repository the owner serves
	reg              *registry.Registry
}

func newClusterPair(t *testing.T, entry, owner api.Limits) *clusterPair {
	t.Helper()
	dir := t.TempDir()
	store, err := fs.New(filepath.Join(dir, "data"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	md, err := bolt.Open(filepath.Join(dir, "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { md.Close() })
	reg := registry.New(store, md, zerolog.Nop())
	var lns []net.Listener
	var addrs []string
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	p := &clusterPair{reg: reg, entryURL: "http://" + addrs[0], ownURL: "http://" + addrs[1]}
	var routers []*cluster.Router
	for i, lim := range []api.Limits{entry, owner} {
		rt, err := cluster.New(cluster.Options{Members: addrs, HashKey: []byte("0123456789abcdef"), Self: addrs[i], Log: zerolog.Nop()})
		if err != nil {
			t.Fatal(err)
		}
		routers = append(routers, rt)
		srv := api.New(reg, api.Options{Log: zerolog.Nop(), Cluster: rt, Limits: lim, Metrics: prometheus.NewRegistry()})
		hs := &http.Server{Handler: srv, BaseContext: func(net.Listener) context.Context { return context.Background() }}
		go func() { _ = hs.Serve(lns[i]) }()
		t.Cleanup(func() { hs.Close() })
		if i == 0 {
			p.entry = srv
		} else {
			p.owner = srv
		}
	}
	for i := 0; ; i++ {
		if repo := fmt.Sprintf("proxied/r%d", i); routers[0].Owner(repo) == addrs[1] {
			p.repo = repo
			break
		}
	}
	return p
}

// seedBlob stores content in the pair's repository, not through the API.
func (p *clusterPair) seedBlob(t *testing.T, content []byte) digest.Digest {
	t.Helper()
	ctx := t.Context()
	up, err := p.reg.Store().NewUpload(ctx, p.repo)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	if _, err := up.Append(ctx, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	d := digest.FromBytes(content)
	if _, err := up.Commit(ctx, d); err != nil {
		t.Fatal(err)
	}
	p.reg.NoteBlob(ctx, p.repo, d)
	return d
}

// startUpload opens a session through the entry member.
func (p *clusterPair) startUpload(t *testing.T) string {
	t.Helper()
	resp, err := http.Post(p.entryURL+"/v2/"+p.repo+"/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST upload: %d", resp.StatusCode)
	}
	return resp.Header.Get("Location")
}

// TestLimitsThroughClusterProxy: the limits hold for requests the entry
// member forwards to the owner. Uploads count on the entry member, by the
// client's address, and not again on the owner; a stalled upload and a
// stalled download are cut on the entry member; slow steady transfers pass.
func TestLimitsThroughClusterProxy(t *testing.T) {
	t.Parallel()
	const idle = time.Second

	t.Run("uploads per client", func(t *testing.T) {
		t.Parallel()
		p := newClusterPair(t, api.Limits{UploadsPerClient: 2}, api.Limits{UploadsPerClient: 1})
		addr := strings.TrimPrefix(p.entryURL, "http://")
		var conns []net.Conn
		for range 2 {
			conns = append(conns, rawRequest(t, addr, "PATCH", p.startUpload(t), 10, []byte("01234")))
		}
		waitUploads(t, p.ownURL, 2) // the owner receives them
		resp, err := http.Post(p.entryURL+"/v2/"+p.repo+"/blobs/uploads/?digest=sha256:nope", "", strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("third upload: %d, want 429", resp.StatusCode)
		}
		for i, c := range conns {
			if _, err := c.Write([]byte("56789")); err != nil {
				t.Fatal(err)
			}
			// The owner, limited to 1, took both: it did not count the
			// forwarded uploads against the entry member's address.
			if resp, body, err := readAnswer(t, c, 5*time.Second); err != nil || resp.StatusCode != http.StatusAccepted {
				t.Fatalf("forwarded PATCH %d: %v %s %v", i, resp, body, err)
			}
		}
	})

	t.Run("read idle", func(t *testing.T) {
		t.Parallel()
		p := newClusterPair(t, api.Limits{ReadIdle: idle}, api.Limits{})
		addr := strings.TrimPrefix(p.entryURL, "http://")
		loc := p.startUpload(t)
		data := []byte("0123456789abcdefghij")
		c := rawRequest(t, addr, "PATCH", loc, len(data), data[:10])
		requireCutOff(t, c, 10*time.Second)
		// The session is usable and says what it holds (the proxy may not
		// have passed on the last bytes it read). The owner lets go of it
		// once it sees the forwarded request end.
		var resp *http.Response
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			var err error
			if resp, err = http.Get(p.entryURL + loc); err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusConflict || time.Now().After(deadline) {
				break
			}
		}
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("upload status after the cut: %d", resp.StatusCode)
		}
		var last int
		if _, err := fmt.Sscanf(resp.Header.Get("Range"), "0-%d", &last); err != nil {
			t.Fatalf("Range %q: %v", resp.Header.Get("Range"), err)
		}
		// A slow steady body through the proxy gets in whole.
		slow := data[:8]
		c = rawRequest(t, addr, "PATCH", p.startUpload(t), len(slow), nil)
		for i := range slow {
			time.Sleep(idle / 5)
			if _, err := c.Write(slow[i : i+1]); err != nil {
				t.Fatal(err)
			}
		}
		if resp, body, err := readAnswer(t, c, 5*time.Second); err != nil || resp.StatusCode != http.StatusAccepted || resp.Header.Get("Range") != "0-7" {
			t.Fatalf("slow forwarded PATCH: %v %s %v", resp, body, err)
		}
	})

	t.Run("write idle", func(t *testing.T) {
		t.Parallel()
		p := newClusterPair(t, api.Limits{WriteIdle: idle}, api.Limits{})
		data := bigBlob(t)
		small := data[:1<<20]
		d, ds := p.seedBlob(t, data), p.seedBlob(t, small)
		addr := strings.TrimPrefix(p.entryURL, "http://")
		if n := stalledDownload(t, addr, blobPath(p.repo, d), 3*idle); n >= len(data) {
			t.Errorf("a stalled client got all %d bytes through the proxy", n)
		}
		c := rawRequest(t, addr, "GET", blobPath(p.repo, ds), -1, nil)
		if body, err := download(t, c, 64<<10, idle/10); err != nil || !bytes.Equal(body, small) {
			t.Fatalf("slow download through the proxy: got %d of %d bytes: %v", len(body), len(data), err)
		}
	})
}
