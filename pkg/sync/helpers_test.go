package sync

import (
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/config"
	"github.com/berthreg/berth/pkg/meta/bolt"
	"github.com/berthreg/berth/pkg/registry"
	"github.com/berthreg/berth/pkg/storage/fs"
)

// fakeUpstream is an in-process upstream registry (go-containerregistry's)
// behind a handler that counts requests and can inject failures.
type fakeUpstream struct {
	*httptest.Server
	Host string // 127.0.0.1:PORT

	mu     gosync.Mutex
	counts map[string]int                    // "METHOD PATH" -> requests
	fail   func(r *http.Request) (int, bool) // answer this status instead
	gate   chan struct{}                     // when set, manifest GETs wait for it
	hold   map[string]*heldBlob              // blob digest -> pause of its GETs
}

// heldBlob pauses the body of a blob's GETs after some bytes until
// released.
type heldBlob struct {
	after   int
	release chan struct{}
}

// holdBlob makes GETs of blob dgst send after bytes, then wait until the
// returned function is called.
func (u *fakeUpstream) holdBlob(dgst string, after int) (release func()) {
	h := &heldBlob{after: after, release: make(chan struct{})}
	u.mu.Lock()
	if u.hold == nil {
		u.hold = map[string]*heldBlob{}
	}
	u.hold[dgst] = h
	u.mu.Unlock()
	var once gosync.Once
	return func() { once.Do(func() { close(h.release) }) }
}

// pausingWriter passes a response through, stopping once after bytes
// until release.
type pausingWriter struct {
	http.ResponseWriter
	h       *heldBlob
	written int
}

func (w *pausingWriter) Write(p []byte) (int, error) {
	if w.written < w.h.after && w.written+len(p) >= w.h.after {
		k := w.h.after - w.written
		n, err := w.ResponseWriter.Write(p[:k])
		w.written += n
		if err != nil {
			return n, err
		}
		w.ResponseWriter.(http.Flusher).Flush()
		<-w.h.release
		m, err := w.ResponseWriter.Write(p[k:])
		w.written += m
		return n + m, err
	}
	n, err := w.ResponseWriter.Write(p)
	w.written += n
	return n, err
}

// newUpstream starts an upstream; referrers turns on the referrers API
// (off, clients use the tag schema, as with `crane registry serve`).
func newUpstream(t *testing.T, referrers bool) *fakeUpstream {
	t.Helper()
	h := ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0)), ggcr.WithReferrersSupport(referrers))
	u := &fakeUpstream{counts: map[string]int{}}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.counts[r.Method+" "+r.URL.Path]++
		fail, gate := u.fail, u.gate
		var held *heldBlob
		if i := strings.LastIndex(r.URL.Path, "/blobs/"); i >= 0 && r.Method == http.MethodGet {
			held = u.hold[r.URL.Path[i+len("/blobs/"):]]
		}
		u.mu.Unlock()
		if held != nil {
			w = &pausingWriter{ResponseWriter: w, h: held}
		}
		if fail != nil {
			if status, ok := fail(r); ok {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(status)
				_, _ = io.WriteString(w, `{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}`)
				return
			}
		}
		if gate != nil && r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/") {
			<-gate
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(u.Close)
	u.Host = strings.TrimPrefix(u.URL, "http://")
	return u
}

// count returns how many METHOD PATH requests were served.
func (u *fakeUpstream) count(method, path string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.counts[method+" "+path]
}

// total counts requests whose "METHOD PATH" contains sub.
func (u *fakeUpstream) total(sub string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for k, v := range u.counts {
		if strings.Contains(k, sub) {
			n += v
		}
	}
	return n
}

func (u *fakeUpstream) setFail(f func(r *http.Request) (int, bool)) {
	u.mu.Lock()
	u.fail = f
	u.mu.Unlock()
}

