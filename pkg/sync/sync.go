// Package sync mirrors images from upstream registries into the local
// registry: on demand, when a client asks for a manifest or referrers the
// registry lacks, and periodically, for the configured repositories this
// member owns.
//
// An image is copied bottom-up: blobs (streamed into uploads and verified
// by digest), then child manifests, then referrers, and the top manifest
// with its tag last, so a failure never leaves a tag pointing at missing
// content. Digests and media types are upstream's.
package sync

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	gosync "sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/api"
	"github.com/berthreg/berth/pkg/config"
	"github.com/berthreg/berth/pkg/registry"
	"github.com/berthreg/berth/pkg/storage"
)

// DefaultRecheckInterval is how often a tag present locally is compared
// with upstream on demand, for registries without a pollInterval (with
// one, the pollInterval is the re-check interval).
const DefaultRecheckInterval = 5 * time.Minute

// onDemandTimeout bounds one copy (of an image or a blob). It runs
// detached from the client's request, so a client hanging up does not
// waste the work done for the others waiting on it.
const onDemandTimeout = time.Hour

// recheckTimeout bounds the upstream re-check of a tag present locally:
// the client waits for it.
const recheckTimeout = 10 * time.Second

// updateWait bounds how long a client pulling a present tag waits for its
// update from upstream before it is served the local copy.
const updateWait = 30 * time.Second

// Deps is what a Syncer works with.
type Deps struct {
	// Registry stores what is synced.
	Registry *registry.Registry
	// Owns reports whether this member owns a local repository name; nil
	// means a single node that owns everything. Periodic sync skips
	// repositories it does not own.
	Owns func(repo string) bool
	// Self lists the addresses this member answers on (its cluster member
	// name and its listening address, host:port); upstream URLs naming one
	// of them are dropped.
	Self []string
	// Log receives sync events.
	Log zerolog.Logger
	// Metrics receives the syncer's collectors; nil keeps them unexported.
	Metrics *prometheus.Registry
	// Transport, when set, replaces the transport built from tlsVerify and
	// certDir for every upstream (tests).
	Transport http.RoundTripper
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
	// BodyIdle bounds how long a read of an upstream response body may
	// wait for data (tests); 0 means bodyIdleTimeout.
	BodyIdle time.Duration
}

// Syncer mirrors upstream content. It implements api.Syncer; Run runs the
// periodic sync.
type Syncer struct {
	deps    Deps
	log     zerolog.Logger
	regs    []*upstreamRegistry
	m       *metrics
	flights flightGroup // referrers listings
	checks  checkTimes
	live    liveSet
	dir     string // spool files of blobs in flight (downloadDir)

	bg      context.Context // cancelled by Close
	stop    context.CancelFunc
	closeMu gosync.Mutex
	closed  bool
	wg      gosync.WaitGroup // copies in flight; Add only while !closed
}

// upstreamRegistry is one configured upstream with its mirrors.
type upstreamRegistry struct {
	label      string // metrics label: host of the first URL
	mirrors    []*upstream
	rules      []*Rule
	onDemand   bool
	poll       time.Duration
	recheck    time.Duration
	onlySigned bool
}

// New builds a Syncer from the sync configuration (enabled: the caller
// checks config.ExtensionsConfig.SyncEnabled).
func New(cfg *config.SyncConfig, deps Deps) (*Syncer, error) {
	if cfg == nil {
		return nil, errors.New("sync: no configuration")
	}
	if deps.Registry == nil {
		return nil, errors.New("sync: no registry")
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	s := &Syncer{
		deps: deps,
		log:  deps.Log.With().Str("component", "sync").Logger(),
		m:    newMetrics(deps.Metrics),
		live: liveSet{images: map[string]*liveImage{}, blobs: map[string]*liveBlob{}},
		dir:  cfg.DownloadDir,
	}
	if s.dir == "" {
		s.dir = os.TempDir()
	} else if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("extensions.sync.downloadDir: %w", err)
	}
	s.bg, s.stop = context.WithCancel(context.Background())
	creds, err := loadCredentials(cfg.CredentialsFile)
	if err != nil {
		return nil, err
	}
	for i, rc := range cfg.Registries {
		field := fmt.Sprintf("extensions.sync.registries[%d]", i)
		r, err := s.newRegistry(rc, field, creds)
		if err != nil {
			return nil, err
		}
		s.regs = append(s.regs, r)
	}
	return s, nil
}

