package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/berthreg/berth/pkg/meta"
	"github.com/berthreg/berth/pkg/storage"
)

// RebuildStats counts what Rebuild did.
type RebuildStats struct {
	Repos, Rebuilt, Dropped int
}

// Rebuild brings metadata in line with storage: a repository whose metadata
// is missing or derived from another index.json version is re-derived from
// storage, and metadata of repositories storage no longer has is dropped.
//
// mine limits the work to the repositories this process is responsible for
// (in a cluster, the ones it owns); nil means all.
func (r *Registry) Rebuild(ctx context.Context, mine func(repo string) bool) (RebuildStats, error) {
	var st RebuildStats
	seen := map[string]bool{}
	if mine == nil {
		mine = func(string) bool { return true }
	}
	err := r.store.Repos(ctx, func(repo string) error {
		seen[repo] = true
		if !mine(repo) {
			return nil
		}
		st.Repos++
		rebuilt, err := r.RebuildRepo(ctx, repo)
		if err != nil {
			return err
		}
		if rebuilt {
			st.Rebuilt++
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	known, err := r.meta.Repos(ctx, "", -1)
	if err != nil {
		return st, fmt.Errorf("list metadata repositories: %w", err)
	}
	for _, repo := range known {
		if !seen[repo] && mine(repo) {
			if err := r.meta.DeleteRepo(ctx, repo); err != nil {
				return st, fmt.Errorf("drop metadata of %s: %w", repo, err)
			}
			st.Dropped++
		}
	}
	return st, nil
}

// RebuildRepo re-derives repo's metadata from storage when it is stale and
// reports whether it did.
func (r *Registry) RebuildRepo(ctx context.Context, repo string) (bool, error) {
	unlock := r.locks.lock(ctx, repo)
	defer unlock()
	idx, _, err := r.readIndex(ctx, repo)
	if err != nil {
		return false, err
	}
	ver := contentVersion(idx)
	have, err := r.meta.Version(ctx, repo)
	if err != nil && !errors.Is(err, meta.ErrNotFound) {
		return false, fmt.Errorf("metadata version of %s: %w", repo, err)
	}
	if have == ver && err == nil {
		return false, nil
	}
	if err := r.replaceMeta(ctx, repo, idx); err != nil {
		return false, err
	}
	r.settle(ctx, repo, ver)
	return true, nil
}

// replaceMeta replaces repo's metadata with what idx lists.
func (r *Registry) replaceMeta(ctx context.Context, repo string, idx *ociIndex) error {
	rec := meta.Repo{Name: repo, Version: contentVersion(idx), Tags: map[string]string{}}
	readable := map[digest.Digest]bool{}
	for _, d := range idx.Manifests {
		ok, seen := readable[d.Digest]
		if !seen {
			m, err := r.deriveManifest(ctx, repo, d.MediaType, d.Digest)
			if err != nil {
				r.log.Warn().Err(err).Str("repo", repo).Str("digest", d.Digest.String()).Msg("skipping unreadable manifest during rebuild")
			} else {
				rec.Manifests = append(rec.Manifests, m)
			}
			ok = err == nil
			readable[d.Digest] = ok
		}
		if t := tagOf(d); t != "" && ok {
			rec.Tags[t] = d.Digest.String()
		}
	}
	if err := r.meta.ReplaceRepo(ctx, rec); err != nil {
		return fmt.Errorf("replace metadata of %s: %w", repo, err)
	}
	r.log.Info().Str("repo", repo).Int("manifests", len(rec.Manifests)).Int("tags", len(rec.Tags)).Msg("rebuilt repository metadata")
	return nil
}

// settle runs, with repo's lock held, after a metadata write made for
// index version ver. Writers on one member take turns by that lock, but
// while the membership changes two members may write one repository: a
// metadata write that lands after another member's newer one would leave
// metadata describing an older index, and a later write would stamp it
// with a current version, hiding it from rebuilds. Every writer therefore
// checks, after its own write, that index.json has not moved on, and if
// it has rebuilds the metadata from it (and checks again).
func (r *Registry) settle(ctx context.Context, repo, ver string) {
	for range maxIndexRetries {
		idx, _, err := r.readIndex(ctx, repo)
		if err != nil {
			r.log.Warn().Err(err).Str("repo", repo).Msg("cannot check metadata against index.json after a write")
			return
		}
		cur := contentVersion(idx)
		if cur == ver {
			return
		}
		r.log.Info().Str("repo", repo).Msg("index.json changed during a metadata write; rebuilding the repository's metadata")
		if err := r.replaceMeta(ctx, repo, idx); err != nil {
			r.log.Warn().Err(err).Str("repo", repo).Msg("failed to rebuild metadata; the next collection or restart retries")
			return
		}
		ver = cur
	}
}

// deriveManifest reads and parses a stored manifest into its record.
func (r *Registry) deriveManifest(ctx context.Context, repo, mediaType string, dgst digest.Digest) (meta.Manifest, error) {
	body, err := r.ManifestBody(ctx, repo, meta.Manifest{Digest: dgst.String()})
	if err != nil {
		return meta.Manifest{}, err
	}
	if mediaType == "" {
		var probe struct {
			MediaType string `json:"mediaType"`
		}
		_ = json.Unmarshal(body, &probe)
		mediaType = probe.MediaType
	}
	p, err := parseManifest(mediaType, body)
	if err != nil {
		return meta.Manifest{}, err
	}
	return meta.Manifest{
		Digest: dgst.String(), MediaType: p.mediaType, Size: int64(len(body)),
		ArtifactType: p.artifactType, Subject: p.subject.String(), Annotations: p.referrerAnnotations(),
	}, nil
}

// FindBlob returns a repository other than exclude that holds dgst, for
// mounts that name no source repository: one the blob index names, else
// the first found by looking through every repository.
func (r *Registry) FindBlob(ctx context.Context, dgst digest.Digest, exclude string) (string, error) {
	if repo, err := r.LocateBlob(ctx, dgst, exclude); err == nil || !errors.Is(err, storage.ErrBlobUnknown) {
		return repo, err
	}
	var found string
	stop := errors.New("found")
	err := r.store.Repos(ctx, func(repo string) error {
		if repo == exclude {
			return nil
		}
		if _, err := r.store.Stat(ctx, repo, dgst); err == nil {
			found = repo
			return stop
		}
		return nil
	})
	if found != "" {
		return found, nil
	}
	if err != nil && !errors.Is(err, stop) {
		return "", err
	}
	return "", storage.ErrBlobUnknown
}

// LocateBlob returns a repository other than exclude that the metadata
// store's blob index names as holding dgst, checked against the storage;
// storage.ErrBlobUnknown when there is none (or no index). It is cheap:
// no listing of repositories.
func (r *Registry) LocateBlob(ctx context.Context, dgst digest.Digest, exclude string) (string, error) {
	bl, ok := r.meta.(meta.BlobLocator)
	if !ok {
		return "", storage.ErrBlobUnknown
	}
	repos, err := bl.BlobRepos(ctx, dgst.String(), 16)
	if err != nil {
		return "", err
	}
	for _, repo := range repos {
		if repo == exclude {
			continue
		}
		if _, err := r.store.Stat(ctx, repo, dgst); err == nil {
			return repo, nil
		}
	}
	return "", storage.ErrBlobUnknown
}

// NoteBlob remembers that repo holds dgst when the metadata store keeps a
// blob index (a hint for mounts without a source repository). It runs
// after the blob is committed, so a client hanging up does not stop it.
func (r *Registry) NoteBlob(ctx context.Context, repo string, dgst digest.Digest) {
	if bl, ok := r.meta.(meta.BlobLocator); ok {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
		defer cancel()
		if err := bl.AddBlob(ctx, repo, dgst.String()); err != nil {
			r.log.Warn().Err(err).Str("repo", repo).Str("digest", dgst.String()).Msg("failed to record blob location")
		}
	}
}
