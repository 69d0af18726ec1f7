package sync

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	gosync "sync"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/berthreg/berth/pkg/registry"
	"github.com/berthreg/berth/pkg/storage"
)

const (
	// blobWorkers is how many blobs of one image are copied at once.
	blobWorkers = 4
	// manifestWorkers is how many child manifests of an index are fetched
	// at once.
	manifestWorkers = 8
	// maxDepth bounds nested indexes.
	maxDepth = 4
)

// Artifact types that count as signatures for onlySigned.
var signatureTypes = map[string]bool{
	"application/vnd.dev.cosign.artifact.sig.v1+json": true,
	"application/vnd.cncf.notary.signature":           true,
}

// errUnsigned: onlySigned is set and upstream has no signature for the image.
var errUnsigned = errors.New("image has no signature upstream")

// source is one local repository and where it comes from.
type source struct {
	reg      *upstreamRegistry
	rule     *Rule // nil: the registry has no content rules (on demand, same name)
	local    string
	upstream string
}

// planned is a manifest to store, with the tags to point at it.
type planned struct {
	f    *fetched
	tags []string
}

// plan is what one copy stores: blobs first, then manifests in order
// (children before the indexes naming them).
type plan struct {
	blobs     []v1.Descriptor
	manifests []planned
	seen      map[digest.Digest]bool
	// ahead holds child manifests fetched before their turn to be walked
	// (nil: present locally), shared like seen.
	ahead map[digest.Digest]*fetched
}

func newPlan() *plan {
	return &plan{seen: map[digest.Digest]bool{}, ahead: map[digest.Digest]*fetched{}}
}

// manifestDoc is the part of a manifest or index the copy follows.
type manifestDoc struct {
	MediaType    string          `json:"mediaType"`
	ArtifactType string          `json:"artifactType"`
	Config       *v1.Descriptor  `json:"config"`
	Layers       []v1.Descriptor `json:"layers"`
	Manifests    []v1.Descriptor `json:"manifests"`
}

// copyImage copies repo:ref (with everything it references and its
// referrers) from the first mirror that answers, and returns its digest.
// img, when set, is the copy in flight that clients are answered from.
func (s *Syncer) copyImage(ctx context.Context, src source, ref, mode string, img *liveImage) (digest.Digest, error) {
	var tags []string
	if _, tag, _ := registry.ParseReference(ref); tag != "" {
		tags = []string{tag}
	}
	s.m.fetches.WithLabelValues(src.reg.label).Inc()
	var err error
	for i, u := range src.reg.mirrors {
		var d digest.Digest
		d, err = s.copyFrom(ctx, u, src, ref, tags, mode, img)
		if err == nil || !errors.Is(err, storage.ErrUnavailable) || i == len(src.reg.mirrors)-1 {
			return d, err
		}
		if top := s.live.published(img); top != nil {
			ref = top.digest.String() // what clients were given, from the next mirror
		}
		s.logger(ctx, src).Warn().Err(err).Str("mirror", u.String()).Msg("upstream mirror unavailable, trying the next one")
	}
	return "", err
}

// copyFrom copies one image from mirror u. Its manifest is given to the
// clients waiting on img once known (and, with onlySigned, once its
// signature is found), but stored last, after everything it references,
// with its tags: a failure leaves no tag and no manifest pointing at
// missing content.
func (s *Syncer) copyFrom(ctx context.Context, u *upstream, src source, ref string, tags []string, mode string, img *liveImage) (digest.Digest, error) {
	log := s.logger(ctx, src).With().Str("ref", ref).Str("mirror", u.String()).Logger()
	s.live.reading(img, u)
	top, err := s.fetchManifest(ctx, u, src, ref, "")
	if err != nil {
		return "", err
	}
	reg := s.deps.Registry
	if _, err := reg.Resolve(ctx, src.local, top.digest.String()); err == nil {
		// Known content under a new tag: only the tag moves.
		if img.streams() {
			s.live.publish(img, top)
		}
		if err := s.put(ctx, src, top, tags); err != nil {
			return "", err
		}
		log.Info().Str("digest", top.digest.String()).Msg("tag synced to a manifest already present")
		return top.digest, nil
	}

	var refs refPlan
	if src.reg.onlySigned {
		if refs = s.referrerPlan(ctx, u, src, top.digest, log); !refs.signed {
			if refs.failed != nil {
				// Upstream could not say: an outage, not an unsigned image.
				return "", fmt.Errorf("look for the signature of %s: %w", top.digest, refs.failed)
			}
			return "", errUnsigned
		}
	}
	main := newPlan()
	if err := s.walk(ctx, u, src, top, main, 0, img); err != nil {
		return "", err
	}
	if !src.reg.onlySigned {
		refs = s.referrerPlan(ctx, u, src, top.digest, log)
	}
	spool := mode == modeOnDemand
	if err := s.copyBlobs(ctx, u, src, main.blobs, spool); err != nil {
		return "", err
	}
	if err := s.copyBlobs(ctx, u, src, refs.blobs, spool); err != nil {
		log.Warn().Err(err).Msg("failed to copy referrers' blobs; syncing the image without them")
		refs.manifests = nil
	}
	for _, p := range main.manifests {
		if err := s.put(ctx, src, p.f, p.tags); err != nil {
			return "", err
		}
	}
	for _, p := range refs.manifests {
		if err := s.put(ctx, src, p.f, p.tags); err != nil {
			log.Warn().Err(err).Str("digest", p.f.digest.String()).Msg("failed to store a referrer")
		}
	}
	if err := s.put(ctx, src, top, tags); err != nil {
		return "", err
	}
	s.m.images.WithLabelValues(src.reg.label, mode).Inc()
	log.Info().Str("digest", top.digest.String()).Str("mode", mode).Int("blobs", len(main.blobs)).
		Int("manifests", len(main.manifests)+1).Int("referrers", len(refs.manifests)).Msg("image synced")
	return top.digest, nil
}

