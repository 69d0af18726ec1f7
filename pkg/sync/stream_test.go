package sync

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	gosync "sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/api"
	"github.com/berthreg/berth/pkg/config"
	"github.com/berthreg/berth/pkg/storage"
)

// layerOf returns the digest of img's biggest layer.
func layerOf(t *testing.T, img v1.Image) (v1.Hash, int64) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var best v1.Hash
	var size int64 = -1
	for _, l := range layers {
		n, _ := l.Size()
		if n > size {
			best, _ = l.Digest()
			size = n
		}
	}
	return best, size
}

// TestStreamWhileSyncing: the client gets the manifest, then the first
// bytes of a layer, while upstream is still sending that layer; the image
// is tagged locally only once all of it is stored; every reader and the
// copy share one upstream GET.
func TestStreamWhileSyncing(t *testing.T) {
	up := newUpstream(t, true)
	img := randomImage(t, 1<<20, 2)
	want := up.push(t, "lib/big:1", img)
	layer, size := layerOf(t, img)
	release := up.holdBlob(layer.String(), 256<<10)
	defer release()
	spool := t.TempDir()
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil)
	e.s.dir = spool
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // a hang fails, not the test binary's timeout
	defer cancel()

	m, err := e.s.Manifest(ctx, "lib/big", "1", true)
	if err != nil || m == nil || m.Digest != want.String() || m.MediaType != string(types.DockerManifestSchema2) {
		t.Fatalf("Manifest = %+v, %v; want upstream's %s at once", m, err, want)
	}
	// The child of the copy in flight is served by digest too, from memory.
	if m2, err := e.s.Manifest(ctx, "lib/big", want.String(), true); err != nil || m2 == nil || !bytes.Equal(m2.Body, m.Body) {
		t.Fatalf("Manifest by digest = %+v, %v", m2, err)
	}

	readers := make([]api.SyncedBlob, 3)
	for i := range readers {
		sb, err := e.s.Blob(ctx, "lib/big", digest.Digest(layer.String()))
		if err != nil || sb == nil || sb.Size() != size {
			t.Fatalf("Blob #%d = %v, %v (size want %d)", i, sb, err, size)
		}
		defer sb.Close()
		readers[i] = sb
	}
	// The first 256 KiB arrive although upstream has not sent the rest.
	head := make([]byte, 256<<10)
	if _, err := io.ReadFull(readers[0], head); err != nil {
		t.Fatalf("reading the first bytes while upstream holds the rest: %v", err)
	}
	if e.digest(t, "lib/big", "1") != "" {
		t.Fatal("the tag is visible before its blobs are stored")
	}
	if !spoolIn(t, spool) {
		t.Error("no spool file open in downloadDir")
	}
	if entries, _ := os.ReadDir(spool); len(entries) != 0 {
		t.Errorf("downloadDir holds %d names; spool files are unlinked at once", len(entries))
	}

	release()
	var wg gosync.WaitGroup
	for i, sb := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := sha256.New()
			if i == 0 {
				h.Write(head)
			}
			if _, err := io.Copy(h, sb); err != nil {
				t.Errorf("reader %d: %v", i, err)
			}
			if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != layer.String() {
				t.Errorf("reader %d read %s, want %s", i, got, layer)
			}
		}()
	}
	wg.Wait()
	settle(t, e.s)
	if got := e.digest(t, "lib/big", "1"); got != want.String() {
		t.Errorf("local digest %q, want %s", got, want)
	}
	if n := up.count("GET", "/v2/lib/big/blobs/"+layer.String()); n != 1 {
		t.Errorf("upstream GETs of the layer = %d, want 1", n)
	}
	// Stored now: the registry serves it, not the syncer; the spool is gone.
	if sb, err := e.s.Blob(ctx, "lib/big", digest.Digest(layer.String())); sb != nil || err != nil {
		t.Errorf("Blob after the copy = %v, %v; want nil, nil", sb, err)
	}
	for _, sb := range readers {
		sb.Close()
	}
	if spoolIn(t, spool) {
		t.Error("a spool file is still open after the copy and its readers ended")
	}
}

// spoolIn reports whether this process has a file of dir open.
func spoolIn(t *testing.T, dir string) bool {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	for _, fd := range fds {
		target, _ := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if strings.HasPrefix(target, dir+string(filepath.Separator)+"berth-sync-") {
			return true
		}
	}
	return false
}

