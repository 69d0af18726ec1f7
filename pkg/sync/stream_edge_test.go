package sync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/api"
	"github.com/berthreg/berth/pkg/config"
	"github.com/berthreg/berth/pkg/storage"
)

// TestMultiRangeLiveBlob: a multi-range GET of a blob in flight is
// answered whole (ServeContent would read the content from a goroutine of
// its own, racing the handler and outliving the reader).
func TestMultiRangeLiveBlob(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	dgst := digest.FromBytes(data)
	b := newLiveBlob("r@"+dgst.String(), source{}, dgst)
	if err := b.begin(t.TempDir(), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	w := b.writer()
	_, _ = w.Write(data[:256<<10])
	srv := httptest.NewServer(api.New(newLocal(t), api.Options{Log: zerolog.Nop(), Sync: fixedSyncer{b}}))
	defer srv.Close()
	go func() {
		for off := 256 << 10; off < len(data); off += 32 << 10 {
			time.Sleep(2 * time.Millisecond)
			_, _ = w.Write(data[off : off+32<<10])
		}
		b.finish(nil)
	}()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v2/r/blobs/"+dgst.String(), nil)
	req.Header.Set("Range", "bytes=0-200000,300000-900000")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("multi-range of a blob in flight: %d, %d bytes, %v; want 200 with the whole blob", resp.StatusCode, len(body), err)
	}
}

// corruptFirstBlobGET answers the first GET of one blob with wrong bytes
// (all but the last) and then a broken connection; the next GET of it
// waits for gate, then goes through.
type corruptFirstBlobGET struct {
	rt   http.RoundTripper
	path string
	gate chan struct{}
	mu   gosync.Mutex
	n    int
}

type brokenBody struct {
	r io.Reader
}

func (b *brokenBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		return n, errors.New("connection reset by peer")
	}
	return n, err
}
func (b *brokenBody) Close() error { return nil }

func (c *corruptFirstBlobGET) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, c.path) {
		return c.rt.RoundTrip(r)
	}
	c.mu.Lock()
	c.n++
	n := c.n
	c.mu.Unlock()
	resp, err := c.rt.RoundTrip(r)
	if err != nil || n > 1 {
		if n > 1 {
			<-c.gate
		}
		return resp, err
	}
	real, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	bad := bytes.Repeat([]byte{'X'}, len(real)-1)
	resp.Body = &brokenBody{r: bytes.NewReader(bad)}
	return resp, nil
}

// TestRetryWithOtherBytesFailsReaders: a retried download rewrites the
// spool from offset 0; a reader that already read the first attempt's
// (wrong) bytes must not end with a clean EOF once the second attempt
// verifies: it fails, as the bytes differ.
func TestRetryWithOtherBytesFailsReaders(t *testing.T) {
	up := newUpstream(t, true)
	img := randomImage(t, 64<<10, 1)
	up.push(t, "lib/app:1", img)
	layer, size := layerOf(t, img)
	tr := &corruptFirstBlobGET{rt: http.DefaultTransport, path: "/blobs/" + layer.String(), gate: make(chan struct{})}
	defer func() {
		select {
		case <-tr.gate:
		default:
			close(tr.gate)
		}
	}()
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, func(d *Deps) { d.Transport = tr })
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if m, err := e.s.Manifest(ctx, "lib/app", "1", true); err != nil || m == nil {
		t.Fatalf("Manifest = %v, %v", m, err)
	}
	sb, err := e.s.Blob(ctx, "lib/app", digest.Digest(layer.String()))
	if err != nil || sb == nil {
		t.Fatalf("Blob = %v, %v", sb, err)
	}
	defer sb.Close()
	head := make([]byte, size-1)
	if _, err := io.ReadFull(sb, head); err != nil {
		t.Fatalf("first attempt's bytes: %v", err)
	}
	close(tr.gate) // the retry goes through with the right bytes
	rest, err := io.ReadAll(sb)
	got := digest.FromBytes(append(head, rest...))
	if err == nil && int64(len(head)+len(rest)) == size && got.String() != layer.String() {
		t.Errorf("reader got a complete body (clean EOF) of %s, want %s: unverified bytes of a failed attempt", got, layer)
	}
	if !errors.Is(err, errCopyFailed) {
		t.Errorf("reader of a retry with other bytes: %v, want errCopyFailed", err)
	}
	settle(t, e.s)
	// The copy itself went on: the retry's bytes were verified and stored.
	if _, err := e.reg.Store().Stat(t.Context(), "lib/app", digest.Digest(layer.String())); err != nil {
		t.Errorf("layer after the retry: %v", err)
	}
}