// fetchManifest GETs ref from u and checks it as the registry will when
// storing it, settling its media type (upstream's, else the one the
// document gives or implies; mediaType when upstream gives none).
func (s *Syncer) fetchManifest(ctx context.Context, u *upstream, src source, ref, mediaType string) (*fetched, error) {
	f, err := u.manifest(ctx, src.upstream, ref)
	if err != nil {
		return nil, err
	}
	if f.mediaType == "" {
		f.mediaType = mediaType
	}
	mt, err := registry.ManifestMediaType(f.mediaType, f.body)
	if err != nil {
		return nil, fmt.Errorf("manifest %s@%s: %w", src.upstream, f.digest, err)
	}
	f.mediaType = mt
	return f, nil
}

// put stores a fetched manifest under its own digest (so the digest is
// upstream's whatever its algorithm) and points tags at it.
func (s *Syncer) put(ctx context.Context, src source, f *fetched, tags []string) error {
	if _, err := s.deps.Registry.PutManifest(ctx, src.local, f.digest.String(), f.mediaType, f.body, tags); err != nil {
		return fmt.Errorf("store manifest %s@%s: %w", src.local, f.digest, err)
	}
	s.m.bytes.WithLabelValues(src.reg.label).Add(float64(len(f.body)))
	return nil
}

// walk adds what f references to p: blobs of an image; for an index, every
// child manifest not present locally (fetched, walked, and added before
// the index that names it). Through img, f is given to clients once its
// blobs and children are known, and so is each child.
func (s *Syncer) walk(ctx context.Context, u *upstream, src source, f *fetched, p *plan, depth int, img *liveImage) error {
	if depth > maxDepth {
		return &upstreamError{Kind: kindProtocol, URL: src.upstream + "@" + f.digest.String(), Err: errors.New("indexes nested too deep")}
	}
	var doc manifestDoc
	if err := json.Unmarshal(f.body, &doc); err != nil {
		return &upstreamError{Kind: kindProtocol, URL: src.upstream + "@" + f.digest.String(), Err: fmt.Errorf("manifest: %v", err)}
	}
	var blobs []v1.Descriptor
	if doc.Config != nil {
		blobs = append(blobs, *doc.Config)
		for _, l := range doc.Layers {
			if !strings.Contains(l.MediaType, ".nondistributable.") && !strings.Contains(l.MediaType, ".foreign.") {
				blobs = append(blobs, l)
			}
		}
	}
	for _, b := range blobs {
		p.addBlob(b)
	}
	s.live.addBlobs(img, blobs)
	if depth > 0 {
		s.live.addManifest(img, f)
	}
	if err := s.fetchAhead(ctx, u, src, p, doc.Manifests); err != nil {
		return err
	}
	for _, child := range doc.Manifests {
		// A child is marked seen only at its turn: one that a sibling
		// names too was walked (and planned before that sibling) already.
		if p.seen[child.Digest] {
			continue
		}
		p.seen[child.Digest] = true
		cf := p.ahead[child.Digest]
		delete(p.ahead, child.Digest)
		if cf == nil {
			continue // present locally
		}
		if err := s.walk(ctx, u, src, cf, p, depth+1, img); err != nil {
			return err
		}
		p.manifests = append(p.manifests, planned{f: cf})
	}
	if depth == 0 && img.streams() {
		// An index goes out once its children are known: a client asks
		// for one right after, and must not start a copy of its own.
		s.live.publish(img, f)
	}
	return nil
}

// fetchAhead fetches the children of an index that are neither walked
// nor fetched yet, a few at a time (the index is answered only once they
// are known), into p.ahead: nil for one present locally.
func (s *Syncer) fetchAhead(ctx context.Context, u *upstream, src source, p *plan, children []v1.Descriptor) error {
	var todo []v1.Descriptor
	for _, c := range children {
		if _, ok := p.ahead[c.Digest]; !ok && !p.seen[c.Digest] {
			p.ahead[c.Digest] = nil
			todo = append(todo, c)
		}
	}
	out := make([]*fetched, len(todo))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(manifestWorkers)
	for i, c := range todo {
		g.Go(func() error {
			if _, err := s.deps.Registry.Resolve(gctx, src.local, c.Digest.String()); err == nil {
				return nil
			}
			f, err := s.fetchManifest(gctx, u, src, c.Digest.String(), c.MediaType)
			out[i] = f
			return err
		})
	}
	err := g.Wait()
	for i, c := range todo {
		if err != nil {
			delete(p.ahead, c.Digest) // not known to be present
		} else {
			p.ahead[c.Digest] = out[i]
		}
	}
	return err
}

