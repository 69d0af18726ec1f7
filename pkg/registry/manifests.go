package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berthreg/berth/pkg/meta"
	"github.com/berthreg/berth/pkg/storage"
)

// PutResult is what a manifest push stored.
type PutResult struct {
	Digest  digest.Digest
	Subject digest.Digest
	Tags    []string // tags now pointing at the manifest
}

// ParseReference splits a manifest reference into a digest or a tag,
// validating it.
func ParseReference(ref string) (digest.Digest, string, error) {
	if ValidTag(ref) {
		return "", ref, nil
	}
	d, err := digest.Parse(ref)
	if err != nil {
		return "", "", fmt.Errorf("%w: %q is neither a tag nor a digest", ErrTagInvalid, ref)
	}
	if !storage.SupportedAlgorithm(d.Algorithm()) {
		return "", "", fmt.Errorf("%w: algorithm %s not supported", ErrDigestInvalid, d.Algorithm())
	}
	return d, "", nil
}

// PutManifest validates and stores a manifest under ref (tag or digest) and
// the extra tags, returning its digest.
func (r *Registry) PutManifest(ctx context.Context, repo, ref, contentType string, body []byte, extraTags []string) (PutResult, error) {
	if len(body) > MaxManifestSize {
		return PutResult{}, fmt.Errorf("%w: %d bytes, limit %d", ErrManifestTooLarge, len(body), MaxManifestSize)
	}
	refDigest, tag, err := ParseReference(ref)
	if err != nil {
		return PutResult{}, err
	}
	tags := make([]string, 0, len(extraTags)+1)
	if tag != "" {
		tags = append(tags, tag)
	}
	for _, t := range extraTags {
		if !ValidTag(t) {
			return PutResult{}, fmt.Errorf("%w: %q", ErrTagInvalid, t)
		}
		if !slices.Contains(tags, t) {
			tags = append(tags, t)
		}
	}
	alg := digest.SHA256
	if refDigest != "" {
		alg = refDigest.Algorithm()
	}
	dgst := alg.FromBytes(body)
	if refDigest != "" && dgst != refDigest {
		return PutResult{}, fmt.Errorf("%w: content digest %s does not match %s", ErrDigestInvalid, dgst, refDigest)
	}
	p, err := parseManifest(contentType, body)
	if err != nil {
		return PutResult{}, err
	}
	// The commit must not be torn by a client hanging up.
	ctx = context.WithoutCancel(ctx)
	unlock := r.locks.lock(ctx, repo)
	defer unlock()
	// Refuse a manifest with missing references before storing anything;
	// the check is repeated against the index the update replaces.
	if x, _, err := r.readIndex(ctx, repo); err != nil {
		return PutResult{}, err
	} else if _, err := r.checkRefs(ctx, repo, x, "", p); err != nil {
		return PutResult{}, err
	}
	if err := r.store.Put(ctx, repo, dgst, body); err != nil {
		return PutResult{}, fmt.Errorf("store manifest %s: %w", dgst, err)
	}
	desc := v1.Descriptor{MediaType: p.mediaType, Digest: dgst, Size: int64(len(body)), ArtifactType: p.artifactType}
	var adopted []meta.Manifest
	ver, err := r.updateIndex(ctx, repo, func(x *ociIndex) error {
		// Everything the manifest relies on is checked against the index
		// version this update replaces: a collector marking or deleting
		// blobs changes that version first, so either this update fails its
		// compare-and-set and sees the mark on retry, or the check below
		// already sees the blobs gone (see gcmark.go).
		var err error
		adopted, err = r.checkRefs(ctx, repo, x, dgst, p)
		if err != nil {
			return err
		}
		for _, c := range adopted {
			x.putManifest(v1.Descriptor{MediaType: c.MediaType, Digest: digest.Digest(c.Digest), Size: c.Size, ArtifactType: c.ArtifactType}, nil)
		}
		x.putManifest(desc, tags)
		return nil
	})
	if err != nil {
		return PutResult{}, err
	}
	for _, c := range adopted {
		if err := r.meta.PutManifest(ctx, repo, c, nil, ver); err != nil {
			return PutResult{}, fmt.Errorf("record manifest %s: %w", c.Digest, err)
		}
	}
	m := meta.Manifest{
		Digest: dgst.String(), MediaType: p.mediaType, Size: int64(len(body)),
		ArtifactType: p.artifactType, Subject: p.subject.String(), Annotations: p.referrerAnnotations(),
	}
	if err := r.meta.PutManifest(ctx, repo, m, tags, ver); err != nil {
		return PutResult{}, fmt.Errorf("record manifest %s: %w", dgst, err)
	}
	r.settle(ctx, repo, ver)
	return PutResult{Digest: dgst, Subject: p.subject, Tags: tags}, nil
}

