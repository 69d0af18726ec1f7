package sync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/registry"
	"github.com/berthreg/berth/pkg/storage"
)

// maxRetryAfter caps how long a Retry-After header may make us wait.
const maxRetryAfter = time.Minute

// manifestAccept lists the manifest media types asked of upstream.
var manifestAccept = strings.Join([]string{
	registry.MediaTypeOCIManifest, registry.MediaTypeOCIIndex,
	registry.MediaTypeDockerManifest, registry.MediaTypeDockerList,
}, ", ")

// errNotFound is an upstream 404: the repository or manifest is not there.
var errNotFound = errors.New("not found upstream")

// upstreamError is a failed upstream request. Unreachable, rate-limited and
// server errors wrap storage.ErrUnavailable, which the API answers with 503.
type upstreamError struct {
	Kind       string
	Status     int // 0 when no response
	URL        string
	RetryAfter time.Duration
	Err        error
}

func (e *upstreamError) Error() string {
	msg := "upstream " + e.Kind
	if e.URL != "" {
		msg += " " + e.URL
	}
	if e.Status != 0 {
		msg += ": status " + strconv.Itoa(e.Status)
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *upstreamError) Unwrap() []error {
	var errs []error
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	if e.unavailable() {
		errs = append(errs, storage.ErrUnavailable)
	}
	return errs
}

// unavailable reports errors that say nothing about the content: another
// mirror, or a later try, may succeed.
func (e *upstreamError) unavailable() bool {
	return e.Kind == kindUnreachable || e.Kind == kindRateLimit || e.Kind == kindServer
}

// retryable reports errors worth the same request again.
func (e *upstreamError) retryable() bool { return e.unavailable() || e.Kind == kindAuth }

// classifyTransportError turns a client error into an upstreamError, or
// returns the context's error when the caller gave up.
func classifyTransportError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ue *upstreamError
	if errors.As(err, &ue) {
		return ue
	}
	return &upstreamError{Kind: kindUnreachable, Err: err}
}

// statusError describes an unexpected response status and drains the body.
func statusError(resp *http.Response, what string) error {
	e := &upstreamError{Status: resp.StatusCode, URL: what}
	switch s := resp.StatusCode; {
	case s == http.StatusTooManyRequests:
		e.Kind = kindRateLimit
	case s >= 500:
		e.Kind = kindServer
	case s == http.StatusUnauthorized || s == http.StatusForbidden:
		e.Kind = kindAuth
	default:
		e.Kind = kindProtocol
	}
	e.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return e
}