// TestChildManifestServedFromCopy: an index is answered once its children
// are known, so the platform manifest a client asks for next comes from
// the same copy: one upstream GET of it, one fetch counted.
func TestChildManifestServedFromCopy(t *testing.T) {
	up := newUpstream(t, true)
	idx, err := random.Index(256, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	up.push(t, "lib/multi:1", idx)
	im, _ := idx.IndexManifest()
	child := im.Manifests[0].Digest.String()
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if m, err := e.s.Manifest(ctx, "lib/multi", "1", true); err != nil || m == nil {
		t.Fatalf("Manifest = %v, %v", m, err)
	}
	// What a docker/containerd pull does next: the platform's manifest.
	if m, err := e.s.Manifest(ctx, "lib/multi", child, true); err != nil || m == nil || m.Digest != child {
		t.Fatalf("Manifest(child) = %v, %v", m, err)
	}
	settle(t, e.s)
	if n := counter(t, e.s.m.fetches, up.Host); n != 1 {
		t.Errorf("one pull of an index: berth_sync_upstream_fetches_total = %v, want 1", n)
	}
	if n := up.count("GET", "/v2/lib/multi/manifests/"+child); n != 1 {
		t.Errorf("upstream GETs of the child manifest = %d, want 1", n)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestMirrorFallbackWithBlobInFlight: mirror 1 fails one layer while
// another is still downloading from it; when mirror 1 then dies, that
// download falls back to mirror 2 too, and the image is stored.
func TestMirrorFallbackWithBlobInFlight(t *testing.T) {
	up1, up2 := newUpstream(t, true), newUpstream(t, true)
	img := randomImage(t, 64<<10, 2)
	want := up1.push(t, "lib/app:1", img)
	up2.push(t, "lib/app:1", img)
	layers, _ := img.Layers()
	la, _ := layers[0].Digest()
	lb, _ := layers[1].Digest()
	up1.setFail(func(r *http.Request) (int, bool) {
		return http.StatusServiceUnavailable, r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, la.String())
	})
	release := up1.holdBlob(lb.String(), 1024)
	defer release()
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up1.URL, up2.URL)}, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if m, err := e.s.Manifest(ctx, "lib/app", "1", true); err != nil || m == nil {
		t.Fatalf("Manifest = %v, %v", m, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for up2.count("GET", "/v2/lib/app/blobs/"+la.String()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("never fell back to mirror 2")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	// Mirror 1 goes down for good.
	up1.setFail(func(*http.Request) (int, bool) { return http.StatusServiceUnavailable, true })
	up1.CloseClientConnections()
	release()
	settle(t, e.s)
	if got := e.digest(t, "lib/app", "1"); got != want.String() {
		t.Errorf("after falling back to a healthy mirror the tag is %q, want %s (mirror-2 GETs of layer b: %d)",
			got, want, up2.count("GET", "/v2/lib/app/blobs/"+lb.String()))
	}
	t.Logf("berth_sync_upstream_fetches_total = %v for one image copy", counter(t, e.s.m.fetches, up1.Host))
}

// TestFailedCopyAbandonsItsBlobs: when an image copy fails, its other
// blob downloads that no client reads are cancelled, not left running
// against upstream for up to onDemandTimeout.
func TestFailedCopyAbandonsItsBlobs(t *testing.T) {
	up := newUpstream(t, true)
	img := randomImage(t, 64<<10, 2)
	up.push(t, "lib/app:1", img)
	layers, _ := img.Layers()
	bad, _ := layers[0].Digest()
	held, _ := layers[1].Digest()
	up.setFail(func(r *http.Request) (int, bool) {
		return http.StatusNotFound, strings.HasSuffix(r.URL.Path, "/blobs/"+bad.String())
	})
	release := up.holdBlob(held.String(), 1024)
	defer release()
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil)
	if m, err := e.s.Manifest(t.Context(), "lib/app", "1", true); err != nil || m == nil {
		t.Fatalf("Manifest = %v, %v", m, err)
	}
	settle(t, e.s)
	stopped := make(chan struct{})
	go func() { e.s.wg.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("the held layer's download still runs after its image copy failed")
	}
	if _, err := e.reg.Store().Stat(t.Context(), "lib/app", digest.Digest(held.String())); err == nil {
		t.Error("the abandoned layer was stored")
	}
}

// TestHeadOrShortRangeKeepsPlannedBlob: a client touches a layer the
// image copy references but has not reached (its 4 blob workers are busy).
// A HEAD or a short Range GET starts the download and leaves it at once:
// the download goes on for the image copy, which joins it (one upstream
// GET), instead of being cancelled and started again.
func TestHeadOrShortRangeKeepsPlannedBlob(t *testing.T) {
	for _, mode := range []string{"HEAD", "Range"} {
		t.Run(mode, func(t *testing.T) {
			up := newUpstream(t, true)
			img := randomImage(t, 64<<10, 5)
			up.push(t, "lib/app:1", img)
			layers, _ := img.Layers()
			var rels []func()
			for _, l := range layers {
				d, _ := l.Digest()
				rels = append(rels, up.holdBlob(d.String(), 1024))
			}
			releaseAll := func() {
				for _, r := range rels {
					r()
				}
			}
			defer releaseAll()
			last, _ := layers[4].Digest()
			e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil)
			srv := httptest.NewServer(api.New(e.reg, api.Options{Log: zerolog.Nop(), Sync: e.s}))
			t.Cleanup(srv.Close)
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			if m, err := e.s.Manifest(ctx, "lib/app", "1", true); err != nil || m == nil {
				t.Fatalf("Manifest = %v, %v", m, err)
			}
			// Wait for the image copy's 4 workers to be stuck on layers 0-3.
			deadline := time.Now().Add(30 * time.Second)
			for i := 0; i < 4; i++ {
				d, _ := layers[i].Digest()
				for up.count("GET", "/v2/lib/app/blobs/"+d.String()) == 0 {
					if time.Now().After(deadline) {
						t.Fatal("workers never started")
					}
					time.Sleep(2 * time.Millisecond)
				}
			}
			method := http.MethodHead
			if mode == "Range" {
				method = http.MethodGet
			}
			req, _ := http.NewRequestWithContext(ctx, method, srv.URL+"/v2/lib/app/blobs/"+last.String(), nil)
			if mode == "Range" {
				req.Header.Set("Range", "bytes=0-99")
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if mode == "Range" {
				// The range's last byte waits for the digest check: a
				// client taking the first ones and leaving.
				_, _ = io.ReadFull(resp.Body, make([]byte, 99))
			} else {
				_, _ = io.Copy(io.Discard, resp.Body)
			}
			resp.Body.Close()
			t.Logf("%s: %d", mode, resp.StatusCode)
			time.Sleep(50 * time.Millisecond)
			e.s.live.mu.Lock()
			_, inFlight := e.s.live.blobs["lib/app@"+last.String()]
			e.s.live.mu.Unlock()
			releaseAll()
			settle(t, e.s)
			n := up.count("GET", "/v2/lib/app/blobs/"+last.String())
			if !inFlight || n != 1 {
				t.Errorf("after a %s of a planned layer: still in flight=%v; upstream GETs of it = %d, want in flight and 1", mode, inFlight, n)
			}
		})
	}
}

// TestFlushWriterStatuses: HEAD, 304, 206, 416 of a blob in flight
// through the API's flushWriter.
func TestFlushWriterStatuses(t *testing.T) {
	data := make([]byte, 4096)
	for i := range data {
		data[i] = byte(i)
	}
	dgst := digest.FromBytes(data).String()
	b := newLiveBlob("r@"+dgst, source{}, digest.Digest(dgst))
	if err := b.begin(t.TempDir(), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	_, _ = b.writer().Write(data)
	b.refs++ // keep the spool for the test's readers
	b.finish(nil)
	srv := httptest.NewServer(api.New(newLocal(t), api.Options{Log: zerolog.Nop(), Sync: fixedSyncer{b}, Limits: api.Limits{WriteIdle: time.Second}}))
	defer srv.Close()
	for _, c := range []struct {
		method, hdr, val string
		want             int
		n                int
	}{
		{"HEAD", "", "", 200, 0},
		{"GET", "If-None-Match", `"` + dgst + `"`, 304, 0},
		{"GET", "Range", "bytes=10-19", 206, 10},
		{"GET", "Range", "bytes=5000-6000", 416, -1},
		{"GET", "Range", "bytes=-10", 206, 10},
		{"GET", "", "", 200, 4096},
	} {
		req, _ := http.NewRequest(c.method, srv.URL+"/v2/r/blobs/"+dgst, nil)
		if c.hdr != "" {
			req.Header.Set(c.hdr, c.val)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.want || err != nil || (c.n >= 0 && len(body) != c.n) {
			t.Errorf("%s %s=%s: %d %d bytes %v (CL %d, Content-Range %q)", c.method, c.hdr, c.val, resp.StatusCode, len(body), err, resp.ContentLength, resp.Header.Get("Content-Range"))
		}
	}
}

// TestIndexChildrenFetchedTogether: the platform manifests of an index are
// fetched from upstream at the same time, not one after another, since
// the client's answer waits for all of them. Each child GET waits until
// another one has arrived too; fetched one by one, none ever does.
func TestIndexChildrenFetchedTogether(t *testing.T) {
	up := newUpstream(t, true)
	idx, err := random.Index(256, 1, 4)
	if err != nil {
		t.Fatal(err)
	}
	up.push(t, "lib/plat:1", idx)
	im, _ := idx.IndexManifest()
	children := map[string]bool{}
	for _, m := range im.Manifests {
		children["/v2/lib/plat/manifests/"+m.Digest.String()] = true
	}
	var (
		mu      gosync.Mutex
		arrived int
		met     = make(chan struct{})
		alone   atomic.Bool // a child GET waited in vain for another
	)
	up.setFail(func(r *http.Request) (int, bool) {
		if r.Method != http.MethodGet || !children[r.URL.Path] {
			return 0, false
		}
		mu.Lock()
		if arrived++; arrived == 2 {
			close(met)
		}
		mu.Unlock()
		select {
		case <-met:
		case <-time.After(10 * time.Second):
			alone.Store(true)
		}
		return 0, false
	})
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if m, err := e.s.Manifest(ctx, "lib/plat", "1", true); err != nil || m == nil {
		t.Fatalf("Manifest = %v, %v", m, err)
	}
	settle(t, e.s)
	if alone.Load() {
		t.Error("the index's child manifests were fetched one at a time")
	}
	for p := range children {
		if n := up.count("GET", p); n != 1 {
			t.Errorf("upstream GETs of %s = %d, want 1", p, n)
		}
	}
	d, _ := idx.Digest()
	if _, err := e.reg.Resolve(ctx, "lib/plat", d.String()); err != nil {
		t.Errorf("index not stored: %v", err)
	}
}

// TestIndexSharingAChildWithANestedIndex: the top index names a nested
// index N and a manifest M, and N names M too. M must be stored before N
// (which the registry refuses otherwise) and the tag must arrive.
func TestIndexSharingAChildWithANestedIndex(t *testing.T) {
	up := newUpstream(t, true)
	m := randomImage(t, 128, 1)
	nested := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: m})
	top := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: nested},
		mutate.IndexAddendum{Add: m})
	d := up.push(t, "lib/shared:1", top)
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if got, err := e.s.Manifest(ctx, "lib/shared", "1", true); err != nil || got == nil || got.Digest != d.String() {
		t.Fatalf("Manifest = %v, %v; want %s", got, err, d)
	}
	settle(t, e.s)
	if got, err := e.reg.Resolve(ctx, "lib/shared", "1"); err != nil || got.Digest != d.String() {
		t.Fatalf("tag 1 after the copy: %v, %v; want %s", got, err, d)
	}
	md, _ := m.Digest()
	if n := up.count("GET", "/v2/lib/shared/manifests/"+md.String()); n != 1 {
		t.Errorf("upstream GETs of the shared child = %d, want 1", n)
	}
}