// PushManifest is PutManifest for a client's push: only image manifests
// and indexes (OCI, Docker schema 2) are accepted, whatever the
// Content-Type says. PutManifest itself stores any well-formed manifest,
// as a mirror keeps what upstream serves.
func (r *Registry) PushManifest(ctx context.Context, repo, ref, contentType string, body []byte, tags []string) (PutResult, error) {
	if len(body) <= MaxManifestSize {
		if p, err := parseManifest(contentType, body); err == nil {
			if err := p.pushable(); err != nil {
				return PutResult{}, err
			}
		}
	}
	return r.PutManifest(ctx, repo, ref, contentType, body, tags)
}

// Resolve returns the manifest record ref names.
func (r *Registry) Resolve(ctx context.Context, repo, ref string) (meta.Manifest, error) {
	dgst, tag, err := ParseReference(ref)
	if err != nil {
		return meta.Manifest{}, err
	}
	var m meta.Manifest
	if tag != "" {
		m, err = r.meta.Tag(ctx, repo, tag)
	} else {
		m, err = r.meta.Manifest(ctx, repo, dgst.String())
	}
	if errors.Is(err, meta.ErrNotFound) {
		return meta.Manifest{}, fmt.Errorf("%w: %s:%s", ErrManifestUnknown, repo, ref)
	}
	return m, err
}

// ManifestBody reads a resolved manifest's bytes.
func (r *Registry) ManifestBody(ctx context.Context, repo string, m meta.Manifest) ([]byte, error) {
	rd, err := r.store.Open(ctx, repo, digest.Digest(m.Digest))
	if errors.Is(err, storage.ErrBlobUnknown) {
		return nil, fmt.Errorf("%w: %s@%s content missing", ErrManifestUnknown, repo, m.Digest)
	}
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	return io.ReadAll(io.LimitReader(rd, MaxManifestSize+1))
}

// DeleteManifest deletes a tag, or by digest the manifest and every tag
// pointing at it.
func (r *Registry) DeleteManifest(ctx context.Context, repo, ref string) error {
	dgst, tag, err := ParseReference(ref)
	if err != nil {
		return err
	}
	ctx = context.WithoutCancel(ctx)
	unlock := r.locks.lock(ctx, repo)
	defer unlock()
	if _, err := r.Resolve(ctx, repo, ref); err != nil {
		return err
	}
	if tag != "" {
		ver, err := r.updateIndex(ctx, repo, func(x *ociIndex) error { x.deleteTag(tag); return nil })
		if err != nil {
			return err
		}
		if err := r.meta.DeleteTag(ctx, repo, tag, ver); err != nil {
			return err
		}
		r.settle(ctx, repo, ver)
		return nil
	}
	ver, err := r.updateIndex(ctx, repo, func(x *ociIndex) error { x.deleteManifest(dgst); return nil })
	if err != nil {
		return err
	}
	// ErrNotFound: another process removed the record meanwhile.
	if _, err = r.meta.DeleteManifest(ctx, repo, dgst.String(), ver); err != nil && !errors.Is(err, meta.ErrNotFound) {
		return err
	}
	r.settle(ctx, repo, ver)
	return nil
}

// Tags lists repo's tags after last, at most n (n<0: all).
func (r *Registry) Tags(ctx context.Context, repo, last string, n int) ([]string, error) {
	tags, err := r.meta.Tags(ctx, repo, last, n)
	if errors.Is(err, meta.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNameUnknown, repo)
	}
	return tags, err
}

// Catalog lists repositories after last, at most n (n<0: all).
func (r *Registry) Catalog(ctx context.Context, last string, n int) ([]string, error) {
	return r.meta.Repos(ctx, last, n)
}

// Referrers lists the manifests whose subject is dgst, filtered by
// artifactType when it is not empty.
func (r *Registry) Referrers(ctx context.Context, repo string, dgst digest.Digest, artifactType string) ([]meta.Manifest, error) {
	all, err := r.meta.Referrers(ctx, repo, dgst.String())
	if err != nil {
		return nil, err
	}
	if artifactType == "" {
		return all, nil
	}
	out := all[:0]
	for _, m := range all {
		if m.ArtifactType == artifactType {
			out = append(out, m)
		}
	}
	return out, nil
}