// TestStreamThroughAPI: over HTTP, a blob GET during the copy answers 200
// with the full Content-Length and streams; a Range GET answers 206; a
// copy that fails cuts the response short (the client cannot take it for
// the blob).
func TestStreamThroughAPI(t *testing.T) {
	up := newUpstream(t, true)
	img := randomImage(t, 512<<10, 1)
	want := up.push(t, "lib/app:1", img)
	layer, size := layerOf(t, img)
	release := up.holdBlob(layer.String(), 100<<10)
	defer release()
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil)
	srv := httptest.NewServer(api.New(e.reg, api.Options{Log: zerolog.Nop(), Sync: e.s}))
	t.Cleanup(srv.Close)

	resp, err := http.Get(srv.URL + "/v2/lib/app/manifests/1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != want.String() {
		t.Fatalf("manifest: %d %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
	}
	resp, err = http.Get(srv.URL + "/v2/lib/app/blobs/" + layer.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != size {
		t.Fatalf("blob: %d, Content-Length %d (want %d)", resp.StatusCode, resp.ContentLength, size)
	}
	first := make([]byte, 100<<10)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatalf("first bytes while upstream holds the rest: %v", err)
	}
	// A short Range (however spelt) is answered 206, but its last byte,
	// like the blob's, waits until the whole blob is verified.
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v2/lib/app/blobs/"+layer.String(), nil)
	req.Header.Set("Range", "Bytes= 10-19")
	rresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer rresp.Body.Close()
	ranged := make(chan []byte, 1)
	go func() {
		part, _ := io.ReadAll(rresp.Body)
		ranged <- part
	}()
	select {
	case part := <-ranged:
		t.Fatalf("range answered whole (%x) before the blob was verified", part)
	case <-time.After(200 * time.Millisecond):
	}
	release()
	if part := <-ranged; rresp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, first[10:20]) {
		t.Errorf("range: %d %x, want 206 %x", rresp.StatusCode, part, first[10:20])
	}
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if got := digest.FromBytes(append(first, rest...)); got.String() != layer.String() {
		t.Errorf("streamed %s, want %s", got, layer)
	}
	settle(t, e.s)
	if e.digest(t, "lib/app", "1") != want.String() {
		t.Error("image not stored after the copy")
	}

	// A failed copy: readers get a short body, nothing is tagged.
	img2 := randomImage(t, 256<<10, 1)
	up.push(t, "lib/app:2", img2)
	layer2, _ := layerOf(t, img2)
	release2 := up.holdBlob(layer2.String(), 64<<10)
	defer release2()
	if resp, err := http.Get(srv.URL + "/v2/lib/app/manifests/2"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("manifest 2: %v %v", resp, err)
	}
	resp2, err := http.Get(srv.URL + "/v2/lib/app/blobs/" + layer2.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp2.Body.Close()
	if _, err := io.ReadFull(resp2.Body, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	up.setFail(func(r *http.Request) (int, bool) { return http.StatusBadGateway, true }) // retries fail too
	up.CloseClientConnections()
	release2()
	if _, err := io.ReadAll(resp2.Body); err == nil {
		t.Error("a failed copy was streamed as a complete body")
	}
	settle(t, e.s)
	if e.digest(t, "lib/app", "2") != "" {
		t.Error("a half-synced image is tagged")
	}
}

// TestSyncMountsLocalBlobs: a layer another local repository holds is
// linked, not downloaded again.
func TestSyncMountsLocalBlobs(t *testing.T) {
	up := newUpstream(t, true)
	base := randomImage(t, 64<<10, 1)
	shared, _ := layerOf(t, base)
	extra, err := random.Layer(1024, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	derived, err := mutate.AppendLayers(base, extra)
	if err != nil {
		t.Fatal(err)
	}
	up.push(t, "a/base:1", base)
	want := up.push(t, "b/derived:1", derived)
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil)
	if err := e.pull(t, "a/base", "1", true); err != nil {
		t.Fatal(err)
	}
	if err := e.pull(t, "b/derived", "1", true); err != nil {
		t.Fatal(err)
	}
	if e.digest(t, "b/derived", "1") != want.String() {
		t.Fatal("derived image not synced")
	}
	if n := up.count("GET", "/v2/b/derived/blobs/"+shared.String()); n != 0 {
		t.Errorf("the shared layer was downloaded again (%d GETs)", n)
	}
	if got := counter(t, e.s.m.mounts, up.Host); got != 1 {
		t.Errorf("blobs_mounted_total = %v, want 1", got)
	}
	// A client asking for an arbitrary digest gets it from upstream, never
	// mounted from another repository (which would leak its content).
	ctx := t.Context()
	secret := []byte("held by private/x only")
	sd := digest.FromBytes(secret)
	upl, err := e.reg.Store().NewUpload(ctx, "private/x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := upl.Append(ctx, bytes.NewReader(secret)); err != nil {
		t.Fatal(err)
	}
	if _, err := upl.Commit(ctx, sd); err != nil {
		t.Fatal(err)
	}
	upl.Close()
	e.reg.NoteBlob(ctx, "private/x", sd)
	sb, err := e.s.Blob(ctx, "c/probe", sd)
	if err != nil || sb != nil {
		t.Errorf("probe of a digest upstream lacks = %v, %v; want nil, nil (404)", sb, err)
	}
	settle(t, e.s)
	if _, err := e.reg.Store().Stat(ctx, "c/probe", sd); err == nil {
		t.Error("a blob of another repository was mounted for a client's probe")
	}
}

// TestCosignTagsSynced: cosign's legacy .sig, .att and .sbom tags come
// with the image.
func TestCosignTagsSynced(t *testing.T) {
	up := newUpstream(t, false)
	want := up.push(t, "app:1", randomImage(t, 256, 1))
	prefix := "sha256-" + want.Hex
	for _, suffix := range []string{".sig", ".att", ".sbom"} {
		up.push(t, "app:"+prefix+suffix, randomImage(t, 32, 1))
	}
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil)
	if err := e.pull(t, "app", "1", true); err != nil {
		t.Fatal(err)
	}
	for _, suffix := range []string{".sig", ".att", ".sbom"} {
		if e.digest(t, "app", prefix+suffix) == "" {
			t.Errorf("%s%s not synced", prefix, suffix)
		}
	}
}

