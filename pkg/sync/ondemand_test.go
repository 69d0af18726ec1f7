package sync

import (
	"errors"
	"io"
	"net/http"
	"strings"
	gosync "sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/berthreg/berth/pkg/api"
	"github.com/berthreg/berth/pkg/config"
	"github.com/berthreg/berth/pkg/storage"
)

var _ api.Syncer = (*Syncer)(nil)

func TestOnDemandImagePreservesDigestAndMediaType(t *testing.T) {
	up := newUpstream(t, true)
	docker := randomImage(t, 1024, 2) // Docker media types
	oci := mutate.MediaType(randomImage(t, 512, 1), types.OCIManifestSchema1)
	dd := up.push(t, "library/alpine:docker", docker)
	od := up.push(t, "library/alpine:oci", oci)
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil)
	ctx := t.Context()

	for tag, want := range map[string]v1.Hash{"docker": dd, "oci": od} {
		if err := e.pull(t, "library/alpine", tag, true); err != nil {
			t.Fatalf("Manifest(%s): %v", tag, err)
		}
		m, err := e.reg.Resolve(ctx, "library/alpine", tag)
		if err != nil {
			t.Fatalf("Resolve(%s): %v", tag, err)
		}
		if m.Digest != want.String() {
			t.Errorf("%s: local digest %s, upstream %s", tag, m.Digest, want)
		}
	}
	if m, _ := e.reg.Resolve(ctx, "library/alpine", "docker"); m.MediaType != string(types.DockerManifestSchema2) {
		t.Errorf("docker media type = %q", m.MediaType)
	}
	if m, _ := e.reg.Resolve(ctx, "library/alpine", "oci"); m.MediaType != string(types.OCIManifestSchema1) {
		t.Errorf("oci media type = %q", m.MediaType)
	}
	// Every blob is there, byte for byte.
	layers, _ := docker.Layers()
	for _, l := range layers {
		d, _ := l.Digest()
		size, _ := l.Size()
		info, err := e.reg.Store().Stat(ctx, "library/alpine", digest.Digest(d.String()))
		if err != nil || info.Size != size {
			t.Errorf("layer %s: %+v, %v", d, info, err)
		}
	}
	// Pulling by digest is served locally now: no new upstream request.
	before := up.total("GET /v2/library/alpine/manifests/")
	if err := e.pull(t, "library/alpine", dd.String(), false); err != nil {
		t.Fatal(err)
	}
	if after := up.total("GET /v2/library/alpine/manifests/"); after != before {
		t.Errorf("digest pull went upstream: %d -> %d", before, after)
	}
	if got := counter(t, e.s.m.images, up.Host, modeOnDemand); got != 2 {
		t.Errorf("images_total = %v, want 2", got)
	}
	if got := counter(t, e.s.m.bytes, up.Host); got < 3*512 {
		t.Errorf("bytes_total = %v", got)
	}
}

func TestOnDemandIndexAndReferrers(t *testing.T) {
	for _, referrersAPI := range []bool{true, false} {
		name := "referrers API"
		if !referrersAPI {
			name = "tag schema"
		}
		t.Run(name, func(t *testing.T) {
			up := newUpstream(t, referrersAPI)
			idx, err := random.Index(256, 1, 3)
			if err != nil {
				t.Fatal(err)
			}
			id := up.push(t, "multi/arch:v1", idx)
			sig := mutate.ConfigMediaType(randomImage(t, 64, 1), "application/vnd.dev.cosign.artifact.sig.v1+json")
			desc, _ := partialDescriptor(t, idx)
			signed := mutate.Subject(sig, desc).(v1.Image)
			sd, _ := signed.Digest()
			up.push(t, "multi/arch@"+sd.String(), signed)

			e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil)
			ctx := t.Context()
			if err := e.pull(t, "multi/arch", "v1", true); err != nil {
				t.Fatal(err)
			}
			if got := e.digest(t, "multi/arch", "v1"); got != id.String() {
				t.Fatalf("index digest %q, want %s", got, id)
			}
			im, _ := idx.IndexManifest()
			for _, c := range im.Manifests {
				if e.digest(t, "multi/arch", c.Digest.String()) == "" {
					t.Errorf("platform manifest %s missing", c.Digest)
				}
			}
			refs, err := e.reg.Referrers(ctx, "multi/arch", digest.Digest(id.String()), "")
			if err != nil {
				t.Fatal(err)
			}
			if len(refs) != 1 || refs[0].Digest != sd.String() {
				t.Errorf("referrers = %+v, want %s", refs, sd)
			}
		})
	}
}