// TestStalledUpstreamBody: mirror 1 sends the first KiB of a layer and
// then nothing, without closing. The download is given up after the body
// idle timeout, and the layer comes from mirror 2.
func TestStalledUpstreamBody(t *testing.T) {
	up1, up2 := newUpstream(t, true), newUpstream(t, true)
	img := randomImage(t, 64<<10, 1)
	want := up1.push(t, "lib/app:1", img)
	up2.push(t, "lib/app:1", img)
	layer, _ := layerOf(t, img)
	release := up1.holdBlob(layer.String(), 1024) // never released while the copy runs
	defer release()
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up1.URL, up2.URL)}, func(d *Deps) { d.BodyIdle = time.Second })
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if m, err := e.s.Manifest(ctx, "lib/app", "1", true); err != nil || m == nil {
		t.Fatalf("Manifest = %v, %v", m, err)
	}
	settle(t, e.s)
	if got := e.digest(t, "lib/app", "1"); got != want.String() {
		t.Fatalf("tag after mirror 1 stalled: %q, want %s", got, want)
	}
	if n := up1.count("GET", "/v2/lib/app/blobs/"+layer.String()); n != 3 {
		t.Errorf("GETs of the layer from the stalled mirror = %d, want 3 (1 + 2 retries)", n)
	}
	if n := up2.count("GET", "/v2/lib/app/blobs/"+layer.String()); n < 1 {
		t.Errorf("GETs of the layer from mirror 2 = %d, want at least 1", n)
	}
}

// TestCopyTimeoutIsUnavailable: a copy that hits its own time limit is
// answered 503 (ErrUnavailable), not 500.
func TestCopyTimeoutIsUnavailable(t *testing.T) {
	up := newUpstream(t, true)
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil)
	src, ok := e.s.onDemandSource("lib/app")
	if !ok {
		t.Fatal("no on-demand source")
	}
	err := e.s.answer(t.Context(), src, "1", fmt.Errorf("copy blob: %w", context.DeadlineExceeded))
	if !errors.Is(err, storage.ErrUnavailable) {
		t.Errorf("answer(deadline exceeded) = %v; want ErrUnavailable", err)
	}
}