func (p *plan) addBlob(d v1.Descriptor) {
	if p.seen[d.Digest] {
		return
	}
	p.seen[d.Digest] = true
	p.blobs = append(p.blobs, d)
}

// refPlan is the referrers of an image and what they reference.
type refPlan struct {
	*plan
	signed bool
	// failed is the first failure to look for a signature: without a
	// signature found, it means "unknown", not "unsigned".
	failed error
}

// cosignSuffixes are the suffixes of cosign's legacy tags for an image's
// signature, attestations and SBOM ("sha256-<hex>.sig" and so on).
var cosignSuffixes = []string{".sig", ".att", ".sbom"}

// referrerPlan collects dgst's referrers missing locally (from the
// referrers API, or the tag schema) and cosign's legacy signature,
// attestation and SBOM tags. Referrers are best effort: a failure is
// logged and the image is synced without them.
func (s *Syncer) referrerPlan(ctx context.Context, u *upstream, src source, dgst digest.Digest, log zerolog.Logger) refPlan {
	rp := refPlan{plan: newPlan()}
	descs, err := u.referrers(ctx, src.upstream, dgst)
	if err != nil {
		rp.failed = err
		log.Warn().Err(err).Msg("failed to list referrers upstream")
	}
	for _, d := range descs {
		err := s.addManifest(ctx, u, src, d.Digest.String(), d.MediaType, nil, rp.plan)
		if err != nil {
			log.Warn().Err(err).Str("referrer", d.Digest.String()).Msg("failed to fetch a referrer")
		}
		if signatureTypes[d.ArtifactType] {
			rp.signed = rp.signed || err == nil
			rp.failed = cmp.Or(rp.failed, err)
		}
	}
	for _, suffix := range cosignSuffixes {
		tag := referrersTag(dgst) + suffix
		ok, err := u.exists(ctx, src.upstream, tag)
		if ok {
			err = s.addManifest(ctx, u, src, tag, "", []string{tag}, rp.plan)
		}
		if err != nil {
			log.Warn().Err(err).Str("tag", tag).Msg("failed to fetch a cosign tag")
		}
		if suffix == ".sig" {
			rp.signed = rp.signed || (ok && err == nil)
			rp.failed = cmp.Or(rp.failed, err)
		}
	}
	return rp
}

// addManifest fetches ref (unless it is present locally and untagged is
// enough), walks it into p and plans it with tags.
func (s *Syncer) addManifest(ctx context.Context, u *upstream, src source, ref, mediaType string, tags []string, p *plan) error {
	if len(tags) == 0 {
		if _, err := s.deps.Registry.Resolve(ctx, src.local, ref); err == nil {
			return nil
		}
	}
	f, err := s.fetchManifest(ctx, u, src, ref, mediaType)
	if err != nil {
		return err
	}
	if p.seen[f.digest] && len(tags) == 0 {
		return nil
	}
	p.seen[f.digest] = true
	sub := &plan{seen: p.seen, ahead: p.ahead}
	if err := s.walk(ctx, u, src, f, sub, 0, nil); err != nil {
		return err
	}
	p.blobs = append(p.blobs, sub.blobs...)
	p.manifests = append(append(p.manifests, sub.manifests...), planned{f: f, tags: tags})
	return nil
}

// copyBlobs copies the blobs missing locally, a few at a time; the first
// failure stops the rest. spool: see blob.
func (s *Syncer) copyBlobs(ctx context.Context, u *upstream, src source, blobs []v1.Descriptor, spool bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    gosync.WaitGroup
		once  gosync.Once
		first error
		sem   = make(chan struct{}, blobWorkers)
	)
	for _, d := range blobs {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := s.copyBlob(ctx, u, src, d, spool); err != nil {
				once.Do(func() { first = err; cancel() })
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return context.Cause(ctx)
}

// copyBlob makes one blob of an image present locally, joining the copy
// in flight when a client's request started it already.
func (s *Syncer) copyBlob(ctx context.Context, u *upstream, src source, d v1.Descriptor, spool bool) error {
	b := s.blob(ctx, src, d, fromMirror(src.reg.mirrors, u), spool)
	defer s.leave(b)
	select {
	case <-b.done:
		return b.result()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fromMirror orders mirrors to start at u (the one the image comes from),
// then the others in their configured order.
func fromMirror(mirrors []*upstream, u *upstream) []*upstream {
	out := []*upstream{u}
	for _, m := range mirrors {
		if m != u {
			out = append(out, m)
		}
	}
	return out
}

// readTracker remembers the error of the reader it wraps, to tell upstream
// failures from local ones.
type readTracker struct {
	r   io.Reader
	err error
}

func (t *readTracker) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && err != io.EOF {
		t.err = err
	}
	return n, err
}