// partialDescriptor is the descriptor of an index, for a subject.
func partialDescriptor(t *testing.T, idx v1.ImageIndex) (v1.Descriptor, error) {
	t.Helper()
	d, _ := idx.Digest()
	size, _ := idx.Size()
	mt, _ := idx.MediaType()
	return v1.Descriptor{MediaType: mt, Digest: d, Size: size}, nil
}

func TestOnDemandReferrersHook(t *testing.T) {
	up := newUpstream(t, true)
	img := randomImage(t, 128, 1)
	d := up.push(t, "app:1", img)
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil)
	ctx := t.Context()
	if err := e.pull(t, "app", "1", true); err != nil {
		t.Fatal(err)
	}
	// A referrer pushed upstream later arrives with the next listing.
	size, _ := img.Size()
	subject := v1.Descriptor{MediaType: types.DockerManifestSchema2, Digest: d, Size: size}
	sbom := mutate.Subject(mutate.MediaType(randomImage(t, 32, 1), types.OCIManifestSchema1), subject).(v1.Image)
	sd, _ := sbom.Digest()
	up.push(t, "app@"+sd.String(), sbom)

	if err := e.s.Referrers(ctx, "app", digest.Digest(d.String())); err != nil {
		t.Fatal(err)
	}
	refs, _ := e.reg.Referrers(ctx, "app", digest.Digest(d.String()), "")
	if len(refs) != 1 || refs[0].Digest != sd.String() {
		t.Fatalf("referrers = %+v, want %s", refs, sd)
	}
	// Within the interval the listing is not asked again.
	n := up.total("/referrers/")
	if err := e.s.Referrers(ctx, "app", digest.Digest(d.String())); err != nil {
		t.Fatal(err)
	}
	if up.total("/referrers/") != n {
		t.Error("referrers asked upstream again within the interval")
	}
}

func TestOnDemandSingleFlight(t *testing.T) {
	up := newUpstream(t, true)
	want := up.push(t, "busy/box:1.0", randomImage(t, 4096, 3))
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil)

	gate := make(chan struct{})
	up.mu.Lock()
	up.gate = gate // hold the first manifest GET until every caller is waiting
	up.mu.Unlock()
	const n = 20
	var wg gosync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- e.pull(t, "busy/box", "1.0", true)
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for up.count("GET", "/v2/busy/box/manifests/1.0") == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // let the other callers join
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Manifest: %v", err)
		}
	}
	if got := up.count("GET", "/v2/busy/box/manifests/1.0"); got != 1 {
		t.Errorf("upstream manifest GETs = %d, want 1", got)
	}
	if got := counter(t, e.s.m.fetches, up.Host); got != 1 {
		t.Errorf("fetches_total = %v, want 1", got)
	}
	if got := e.digest(t, "busy/box", "1.0"); got != want.String() {
		t.Errorf("digest %q, want %s", got, want)
	}
}

func TestOnDemandNotFound(t *testing.T) {
	up := newUpstream(t, true)
	up.push(t, "exists:1", randomImage(t, 64, 1))
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil)
	for _, ref := range []string{"exists:2", "missing:1", "missing@sha256:" + strings.Repeat("ab", 32)} {
		repo, r, ok := strings.Cut(ref, ":")
		if strings.Contains(ref, "@") {
			repo, r, ok = strings.Cut(ref, "@")
		}
		if !ok {
			t.Fatal(ref)
		}
		if err := e.pull(t, repo, r, true); err != nil {
			t.Errorf("Manifest(%s) = %v, want nil", ref, err)
		}
		if e.digest(t, repo, r) != "" {
			t.Errorf("%s exists locally", ref)
		}
	}
}

