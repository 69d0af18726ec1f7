package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berthreg/berth/pkg/meta"
	"github.com/berthreg/berth/pkg/storage"
)

// maxAdoptDepth bounds how deep nested indexes are followed when adopting
// child manifests.
const maxAdoptDepth = 4

// checkRefs verifies, against index x, that everything manifest dgst (parsed
// as p) relies on is stored and not being collected: the manifest's own
// content (unless dgst is ""), its config and layers, and its child
// manifests. A child that is
// stored as content but absent from the index (mounted as a blob, as
// `docker manifest push` does, or dropped by garbage collection) is adopted:
// its own references are checked the same way and it is returned so the
// caller lists it in the index, which keeps its blobs referenced.
func (r *Registry) checkRefs(ctx context.Context, repo string, x *ociIndex, dgst digest.Digest, p *parsedManifest) ([]meta.Manifest, error) {
	pending := x.gcPending(time.Now())
	var adopted []meta.Manifest
	seen := map[digest.Digest]bool{}
	var check func(dgst digest.Digest, p *parsedManifest, depth int) error
	check = func(dgst digest.Digest, p *parsedManifest, depth int) error {
		refs := p.blobs
		if dgst != "" {
			refs = append([]v1.Descriptor{{Digest: dgst}}, refs...)
		}
		for _, d := range refs {
			if err := r.present(ctx, repo, d.Digest, pending); err != nil {
				return err
			}
		}
		for _, c := range p.children {
			if x.has(c.Digest) || seen[c.Digest] {
				continue
			}
			seen[c.Digest] = true
			if depth >= maxAdoptDepth {
				return fmt.Errorf("%w: %s (nested too deep)", ErrManifestBlob, c.Digest)
			}
			body, err := r.ManifestBody(ctx, repo, meta.Manifest{Digest: c.Digest.String()})
			if errors.Is(err, ErrManifestUnknown) {
				return fmt.Errorf("%w: %s", ErrManifestBlob, c.Digest)
			}
			if err != nil {
				return err
			}
			cp, err := parseManifest(c.MediaType, body)
			if err != nil {
				return fmt.Errorf("%w: child %s: %v", ErrManifestInvalid, c.Digest, err)
			}
			if err := check(c.Digest, cp, depth+1); err != nil {
				return err
			}
			adopted = append(adopted, meta.Manifest{
				Digest: c.Digest.String(), MediaType: cp.mediaType, Size: int64(len(body)),
				ArtifactType: cp.artifactType, Subject: cp.subject.String(), Annotations: cp.referrerAnnotations(),
			})
		}
		return nil
	}
	if err := check(dgst, p, 0); err != nil {
		return nil, err
	}
	return adopted, nil
}

// present checks that blob d is stored in repo and not marked for deletion.
func (r *Registry) present(ctx context.Context, repo string, d digest.Digest, pending map[digest.Digest]bool) error {
	if pending[d] {
		return fmt.Errorf("%w: %s is being garbage collected; push it again", ErrManifestBlob, d)
	}
	if _, err := r.store.Stat(ctx, repo, d); err != nil {
		if errors.Is(err, storage.ErrBlobUnknown) {
			return fmt.Errorf("%w: %s", ErrManifestBlob, d)
		}
		return fmt.Errorf("stat %s: %w", d, err)
	}
	return nil
}