// ref names repo:tag (or repo@digest) on the upstream.
func (u *fakeUpstream) ref(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(u.Host + "/" + s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// push writes img (a v1.Image or v1.ImageIndex) as repo:tag and returns
// its digest.
func (u *fakeUpstream) push(t *testing.T, ref string, img any) v1.Hash {
	t.Helper()
	r := u.ref(t, ref)
	var (
		d   v1.Hash
		err error
	)
	switch x := img.(type) {
	case v1.Image:
		err = remote.Write(r, x)
		if err == nil {
			d, err = x.Digest()
		}
	case v1.ImageIndex:
		err = remote.WriteIndex(r, x)
		if err == nil {
			d, err = x.Digest()
		}
	default:
		t.Fatalf("push: %T", img)
	}
	if err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return d
}

// randomImage is a random image with n layers of size bytes.
func randomImage(t *testing.T, size, n int64) v1.Image {
	t.Helper()
	img, err := random.Image(size, n)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// local is a Registry over fs storage and bolt metadata in a temp dir.
func newLocal(t *testing.T) *registry.Registry {
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
	t.Cleanup(func() { _ = md.Close() })
	return registry.New(store, md, zerolog.Nop())
}

// fakeClock is a settable clock.
type fakeClock struct{ ns atomic.Int64 }

func newClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())
	return c
}
func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// syncEnv is a Syncer over a fresh local registry.
type syncEnv struct {
	s     *Syncer
	reg   *registry.Registry
	prom  *prometheus.Registry
	clock *fakeClock
}

// regConfig is an on-demand registry over urls with fast retries.
func regConfig(urls ...string) config.SyncRegistry {
	retries := 2
	delay := config.Duration(time.Millisecond)
	return config.SyncRegistry{URLs: urls, OnDemand: true, MaxRetries: &retries, RetryDelay: &delay}
}

// newSyncEnv builds a Syncer for the registries; deps may adjust Deps.
func newSyncEnv(t *testing.T, regs []config.SyncRegistry, deps func(*Deps)) *syncEnv {
	t.Helper()
	e := &syncEnv{reg: newLocal(t), prom: prometheus.NewRegistry(), clock: newClock()}
	d := Deps{Registry: e.reg, Log: zerolog.Nop(), Metrics: e.prom, Now: e.clock.Now}
	if deps != nil {
		deps(&d)
	}
	s, err := New(&config.SyncConfig{Registries: regs}, d)
	if err != nil {
		t.Fatalf("sync.New: %v", err)
	}
	e.s = s
	t.Cleanup(s.Close) // before the temp dirs go
	return e
}

// pull asks for repo:ref as a client's manifest GET or HEAD does and waits
// for the copies it started to end; it returns the error the client gets.
func (e *syncEnv) pull(t *testing.T, repo, ref string, missing bool) error {
	t.Helper()
	_, err := e.s.Manifest(t.Context(), repo, ref, missing)
	settle(t, e.s)
	return err
}

// settle waits until s has no copy in flight.
func settle(t *testing.T, s *Syncer) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		s.live.mu.Lock()
		n := len(s.live.images) + len(s.live.blobs)
		s.live.mu.Unlock()
		s.flights.mu.Lock()
		n += len(s.flights.m)
		s.flights.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d copies still in flight after a minute", n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// digest returns the local digest of repo:ref, or "" when absent.
func (e *syncEnv) digest(t *testing.T, repo, ref string) string {
	t.Helper()
	m, err := e.reg.Resolve(t.Context(), repo, ref)
	if err != nil {
		return ""
	}
	return m.Digest
}

// counter reads one counter of a vector.
func counter(t *testing.T, c *prometheus.CounterVec, labels ...string) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.WithLabelValues(labels...).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// stringResponse is a canned JSON response to r.
func stringResponse(r *http.Request, status int, body string) *http.Response {
	return &http.Response{
		StatusCode: status, Status: http.StatusText(status), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {"application/json"}},
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)), Request: r,
	}
}