// newRegistry compiles one upstream registry's configuration.
func (s *Syncer) newRegistry(rc config.SyncRegistry, field string, creds credentials) (*upstreamRegistry, error) {
	r := &upstreamRegistry{
		onDemand:   rc.OnDemand,
		poll:       rc.PollInterval.Std(),
		recheck:    rc.PollInterval.Std(),
		onlySigned: rc.OnlySigned != nil && *rc.OnlySigned,
	}
	if r.recheck <= 0 {
		r.recheck = DefaultRecheckInterval
	}
	for j, c := range rc.Content {
		rule, err := NewRule(c)
		if err != nil {
			return nil, fmt.Errorf("%s.content[%d].%v", field, j, err)
		}
		r.rules = append(r.rules, rule)
	}
	rt := s.deps.Transport
	if rt == nil {
		var err error
		if rt, err = newTransport(rc, field); err != nil {
			return nil, err
		}
	}
	retries, delay := 0, time.Duration(0)
	if rc.MaxRetries != nil {
		retries = *rc.MaxRetries
	}
	if rc.RetryDelay != nil {
		delay = rc.RetryDelay.Std()
	}
	for j, raw := range rc.URLs {
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("%s.urls[%d]: must be an http:// or https:// URL with a host, got %q", field, j, raw)
		}
		if r.label == "" {
			r.label = u.Host
		}
		if isSelf(u, s.deps.Self) {
			s.log.Warn().Str("url", raw).Msg("dropping an upstream URL that points at this member")
			continue
		}
		cred := creds.lookup(u)
		client := &http.Client{Transport: idleTransport{base: rt, idle: cmp.Or(s.deps.BodyIdle, bodyIdleTimeout)}}
		r.mirrors = append(r.mirrors, &upstream{
			label:   r.label,
			base:    &url.URL{Scheme: u.Scheme, Host: u.Host},
			client:  client,
			auth:    &authorizer{client: client, user: cred.Username, pass: cred.Password, now: s.deps.Now},
			retries: retries,
			delay:   delay,
			m:       s.m,
			log:     s.log.With().Str("registry", r.label).Str("mirror", u.Host).Logger(),
		})
	}
	if len(r.mirrors) == 0 {
		return nil, fmt.Errorf("%s.urls: every URL points at this member", field)
	}
	return r, nil
}