func TestOnDemandUnavailable(t *testing.T) {
	up := newUpstream(t, true)
	up.push(t, "app:1", randomImage(t, 64, 1))
	up.setFail(func(r *http.Request) (int, bool) {
		return http.StatusInternalServerError, strings.Contains(r.URL.Path, "/manifests/")
	})
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil) // maxRetries 2
	err := e.pull(t, "app", "1", true)
	if !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("Manifest = %v, want ErrUnavailable", err)
	}
	if got := up.count("GET", "/v2/app/manifests/1"); got != 3 {
		t.Errorf("attempts = %d, want 3 (1 + maxRetries 2)", got)
	}
	if got := counter(t, e.s.m.errors, up.Host, kindServer); got != 3 {
		t.Errorf("upstream_errors_total{kind=server} = %v, want 3", got)
	}

	// Unreachable: connection refused.
	e2 := newSyncEnv(t, []config.SyncRegistry{regConfig("http://" + deadAddr(t))}, nil)
	if err := e2.pull(t, "app", "1", true); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("Manifest (refused) = %v, want ErrUnavailable", err)
	}
}

func TestOnDemandRetryAfter(t *testing.T) {
	up := newUpstream(t, true)
	want := up.push(t, "app:1", randomImage(t, 64, 1))
	var mu gosync.Mutex
	limited := 0
	up.setFail(func(r *http.Request) (int, bool) {
		mu.Lock()
		defer mu.Unlock()
		if strings.Contains(r.URL.Path, "/manifests/") && limited == 0 {
			limited++
			return http.StatusTooManyRequests, true
		}
		return 0, false
	})
	// The injected 429 carries no header; add one through a wrapping transport.
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, func(d *Deps) {
		d.Transport = retryAfterTransport{http.DefaultTransport}
	})
	start := time.Now()
	if err := e.pull(t, "app", "1", true); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < time.Second {
		t.Errorf("retried after %v, want at least the 1s Retry-After", el)
	}
	if got := e.digest(t, "app", "1"); got != want.String() {
		t.Errorf("digest %q", got)
	}
	if got := counter(t, e.s.m.errors, up.Host, kindRateLimit); got != 1 {
		t.Errorf("ratelimit errors = %v", got)
	}
}

// retryAfterTransport adds "Retry-After: 1" to 429 responses.
type retryAfterTransport struct{ http.RoundTripper }

func (rt retryAfterTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := rt.RoundTripper.RoundTrip(r)
	if err == nil && resp.StatusCode == http.StatusTooManyRequests {
		resp.Header.Set("Retry-After", "1")
	}
	return resp, err
}

func TestOnDemandNoHalfSyncedImage(t *testing.T) {
	up := newUpstream(t, true)
	img := randomImage(t, 64<<10, 3)
	want := up.push(t, "app:1", img)
	layers, _ := img.Layers()
	second, _ := layers[1].Digest()
	release := up.holdBlob(second.String(), 1024)
	defer release()
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil)
	ctx := t.Context()
	// The client gets the manifest at once (the copy goes on), then the
	// layer upstream fails to give fails under its reader.
	m, err := e.s.Manifest(ctx, "app", "1", true)
	if err != nil || m == nil || m.Digest != want.String() {
		t.Fatalf("Manifest = %+v, %v; want upstream's %s", m, err, want)
	}
	sb, err := e.s.Blob(ctx, "app", digest.Digest(second.String()))
	if err != nil || sb == nil {
		t.Fatalf("Blob = %v, %v; want a reader of the copy in flight", sb, err)
	}
	defer sb.Close()
	up.setFail(func(r *http.Request) (int, bool) {
		return http.StatusInternalServerError, strings.HasSuffix(r.URL.Path, "/blobs/"+second.String())
	})
	up.CloseClientConnections()
	release()
	if _, err := io.ReadAll(sb); !errors.Is(err, errCopyFailed) {
		t.Errorf("reading a layer whose copy failed = %v, want errCopyFailed", err)
	}
	settle(t, e.s)
	if e.digest(t, "app", "1") != "" || e.digest(t, "app", want.String()) != "" {
		t.Fatal("a half-synced image is visible")
	}
	if repos, _ := e.reg.Catalog(ctx, "", -1); len(repos) != 0 {
		t.Errorf("catalog = %v, want empty", repos)
	}
	// No copy in flight: the layer is not fetched for a client alone.
	if sb, err := e.s.Blob(ctx, "app", digest.Digest(second.String())); sb != nil || err != nil {
		t.Errorf("Blob with no copy in flight = %v, %v; want nil, nil", sb, err)
	}
	// Upstream recovers: the next request completes the image.
	up.setFail(nil)
	if err := e.pull(t, "app", "1", true); err != nil {
		t.Fatal(err)
	}
	if got := e.digest(t, "app", "1"); got != want.String() {
		t.Errorf("digest %q, want %s", got, want)
	}
}

