package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berthreg/berth/pkg/storage"
)

// maxIndexRetries bounds compare-and-set retries when another process
// changes index.json between our read and write.
const maxIndexRetries = 16

// ociIndex is a repository's index.json. Each tag is one entry annotated
// with org.opencontainers.image.ref.name; a manifest without tags has one
// entry without that annotation.
type ociIndex struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	Manifests     []v1.Descriptor   `json:"manifests"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

func newIndex() *ociIndex {
	return &ociIndex{SchemaVersion: 2, MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{}}
}

// contentVersion is the version metadata records for an index: the
// storage version (hex SHA-256) of its bytes without annotations. Garbage
// collection marks live in annotations, so marking and unmarking do not
// make metadata look stale.
func contentVersion(x *ociIndex) string {
	plain := *x
	plain.Annotations = nil
	data, _ := json.Marshal(&plain)
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func tagOf(d v1.Descriptor) string { return d.Annotations[v1.AnnotationRefName] }

// has reports whether dgst has any entry.
func (x *ociIndex) has(dgst digest.Digest) bool {
	for _, d := range x.Manifests {
		if d.Digest == dgst {
			return true
		}
	}
	return false
}

// remove drops the entries keep rejects and returns the descriptors removed.
func (x *ociIndex) remove(drop func(v1.Descriptor) bool) []v1.Descriptor {
	var removed []v1.Descriptor
	kept := x.Manifests[:0]
	for _, d := range x.Manifests {
		if drop(d) {
			removed = append(removed, d)
		} else {
			kept = append(kept, d)
		}
	}
	x.Manifests = kept
	return removed
}

// keepUntagged re-adds an untagged entry for every removed manifest that has
// no entry left: a manifest stays in the repository until deleted by digest.
func (x *ociIndex) keepUntagged(removed []v1.Descriptor) {
	for _, d := range removed {
		if !x.has(d.Digest) {
			d.Annotations = nil
			x.Manifests = append(x.Manifests, d)
		}
	}
}

// putManifest records desc and points tags at it.
func (x *ociIndex) putManifest(desc v1.Descriptor, tags []string) {
	want := make(map[string]bool, len(tags))
	uniq := tags[:0:0]
	for _, t := range tags {
		if !want[t] {
			uniq = append(uniq, t)
		}
		want[t] = true
	}
	tags = uniq
	moved := x.remove(func(d v1.Descriptor) bool {
		t := tagOf(d)
		return (t != "" && want[t]) || (d.Digest == desc.Digest && t == "" && len(tags) > 0)
	})
	desc.Annotations = nil
	if len(tags) == 0 && !x.has(desc.Digest) {
		x.Manifests = append(x.Manifests, desc)
	}
	for _, t := range tags {
		d := desc
		d.Annotations = map[string]string{v1.AnnotationRefName: t}
		x.Manifests = append(x.Manifests, d)
	}
	x.keepUntagged(moved)
}

// deleteTag removes tag, keeping its manifest.
func (x *ociIndex) deleteTag(tag string) {
	removed := x.remove(func(d v1.Descriptor) bool { return tagOf(d) == tag })
	x.keepUntagged(removed)
}

// deleteManifest removes every entry of dgst.
func (x *ociIndex) deleteManifest(dgst digest.Digest) {
	x.remove(func(d v1.Descriptor) bool { return d.Digest == dgst })
}

// updateIndex applies fn to repo's index.json with compare-and-set retries
// and returns the content version written (see contentVersion).
func (r *Registry) updateIndex(ctx context.Context, repo string, fn func(*ociIndex) error) (string, error) {
	for attempt := 0; attempt < maxIndexRetries; attempt++ {
		idx, ver, err := r.readIndex(ctx, repo)
		if err != nil {
			return "", err
		}
		if err := fn(idx); err != nil {
			return "", err
		}
		data, err := json.Marshal(idx)
		if err != nil {
			return "", fmt.Errorf("encode index of %s: %w", repo, err)
		}
		err = r.store.PutIndex(ctx, repo, data, ver)
		if errors.Is(err, storage.ErrIndexConflict) {
			r.log.Debug().Str("repo", repo).Int("attempt", attempt).Msg("index changed concurrently, retrying")
			continue
		}
		if err != nil {
			return "", fmt.Errorf("write index of %s: %w", repo, err)
		}
		return contentVersion(idx), nil
	}
	return "", fmt.Errorf("write index of %s: %w after %d attempts", repo, storage.ErrIndexConflict, maxIndexRetries)
}

// readIndex returns repo's index (a new empty one if none) and its version.
func (r *Registry) readIndex(ctx context.Context, repo string) (*ociIndex, string, error) {
	data, ver, err := r.store.Index(ctx, repo)
	if errors.Is(err, storage.ErrRepoUnknown) {
		return newIndex(), "", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("read index of %s: %w", repo, err)
	}
	idx := newIndex()
	if err := json.Unmarshal(data, idx); err != nil {
		return nil, "", fmt.Errorf("decode index of %s: %w", repo, err)
	}
	if idx.Manifests == nil {
		idx.Manifests = []v1.Descriptor{}
	}
	return idx, ver, nil
}