// parseRetryAfter reads delay-seconds or an HTTP date; 0 when absent.
func parseRetryAfter(h string, now time.Time) time.Duration {
	if h == "" {
		return 0
	}
	if n, err := strconv.Atoi(strings.TrimSpace(h)); err == nil && n >= 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// upstream is one URL of an upstream registry.
type upstream struct {
	label   string // metrics label: the registry's first host
	base    *url.URL
	client  *http.Client
	auth    *authorizer
	retries int
	delay   time.Duration
	m       *metrics
	log     zerolog.Logger
}

// String is the upstream's base URL.
func (u *upstream) String() string { return u.base.String() }

type noRetriesKey struct{}

// withoutRetries marks ctx so that upstream requests made with it are
// tried once (re-checks of tags present locally must not keep clients
// waiting).
func withoutRetries(ctx context.Context) context.Context {
	return context.WithValue(ctx, noRetriesKey{}, true)
}

// retry runs attempt until it succeeds, fails for good, or the retries are
// spent, waiting retryDelay (or the server's Retry-After, capped at a
// minute) between attempts. Every failed attempt is counted.
func (u *upstream) retry(ctx context.Context, attempt func() error) error {
	retries := u.retries
	if ctx.Value(noRetriesKey{}) != nil {
		retries = 0
	}
	for n := 0; ; n++ {
		err := attempt()
		var ue *upstreamError
		if err == nil || !errors.As(err, &ue) {
			return err
		}
		u.m.errors.WithLabelValues(u.label, ue.Kind).Inc()
		if !ue.retryable() || n >= retries {
			return err
		}
		wait := u.delay
		if ra := min(ue.RetryAfter, maxRetryAfter); ra > wait {
			wait = ra
		}
		u.log.Debug().Err(err).Int("attempt", n+1).Dur("wait", wait).Msg("upstream request failed, retrying")
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// open sends one request (no retries) with credentials for scope. It
// returns the response when its status is in ok (the caller closes the
// body), errNotFound for a 404, or an *upstreamError.
func (u *upstream) open(ctx context.Context, method, ref, scope, accept string, ok ...int) (*http.Response, error) {
	target, err := u.base.Parse(ref)
	if err != nil || target.Host != u.base.Host {
		return nil, &upstreamError{Kind: kindProtocol, Err: fmt.Errorf("bad or foreign URL %q", ref)}
	}
	for try := 0; try < 2; try++ {
		req, err := http.NewRequestWithContext(ctx, method, target.String(), nil)
		if err != nil {
			return nil, err
		}
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		u.auth.authorize(req, scope)
		resp, err := u.client.Do(req)
		if err != nil {
			return nil, classifyTransportError(ctx, err)
		}
		for _, s := range ok {
			if resp.StatusCode == s {
				return resp, nil
			}
		}
		if resp.StatusCode == http.StatusUnauthorized && try == 0 {
			again, err := u.auth.answer(ctx, resp, scope)
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if err != nil {
				return nil, classifyTransportError(ctx, err)
			}
			if again {
				continue
			}
			return nil, &upstreamError{Kind: kindAuth, Status: resp.StatusCode, URL: target.Path}
		}
		defer resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			return nil, errNotFound
		}
		return nil, statusError(resp, target.Path)
	}
	return nil, &upstreamError{Kind: kindAuth, Status: http.StatusUnauthorized, URL: target.Path}
}

func pullScope(repo string) string { return "repository:" + repo + ":pull" }

// fetched is a manifest read from upstream.
type fetched struct {
	body      []byte
	mediaType string
	digest    digest.Digest
}

// descriptor is the manifest's descriptor.
func (f *fetched) descriptor() v1.Descriptor {
	return v1.Descriptor{MediaType: f.mediaType, Digest: f.digest, Size: int64(len(f.body))}
}

// manifest GETs repo's manifest ref (tag or digest), verifying its digest
// against the reference or the Docker-Content-Digest header.
func (u *upstream) manifest(ctx context.Context, repo, ref string) (*fetched, error) {
	var f *fetched
	err := u.retry(ctx, func() error {
		resp, err := u.open(ctx, http.MethodGet, "/v2/"+repo+"/manifests/"+ref, pullScope(repo), manifestAccept, http.StatusOK)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, registry.MaxManifestSize+1))
		if err != nil {
			return classifyTransportError(ctx, err)
		}
		if len(body) > registry.MaxManifestSize {
			return &upstreamError{Kind: kindProtocol, URL: repo + ":" + ref, Err: fmt.Errorf("manifest larger than %d bytes", registry.MaxManifestSize)}
		}
		want := expectedDigest(ref, resp.Header.Get("Docker-Content-Digest"), body)
		if err := storage.VerifyContent(want, body); err != nil {
			return &upstreamError{Kind: kindProtocol, URL: repo + ":" + ref, Err: err}
		}
		f = &fetched{body: body, mediaType: manifestMediaType(resp.Header.Get("Content-Type"), body), digest: want}
		return nil
	})
	return f, err
}

// headDigest returns the digest upstream gives for repo:ref, falling back
// to a GET when HEAD does not name it.
func (u *upstream) headDigest(ctx context.Context, repo, ref string) (digest.Digest, error) {
	var d digest.Digest
	err := u.retry(ctx, func() error {
		resp, err := u.open(ctx, http.MethodHead, "/v2/"+repo+"/manifests/"+ref, pullScope(repo), manifestAccept, http.StatusOK)
		if err != nil {
			return err
		}
		resp.Body.Close()
		d = digest.Digest(resp.Header.Get("Docker-Content-Digest"))
		return nil
	})
	if err != nil {
		return "", err
	}
	if storage.ValidateDigest(d) == nil {
		return d, nil
	}
	f, err := u.manifest(ctx, repo, ref)
	if err != nil {
		return "", err
	}
	return f.digest, nil
}

// exists reports whether upstream has repo's manifest ref (a HEAD, which
// registries such as Docker Hub do not count as a pull).
func (u *upstream) exists(ctx context.Context, repo, ref string) (bool, error) {
	return u.head(ctx, repo, "/manifests/"+ref, manifestAccept)
}

// blobExists reports whether upstream has repo's blob dgst.
func (u *upstream) blobExists(ctx context.Context, repo string, dgst digest.Digest) (bool, error) {
	return u.head(ctx, repo, "/blobs/"+dgst.String(), "")
}