func TestOnDemandRecheckInterval(t *testing.T) {
	up := newUpstream(t, true)
	first := up.push(t, "app:latest", randomImage(t, 64, 1))
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil) // no pollInterval: 5m
	if err := e.pull(t, "app", "latest", true); err != nil {
		t.Fatal(err)
	}
	second := up.push(t, "app:latest", randomImage(t, 64, 1))
	pushHeads := up.count("HEAD", "/v2/app/manifests/latest") // the push's own
	heads := func() int { return up.count("HEAD", "/v2/app/manifests/latest") - pushHeads }

	e.clock.Advance(4 * time.Minute)
	if err := e.pull(t, "app", "latest", false); err != nil {
		t.Fatal(err)
	}
	if heads() != 0 || e.digest(t, "app", "latest") != first.String() {
		t.Fatalf("re-checked within the interval: %d HEADs, digest %s", heads(), e.digest(t, "app", "latest"))
	}
	e.clock.Advance(2 * time.Minute)
	if err := e.pull(t, "app", "latest", false); err != nil {
		t.Fatal(err)
	}
	if heads() != 1 {
		t.Errorf("HEADs = %d, want 1", heads())
	}
	if got := e.digest(t, "app", "latest"); got != second.String() {
		t.Errorf("after the interval: digest %s, want the new %s", got, second)
	}
	// Unchanged upstream: a HEAD, no GET.
	gets := up.count("GET", "/v2/app/manifests/latest")
	e.clock.Advance(6 * time.Minute)
	if err := e.pull(t, "app", "latest", false); err != nil {
		t.Fatal(err)
	}
	if heads() != 2 || up.count("GET", "/v2/app/manifests/latest") != gets {
		t.Errorf("unchanged tag: HEADs %d (want 2), GETs %d -> %d", heads(), gets, up.count("GET", "/v2/app/manifests/latest"))
	}
	// pollInterval, when set, is the re-check interval.
	rc := regConfig(up.URL)
	rc.PollInterval = config.Duration(time.Hour)
	e2 := newSyncEnv(t, []config.SyncRegistry{rc}, nil)
	if e2.s.regs[0].recheck != time.Hour {
		t.Errorf("recheck = %v, want the pollInterval", e2.s.regs[0].recheck)
	}
}