// Manifest implements api.Syncer: before repo:ref is answered, it starts
// the copy of the image from upstream when it is missing locally, and
// returns upstream's manifest as soon as it is known and valid: the client
// goes on to the blobs, streamed from the copy in flight (see Blob), while
// the registry stores the image bottom-up and tags it last. For a tag
// present locally whose re-check interval has passed, it compares the
// digest upstream and, when it moved, copies the new image before
// returning nil: the registry then serves its copy, updated or (when the
// update failed) intact. It returns nil when the registry's copy is to be
// served or upstream does not have the image (the registry then answers
// 404), and an error wrapping storage.ErrUnavailable when upstream cannot
// be reached.
func (s *Syncer) Manifest(ctx context.Context, repo, ref string, missing bool) (*api.SyncedManifest, error) {
	dgst, tag, err := registry.ParseReference(ref)
	if err != nil || (!missing && tag == "") {
		return nil, nil // digests never change
	}
	src, ok := s.onDemandSource(repo)
	if !ok || (tag != "" && src.rule != nil && !src.rule.Tag(tag)) {
		return nil, nil
	}
	key := repo + ":" + ref
	if tag == "" {
		key = repo + "@" + ref
		if f := s.live.manifest(repo, dgst); f != nil {
			return served(f), nil
		}
	}
	if !missing && s.checks.recent(key, s.deps.Now()) {
		return nil, nil
	}
	img := s.image(ctx, src, ref, key, modeOnDemand, func(fctx context.Context, img *liveImage) error {
		return s.onDemand(fctx, src, ref, key, img)
	})
	if !missing {
		// The update of a present tag is awaited for a while after it
		// started; past that, the local copy is served while it goes on.
		t := time.NewTimer(time.Until(img.started.Add(updateWait)))
		defer t.Stop()
		select {
		case <-img.done:
		case <-t.C:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	select {
	case <-img.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	s.live.mu.Lock()
	top, err := img.top, img.err
	s.live.mu.Unlock()
	if top != nil && missing {
		return served(top), nil
	}
	return nil, s.answer(ctx, src, ref, err)
}

// onDemand runs once per key at a time (see image).
func (s *Syncer) onDemand(ctx context.Context, src source, ref, key string, img *liveImage) error {
	m, err := s.deps.Registry.Resolve(ctx, src.local, ref)
	present := err == nil
	if present {
		if _, tag, _ := registry.ParseReference(ref); tag == "" || s.checks.recent(key, s.deps.Now()) {
			return nil
		}
		rctx, cancel := context.WithTimeout(withoutRetries(ctx), recheckTimeout)
		d, err := s.headDigest(rctx, src, ref)
		cancel()
		if err != nil {
			// Not there upstream, or upstream failing: keep serving the
			// local copy and ask again after the interval, not on every pull.
			s.checks.mark(key, s.deps.Now(), src.reg.recheck)
			if errors.Is(err, errNotFound) {
				return nil
			}
			return fmt.Errorf("re-check %s:%s upstream: %w", src.upstream, ref, err)
		}
		if d.String() == m.Digest {
			s.checks.mark(key, s.deps.Now(), src.reg.recheck)
			return nil
		}
		s.logger(ctx, src).Info().Str("ref", ref).Str("local", m.Digest).Str("remote", d.String()).Msg("tag changed upstream")
	}
	_, err = s.copyImage(ctx, src, ref, modeOnDemand, img)
	if err == nil || present {
		// A failed update of a present tag is tried again after the
		// interval; the local copy is served meanwhile.
		s.checks.mark(key, s.deps.Now(), src.reg.recheck)
	}
	return err
}

// headDigest asks the mirrors, in order, for ref's digest.
func (s *Syncer) headDigest(ctx context.Context, src source, ref string) (digest.Digest, error) {
	var err error
	for i, u := range src.reg.mirrors {
		var d digest.Digest
		d, err = u.headDigest(ctx, src.upstream, ref)
		if err == nil || !errors.Is(err, storage.ErrUnavailable) || i == len(src.reg.mirrors)-1 {
			return d, err
		}
	}
	return "", err
}

// Referrers implements api.Syncer: before the referrers of repo@dgst are
// listed, it copies the ones upstream has and the registry lacks, at most
// once per re-check interval.
func (s *Syncer) Referrers(ctx context.Context, repo string, dgst digest.Digest) error {
	src, ok := s.onDemandSource(repo)
	if !ok {
		return nil
	}
	key := "referrers " + repo + "@" + dgst.String()
	if s.checks.recent(key, s.deps.Now()) {
		return nil
	}
	err := s.flights.do(ctx, key, s.spawn, func(fctx context.Context) error {
		if err := fctx.Err(); err != nil || s.checks.recent(key, s.deps.Now()) {
			return err // closed, or checked meanwhile
		}
		var err error
		for i, u := range src.reg.mirrors {
			err = s.referrersFrom(fctx, u, src, dgst)
			if err == nil || !errors.Is(err, storage.ErrUnavailable) || i == len(src.reg.mirrors)-1 {
				break
			}
		}
		if err == nil {
			s.checks.mark(key, s.deps.Now(), src.reg.recheck)
		}
		return err
	})
	return s.answer(ctx, src, dgst.String(), err)
}

// referrersFrom copies dgst's referrers missing locally from mirror u.
func (s *Syncer) referrersFrom(ctx context.Context, u *upstream, src source, dgst digest.Digest) error {
	descs, err := u.referrers(ctx, src.upstream, dgst)
	if err != nil {
		return err
	}
	p := newPlan()
	for _, d := range descs {
		if err := s.addManifest(ctx, u, src, d.Digest.String(), d.MediaType, nil, p); err != nil && !errors.Is(err, errNotFound) {
			return err
		}
	}
	if err := s.copyBlobs(ctx, u, src, p.blobs, false); err != nil {
		return err
	}
	for _, pm := range p.manifests {
		if err := s.put(ctx, src, pm.f, pm.tags); err != nil {
			return err
		}
	}
	if len(p.manifests) > 0 {
		s.logger(ctx, src).Info().Str("subject", dgst.String()).Int("referrers", len(p.manifests)).Msg("referrers synced")
	}
	return nil
}

// answer turns a sync outcome into what the client should see: nil when
// upstream does not have (or may not give) the content, so that the
// registry answers 404 (logged here, as nobody else sees it); the error
// when upstream is unavailable or the local store failed (logged by the
// API with the request).
func (s *Syncer) answer(ctx context.Context, src source, ref string, err error) error {
	if err == nil {
		return nil
	}
	log := s.logger(ctx, src).With().Str("ref", ref).Logger()
	var ue *upstreamError
	switch {
	case errors.Is(err, errNotFound):
		log.Debug().Msg("not found upstream")
		return nil
	case errors.Is(err, errUnsigned):
		log.Info().Msg("skipping an image without a signature (onlySigned)")
		return nil
	case errors.Is(err, storage.ErrUnavailable):
		// The API logs what it answers.
		return fmt.Errorf("sync %s:%s from %s: %w", src.upstream, ref, src.reg.label, err)
	case errors.As(err, &ue):
		// Denied, or content we cannot take (bad digest, bad JSON).
		log.Error().Err(err).Msg("failed to sync from upstream")
		return nil
	case errors.Is(err, registry.ErrManifestInvalid), errors.Is(err, registry.ErrManifestTooLarge),
		errors.Is(err, registry.ErrManifestBlob), errors.Is(err, registry.ErrDigestInvalid):
		log.Error().Err(err).Msg("failed to store upstream content")
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, context.Canceled) && s.bg.Err() != nil:
		return fmt.Errorf("sync %s:%s: the registry is stopping: %w", src.upstream, ref, storage.ErrUnavailable)
	case errors.Is(err, context.DeadlineExceeded):
		// The copy's own time limit, not the client's: upstream too slow.
		return fmt.Errorf("sync %s:%s from %s: copy timed out: %w", src.upstream, ref, src.reg.label, storage.ErrUnavailable)
	}
	return err
}

// onDemandSource finds the first on-demand registry whose content rules
// select the local repository, and the upstream name it comes from.
func (s *Syncer) onDemandSource(local string) (source, bool) {
	for _, r := range s.regs {
		if !r.onDemand {
			continue
		}
		if len(r.rules) == 0 {
			return source{reg: r, local: local, upstream: local}, true
		}
		for _, rule := range r.rules {
			if up, ok := rule.Upstream(local); ok {
				return source{reg: r, rule: rule, local: local, upstream: up}, true
			}
		}
	}
	return source{}, false
}

// logger is the request's logger (or the syncer's) with the repository.
func (s *Syncer) logger(ctx context.Context, src source) *zerolog.Logger {
	base := s.log
	if l := zerolog.Ctx(ctx); l.GetLevel() != zerolog.Disabled {
		base = l.With().Str("component", "sync").Logger()
	}
	l := base.With().Str("registry", src.reg.label).Str("repo", src.local).Str("upstream", src.upstream).Logger()
	return &l
}