// head HEADs /v2/<repo><path>: true on 200, false on 404.
func (u *upstream) head(ctx context.Context, repo, path, accept string) (bool, error) {
	err := u.retry(ctx, func() error {
		resp, err := u.open(ctx, http.MethodHead, "/v2/"+repo+path, pullScope(repo), accept, http.StatusOK)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	if errors.Is(err, errNotFound) {
		return false, nil
	}
	return err == nil, err
}

// expectedDigest is the digest a manifest must have: the reference when it
// is one, else the server's header when usable, else SHA-256 of the body.
func expectedDigest(ref, header string, body []byte) digest.Digest {
	if d := digest.Digest(ref); storage.ValidateDigest(d) == nil {
		return d
	}
	if d := digest.Digest(header); storage.ValidateDigest(d) == nil {
		return d
	}
	return digest.SHA256.FromBytes(body)
}

// manifestMediaType keeps the media type upstream serves; a generic or
// missing Content-Type gives way to the document's mediaType field.
func manifestMediaType(contentType string, body []byte) string {
	mt, _, _ := strings.Cut(contentType, ";")
	mt = strings.TrimSpace(mt)
	switch mt {
	case registry.MediaTypeOCIManifest, registry.MediaTypeOCIIndex,
		registry.MediaTypeDockerManifest, registry.MediaTypeDockerList:
		return mt
	}
	var doc struct {
		MediaType string `json:"mediaType"`
	}
	if json.Unmarshal(body, &doc) == nil && doc.MediaType != "" {
		return doc.MediaType
	}
	if mt == "" || mt == "application/json" || mt == "text/plain" || mt == "application/octet-stream" {
		return "" // the registry infers it from the document
	}
	return mt
}

// referrers lists the manifests whose subject is dgst: the referrers API,
// or the tag schema ("sha256-<hex>") when the API is missing.
func (u *upstream) referrers(ctx context.Context, repo string, dgst digest.Digest) ([]v1.Descriptor, error) {
	var idx v1.Index
	fallback := false
	err := u.retry(ctx, func() error {
		resp, err := u.open(ctx, http.MethodGet, "/v2/"+repo+"/referrers/"+dgst.String(), pullScope(repo), registry.MediaTypeOCIIndex,
			http.StatusOK, http.StatusBadRequest, http.StatusMethodNotAllowed, http.StatusNotImplemented)
		if errors.Is(err, errNotFound) {
			fallback = true
			return nil
		}
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			fallback = true
			return nil
		}
		if err := json.NewDecoder(io.LimitReader(resp.Body, registry.MaxManifestSize)).Decode(&idx); err != nil {
			return &upstreamError{Kind: kindProtocol, URL: repo + "@" + dgst.String(), Err: fmt.Errorf("referrers: %v", err)}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !fallback {
		return idx.Manifests, nil
	}
	if ok, err := u.exists(ctx, repo, referrersTag(dgst)); !ok {
		return nil, err
	}
	f, err := u.manifest(ctx, repo, referrersTag(dgst))
	if errors.Is(err, errNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(f.body, &idx); err != nil {
		return nil, &upstreamError{Kind: kindProtocol, URL: repo + ":" + referrersTag(dgst), Err: err}
	}
	return idx.Manifests, nil
}

// referrersTag is the tag schema's tag for dgst's referrers.
func referrersTag(dgst digest.Digest) string {
	return string(dgst.Algorithm()) + "-" + dgst.Encoded()
}

// tags lists all of repo's tags, following Link pagination.
func (u *upstream) tags(ctx context.Context, repo string) ([]string, error) {
	var all []string
	err := u.pages(ctx, "/v2/"+repo+"/tags/list?n=1000", pullScope(repo), func(dec *json.Decoder) error {
		var page struct {
			Tags []string `json:"tags"`
		}
		err := dec.Decode(&page)
		all = append(all, page.Tags...)
		return err
	})
	return all, err
}

// catalog lists all upstream repositories, following Link pagination.
func (u *upstream) catalog(ctx context.Context) ([]string, error) {
	var all []string
	err := u.pages(ctx, "/v2/_catalog?n=1000", "registry:catalog:*", func(dec *json.Decoder) error {
		var page struct {
			Repositories []string `json:"repositories"`
		}
		err := dec.Decode(&page)
		all = append(all, page.Repositories...)
		return err
	})
	return all, err
}

// maxPages bounds a listing, against a server whose Link loops.
const maxPages = 10000

// pages GETs ref and every page its Link headers lead to.
func (u *upstream) pages(ctx context.Context, ref, scope string, decode func(*json.Decoder) error) error {
	for page := 0; ref != "" && page < maxPages; page++ {
		next := ""
		err := u.retry(ctx, func() error {
			resp, err := u.open(ctx, http.MethodGet, ref, scope, "application/json", http.StatusOK)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if err := decode(json.NewDecoder(io.LimitReader(resp.Body, 64<<20))); err != nil {
				return &upstreamError{Kind: kindProtocol, URL: ref, Err: err}
			}
			next = nextLink(resp.Header.Get("Link"))
			return nil
		})
		if err != nil {
			return err
		}
		ref = next
	}
	return nil
}

// nextLink extracts the target of `<url>; rel="next"` (quotes optional).
func nextLink(h string) string {
	for _, part := range strings.Split(h, ",") {
		target, params, ok := strings.Cut(part, ";")
		if !ok || !strings.Contains(strings.NewReplacer(" ", "", `"`, "").Replace(params), "rel=next") {
			continue
		}
		target = strings.TrimSpace(target)
		if strings.HasPrefix(target, "<") && strings.HasSuffix(target, ">") {
			return target[1 : len(target)-1]
		}
	}
	return ""
}