func TestOnDemandRulesAndMirrors(t *testing.T) {
	up := newUpstream(t, true)
	want := up.push(t, "library/alpine:3.20", randomImage(t, 64, 1))
	up.push(t, "library/alpine:edge", randomImage(t, 64, 1))
	rc := regConfig("http://"+deadAddr(t), up.URL) // first mirror is down
	rc.Content = []config.SyncContent{{
		Prefix: "library/**", Destination: "/docker", StripPrefix: true,
		Tags: &config.SyncTags{Regex: ptr(`^[0-9]`)},
	}}
	e := newSyncEnv(t, []config.SyncRegistry{rc}, nil)
	if err := e.pull(t, "docker/alpine", "3.20", true); err != nil {
		t.Fatal(err)
	}
	if got := e.digest(t, "docker/alpine", "3.20"); got != want.String() {
		t.Errorf("docker/alpine:3.20 = %q, want %s", got, want)
	}
	// Names and tags outside the rules are not fetched.
	for _, ref := range [][2]string{{"docker/alpine", "edge"}, {"library/alpine", "3.20"}, {"alpine", "3.20"}} {
		if err := e.pull(t, ref[0], ref[1], true); err != nil || e.digest(t, ref[0], ref[1]) != "" {
			t.Errorf("%s:%s synced (%v)", ref[0], ref[1], err)
		}
	}
	if got := up.count("GET", "/v2/library/alpine/manifests/edge"); got != 0 {
		t.Errorf("edge asked upstream %d times", got)
	}
}

func TestSelfURLDropped(t *testing.T) {
	up := newUpstream(t, true)
	want := up.push(t, "app:1", randomImage(t, 64, 1))
	me := newUpstream(t, true) // stands for this member
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(me.URL, up.URL)}, func(d *Deps) {
		d.Self = []string{me.Host}
	})
	if err := e.pull(t, "app", "1", true); err != nil {
		t.Fatal(err)
	}
	if e.digest(t, "app", "1") != want.String() || me.total("") != 0 {
		t.Errorf("digest %q, requests to self %d", e.digest(t, "app", "1"), me.total(""))
	}
	_, port, _ := strings.Cut(me.Host, ":")
	for _, self := range [][]string{{me.Host}, {"0.0.0.0:" + port}, {":" + port}, {"localhost:" + port}} {
		_, err := New(&config.SyncConfig{Registries: []config.SyncRegistry{regConfig(me.URL)}},
			Deps{Registry: e.reg, Self: self})
		if err == nil || !strings.Contains(err.Error(), "every URL points at this member") {
			t.Errorf("Self %v: New = %v", self, err)
		}
	}
}

func TestOnlySigned(t *testing.T) {
	up := newUpstream(t, true)
	up.push(t, "app:unsigned", randomImage(t, 64, 1))
	img := randomImage(t, 64, 1)
	signedDigest := up.push(t, "app:signed", img)
	size, _ := img.Size()
	sig := mutate.Subject(mutate.ConfigMediaType(mutate.MediaType(randomImage(t, 16, 1), types.OCIManifestSchema1),
		"application/vnd.dev.cosign.artifact.sig.v1+json"),
		v1.Descriptor{MediaType: types.DockerManifestSchema2, Digest: signedDigest, Size: size}).(v1.Image)
	sd, _ := sig.Digest()
	up.push(t, "app@"+sd.String(), sig)
	rc := regConfig(up.URL)
	rc.OnlySigned = ptr(true)
	e := newSyncEnv(t, []config.SyncRegistry{rc}, nil)
	// Upstream cannot say whether there is a signature: an outage (503,
	// and the next mirror would be tried), not an unsigned image (404).
	up.setFail(func(r *http.Request) (int, bool) {
		return http.StatusServiceUnavailable, strings.Contains(r.URL.Path, "/referrers/") || strings.HasSuffix(r.URL.Path, ".sig")
	})
	if err := e.pull(t, "app", "signed", true); !errors.Is(err, storage.ErrUnavailable) {
		t.Errorf("signature lookups failing: pull = %v; want ErrUnavailable", err)
	}
	up.setFail(nil)
	if err := e.pull(t, "app", "unsigned", true); err != nil || e.digest(t, "app", "unsigned") != "" {
		t.Errorf("unsigned image synced: %v", err)
	}
	if err := e.pull(t, "app", "signed", true); err != nil || e.digest(t, "app", "signed") != signedDigest.String() {
		t.Errorf("signed image not synced: %v", err)
	}
}