// TestDownloadDirValidated: a downloadDir that cannot be created fails New
// with the field's name.
func TestDownloadDirValidated(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	writeFile(t, file, "x")
	e := newSyncEnv(t, nil, nil)
	_, err := New(&config.SyncConfig{DownloadDir: filepath.Join(file, "sub"), Registries: []config.SyncRegistry{regConfig("http://127.0.0.1:1")}},
		Deps{Registry: e.reg})
	if err == nil || !strings.Contains(err.Error(), "extensions.sync.downloadDir") {
		t.Errorf("New = %v, want an error naming extensions.sync.downloadDir", err)
	}
}

// TestBlobReaderSeek covers the reader's io.Seeker contract.
func TestBlobReaderSeek(t *testing.T) {
	b := newLiveBlob("r@d", source{}, "sha256:x")
	if err := b.begin(t.TempDir(), 10); err != nil {
		t.Fatal(err)
	}
	if _, err := b.writer().Write([]byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	r := b.reader(t.Context(), nil)
	defer r.Close()
	for _, c := range []struct {
		off    int64
		whence int
		want   int64
	}{{3, io.SeekStart, 3}, {2, io.SeekCurrent, 5}, {-1, io.SeekEnd, 9}} {
		if got, err := r.Seek(c.off, c.whence); err != nil || got != c.want {
			t.Errorf("Seek(%d, %d) = %d, %v; want %d", c.off, c.whence, got, err, c.want)
		}
	}
	b.finish(nil)
	rest, _ := io.ReadAll(r)
	if string(rest) != "9" {
		t.Errorf("read %q after seeking to 9", rest)
	}
	if _, err := r.Seek(-20, io.SeekEnd); err == nil {
		t.Error("seek before the start accepted")
	}

	failed := newLiveBlob("r@d", source{}, "sha256:x")
	if err := failed.begin(t.TempDir(), 10); err != nil {
		t.Fatal(err)
	}
	r3 := failed.reader(t.Context(), nil)
	defer r3.Close()
	failed.finish(errors.New("boom"))
	if failed.reader(t.Context(), nil) != nil {
		t.Error("a reader of a failed copy")
	}
	if _, err := r3.Read(make([]byte, 4)); !errors.Is(err, errCopyFailed) {
		t.Errorf("read after failure = %v, want errCopyFailed", err)
	}
}

// fixedSyncer serves one liveBlob's reader for every Blob call.
type fixedSyncer struct{ b *liveBlob }

func (f fixedSyncer) Manifest(context.Context, string, string, bool) (*api.SyncedManifest, error) {
	return nil, nil
}
func (f fixedSyncer) Referrers(context.Context, string, digest.Digest) error { return nil }
func (f fixedSyncer) Blob(ctx context.Context, _ string, _ digest.Digest) (api.SyncedBlob, error) {
	if rd := f.b.reader(ctx, nil); rd != nil {
		return rd, nil
	}
	return nil, nil
}

// TestStreamHoldsLastByteUntilVerified: every byte is in the spool but the
// digest check has not run: a reader gets all but the last byte, and when
// the check fails, an aborted response — never a complete 200 of wrong
// bytes that a cache could keep.
func TestStreamHoldsLastByteUntilVerified(t *testing.T) {
	wrong := []byte("these are not the bytes of the digest")
	dgst := digest.FromString("the real blob")
	b := newLiveBlob("r@"+dgst.String(), source{}, dgst)
	if err := b.begin(t.TempDir(), int64(len(wrong))); err != nil {
		t.Fatal(err)
	}
	if _, err := b.writer().Write(wrong); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.New(newLocal(t), api.Options{Log: zerolog.Nop(), Sync: fixedSyncer{b}}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/v2/r/blobs/" + dgst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := make([]byte, len(wrong)-1)
	if _, err := io.ReadFull(resp.Body, got); err != nil || !bytes.Equal(got, wrong[:len(wrong)-1]) {
		t.Fatalf("first bytes: %q, %v", got, err)
	}
	b.finish(errors.New("digest mismatch")) // what Commit finds
	if rest, err := io.ReadAll(resp.Body); err == nil {
		t.Errorf("the response ended cleanly (%q more) after the copy failed its digest check", rest)
	}

	// The same, verified: the last byte follows.
	b2 := newLiveBlob("r@x", source{}, dgst)
	if err := b2.begin(t.TempDir(), 3); err != nil {
		t.Fatal(err)
	}
	_, _ = b2.writer().Write([]byte("abc"))
	r := b2.reader(t.Context(), nil)
	defer r.Close()
	buf := make([]byte, 8)
	if n, _ := r.Read(buf); n != 2 {
		t.Fatalf("read %d bytes before the check, want 2", n)
	}
	b2.finish(nil)
	if n, err := r.Read(buf); n != 1 || err != nil || buf[0] != 'c' {
		t.Fatalf("after the check: %d %q %v", n, buf[:n], err)
	}
	if _, err := r.Read(buf); err != io.EOF {
		t.Errorf("then %v, want EOF", err)
	}
}

// TestBlobNotFetchedOutsideCopies: with onlySigned, the manifest of an
// unsigned image is a 404, and naming one of its layers by digest does not
// make the registry download, stream or store it.
func TestBlobNotFetchedOutsideCopies(t *testing.T) {
	up := newUpstream(t, true)
	img := randomImage(t, 4096, 1)
	up.push(t, "app:unsigned", img)
	layer, _ := layerOf(t, img)
	rc := regConfig(up.URL)
	rc.OnlySigned = ptr(true)
	e := newSyncEnv(t, []config.SyncRegistry{rc}, nil)
	ctx := t.Context()
	if m, err := e.s.Manifest(ctx, "app", "unsigned", true); m != nil || err != nil {
		t.Fatalf("Manifest of an unsigned image = %+v, %v; want nil, nil", m, err)
	}
	settle(t, e.s)
	if sb, err := e.s.Blob(ctx, "app", digest.Digest(layer.String())); sb != nil || err != nil {
		t.Errorf("Blob of an unsigned image's layer = %v, %v; want nil, nil", sb, err)
	}
	settle(t, e.s)
	if n := up.count("GET", "/v2/app/blobs/"+layer.String()); n != 0 {
		t.Errorf("%d upstream GETs of the layer", n)
	}
	if _, err := e.reg.Store().Stat(ctx, "app", digest.Digest(layer.String())); err == nil {
		t.Error("a layer of an unsigned image was stored")
	}
}

// TestPresentTagUpdateFailureServesLocal: a tag present locally whose
// re-check finds a new digest is updated before the answer; when the
// update fails, the intact local image is what the client gets.
func TestPresentTagUpdateFailureServesLocal(t *testing.T) {
	up := newUpstream(t, true)
	first := up.push(t, "app:latest", randomImage(t, 64, 1))
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil)
	if err := e.pull(t, "app", "latest", true); err != nil || e.digest(t, "app", "latest") != first.String() {
		t.Fatalf("first pull: %v", err)
	}
	img2 := randomImage(t, 64, 1)
	up.push(t, "app:latest", img2)
	layer2, _ := layerOf(t, img2)
	up.setFail(func(r *http.Request) (int, bool) {
		return http.StatusServiceUnavailable, r.URL.Path == "/v2/app/blobs/"+layer2.String()
	})
	e.clock.Advance(6 * time.Minute)
	m, err := e.s.Manifest(t.Context(), "app", "latest", false)
	if m != nil {
		t.Errorf("present tag: Manifest gave upstream's %s to serve; want nil (serve the local copy)", m.Digest)
	}
	if !errors.Is(err, storage.ErrUnavailable) {
		t.Errorf("present tag, failed update: err %v, want ErrUnavailable (logged, local copy served)", err)
	}
	if got := e.digest(t, "app", "latest"); got != first.String() {
		t.Errorf("local tag %s after a failed update, want the intact %s", got, first)
	}
}

// TestCloseStopsCopies: after Close no copy starts (nothing reaches
// upstream or the store), and Close racing with new requests is safe.
func TestCloseStopsCopies(t *testing.T) {
	up := newUpstream(t, true)
	up.push(t, "app:1", randomImage(t, 4096, 1))
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil)
	var wg gosync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = e.s.Manifest(context.Background(), fmt.Sprintf("race/%d", i), "1", true)
		}()
	}
	e.s.Close()
	wg.Wait()
	before := up.total("")
	if m, err := e.s.Manifest(t.Context(), "app", "1", true); m != nil || err == nil {
		t.Errorf("Manifest after Close = %+v, %v; want an error", m, err)
	}
	settle(t, e.s)
	if n := up.total("") - before; n != 0 {
		t.Errorf("%d upstream requests after Close", n)
	}
	if e.digest(t, "app", "1") != "" {
		t.Error("an image was stored after Close")
	}
}

