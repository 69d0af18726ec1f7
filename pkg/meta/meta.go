// Package meta defines the metadata store: a queryable projection of what
// storage holds (tags, manifests, referrers, the catalog). Storage's
// index.json per repository is the truth; the store records which version
// of it each repository's metadata was derived from, so stale or missing
// metadata is detected and rebuilt at start.
package meta

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors.
var (
	ErrNotFound = errors.New("not found")
)

// Manifest is what the store knows of one manifest in a repository.
type Manifest struct {
	Digest       string            `json:"digest"`
	MediaType    string            `json:"mediaType"`
	Size         int64             `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Subject      string            `json:"subject,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

// Repo is a whole repository's metadata, used to rebuild it.
type Repo struct {
	Name      string
	Version   string            // version of index.json it was derived from
	Manifests []Manifest        //
	Tags      map[string]string // tag -> digest
}

// Store is the metadata store. Writes to one repository are applied in the
// order given; every write records the index version it brings the
// repository to. All methods are safe for concurrent use.
type Store interface {
	// PutManifest records m in repo and points tags at it (moving them from
	// other manifests).
	PutManifest(ctx context.Context, repo string, m Manifest, tags []string, version string) error
	// DeleteManifest removes the manifest and every tag pointing at it,
	// returning the removed tags. ErrNotFound when absent.
	DeleteManifest(ctx context.Context, repo, digest, version string) ([]string, error)
	// DeleteTag removes a tag. ErrNotFound when absent.
	DeleteTag(ctx context.Context, repo, tag, version string) error
	// Manifest returns the manifest record, or ErrNotFound.
	Manifest(ctx context.Context, repo, digest string) (Manifest, error)
	// Tag resolves a tag to its manifest, or ErrNotFound.
	Tag(ctx context.Context, repo, tag string) (Manifest, error)
	// Tags lists tags in lexical order after last, at most n (n<0: all).
	Tags(ctx context.Context, repo, last string, n int) ([]string, error)
	// Repos lists repositories in lexical order after last, at most n (n<0: all).
	Repos(ctx context.Context, last string, n int) ([]string, error)
	// Referrers lists the manifests of repo whose subject is digest.
	Referrers(ctx context.Context, repo, digest string) ([]Manifest, error)
	// Version returns the index version repo's metadata was derived from
	// ("" and ErrNotFound when the store has no such repository).
	Version(ctx context.Context, repo string) (string, error)
	// ReplaceRepo replaces everything known of a repository (rebuild).
	ReplaceRepo(ctx context.Context, r Repo) error
	// DeleteRepo forgets a repository.
	DeleteRepo(ctx context.Context, repo string) error
	// Close releases the store.
	Close() error
}

// BlobLocator is an optional Store capability: it remembers which
// repositories received a blob. Entries are hints, checked against storage
// before use, so a stale entry is harmless.
type BlobLocator interface {
	// AddBlob records that repo holds digest.
	AddBlob(ctx context.Context, repo, digest string) error
	// BlobRepos lists up to n repositories recorded as holding digest.
	BlobRepos(ctx context.Context, digest string, n int) ([]string, error)
}

// PullRecorder is an optional Store capability: the last time each
// manifest was pulled, for retention rules (pulledWithin,
// mostRecentlyPulledCount). Writes are batched by the caller.
type PullRecorder interface {
	// RecordPulls stores the last pull time of each digest of repo.
	RecordPulls(ctx context.Context, repo string, pulls map[string]time.Time) error
	// Pulls returns the recorded last pull time per digest of repo.
	Pulls(ctx context.Context, repo string) (map[string]time.Time, error)
}