func TestOnDemandBearerAuth(t *testing.T) {
	up := newUpstream(t, true)
	want := up.push(t, "private/app:1", randomImage(t, 64, 1))
	// Requests now need a token from /token, which needs basic credentials.
	up.setFail(func(r *http.Request) (int, bool) {
		if r.URL.Path == "/token" {
			return 0, false
		}
		if r.Header.Get("Authorization") != "Bearer good-token" {
			return http.StatusUnauthorized, true
		}
		return 0, false
	})
	tokenHost := up.URL
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, func(d *Deps) {
		d.Transport = authTransport{inner: http.DefaultTransport, realm: tokenHost + "/token"}
	})
	// No credentials: denied is not found for the client (404), and counted.
	if err := e.pull(t, "private/app", "1", true); err != nil || e.digest(t, "private/app", "1") != "" {
		t.Fatalf("without credentials: %v", err)
	}
	if counter(t, e.s.m.errors, up.Host, kindAuth) == 0 {
		t.Error("auth errors not counted")
	}

	credFile := t.TempDir() + "/creds.json"
	writeFile(t, credFile, `{"`+up.Host+`": {"username": "u", "password": "p"}}`)
	e2 := newSyncEnv(t, nil, nil)
	s, err := New(&config.SyncConfig{CredentialsFile: credFile, Registries: []config.SyncRegistry{regConfig(up.URL)}},
		Deps{Registry: e2.reg, Transport: authTransport{inner: http.DefaultTransport, realm: tokenHost + "/token"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if _, err := s.Manifest(t.Context(), "private/app", "1", true); err != nil {
		t.Fatal(err)
	}
	settle(t, s)
	if got := e2.digest(t, "private/app", "1"); got != want.String() {
		t.Errorf("digest %q, want %s", got, want)
	}
}

// authTransport plays a token server: 401s get a Bearer challenge naming
// realm, and realm answers a token for basic u:p.
type authTransport struct {
	inner http.RoundTripper
	realm string
}

func (a authTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == "/token" {
		user, pass, ok := r.BasicAuth()
		if !ok || user != "u" || pass != "p" || !strings.HasPrefix(r.URL.Query().Get("scope"), "repository:private/app:pull") {
			return stringResponse(r, http.StatusUnauthorized, `{}`), nil
		}
		return stringResponse(r, http.StatusOK, `{"token":"good-token","expires_in":300}`), nil
	}
	resp, err := a.inner.RoundTrip(r)
	if err == nil && resp.StatusCode == http.StatusUnauthorized {
		resp.Header.Set("WWW-Authenticate", `Bearer realm="`+a.realm+`",service="test"`)
	}
	return resp, err
}

func TestOnDemandRecheckWithUpstreamDown(t *testing.T) {
	up := newUpstream(t, true)
	want := up.push(t, "app:latest", randomImage(t, 64, 1))
	rc := regConfig(up.URL)
	slow := config.Duration(2 * time.Second)
	rc.RetryDelay = &slow // retries would make the client wait
	e := newSyncEnv(t, []config.SyncRegistry{rc}, nil)
	if err := e.pull(t, "app", "latest", true); err != nil {
		t.Fatal(err)
	}
	up.setFail(func(*http.Request) (int, bool) { return http.StatusServiceUnavailable, true })
	heads := func() int { return up.count("HEAD", "/v2/app/manifests/latest") }
	before := heads()
	e.clock.Advance(10 * time.Minute)
	start := time.Now()
	if err := e.pull(t, "app", "latest", false); !errors.Is(err, storage.ErrUnavailable) {
		t.Errorf("re-check = %v, want ErrUnavailable (logged by the API, local copy served)", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("re-check took %v: it must not retry", el)
	}
	if heads() != before+1 {
		t.Errorf("HEADs = %d, want 1", heads()-before)
	}
	// The failed re-check counts as one: the next pulls do not wait on upstream.
	if err := e.pull(t, "app", "latest", false); err != nil || heads() != before+1 {
		t.Errorf("second re-check: %v, HEADs %d", err, heads()-before)
	}
	if got := e.digest(t, "app", "latest"); got != want.String() {
		t.Errorf("local tag %q, want %s", got, want)
	}
}