// TestOnDemandJoiningPeriodicCopyWaits: a pull of a tag a periodic copy is
// fetching joins that copy, and is answered once the image is stored (a
// periodic copy is not streamed: its blobs are neither spooled nor started
// for clients).
func TestOnDemandJoiningPeriodicCopyWaits(t *testing.T) {
	up := newUpstream(t, true)
	img := randomImage(t, 64<<10, 1)
	want := up.push(t, "lib/app:1", img)
	layer, _ := layerOf(t, img)
	release := up.holdBlob(layer.String(), 1024)
	defer release()
	rc := regConfig(up.URL)
	rc.PollInterval = config.Duration(time.Hour)
	rc.Content = []config.SyncContent{{Prefix: "lib/app"}}
	e := newSyncEnv(t, []config.SyncRegistry{rc}, nil)
	periodic := make(chan struct{})
	go func() { e.s.SyncOnce(context.Background()); close(periodic) }()
	deadline := time.Now().Add(time.Minute)
	for up.count("GET", "/v2/lib/app/blobs/"+layer.String()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the periodic copy never asked for the layer")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Held upstream: an on-demand pull waits (it is not answered early).
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	m, err := e.s.Manifest(ctx, "lib/app", "1", true)
	cancel()
	if m != nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Manifest while a periodic copy holds the tag = %+v, %v; want it to wait", m, err)
	}
	// Its layer is not streamed either: the client waits for it to be stored.
	ctx, cancel = context.WithTimeout(t.Context(), 300*time.Millisecond)
	sb, err := e.s.Blob(ctx, "lib/app", digest.Digest(layer.String()))
	cancel()
	if sb != nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Blob of a periodic copy in flight = %v, %v; want it to wait", sb, err)
	}
	release()
	<-periodic
	settle(t, e.s)
	m, err = e.s.Manifest(t.Context(), "lib/app", "1", false)
	if m != nil || err != nil || e.digest(t, "lib/app", "1") != want.String() {
		t.Errorf("after the periodic copy: %+v, %v, local %q", m, err, e.digest(t, "lib/app", "1"))
	}
}
