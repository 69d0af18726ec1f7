// Package storage defines the content store a registry keeps blobs,
// manifests and the per-repository OCI layout index in, and the sentinel
// errors its drivers return. Drivers live in sub-packages (fs, s3).
//
// Every repository is an OCI image layout:
//
//	<root>/<repo>/oci-layout              {"imageLayoutVersion":"1.0.0"}
//	<root>/<repo>/index.json              manifests of the repo; tags as org.opencontainers.image.ref.name
//	<root>/<repo>/blobs/<alg>/<hex>       blobs and manifests, content-addressed
//
// Upload sessions live in storage too, so they survive restarts and can be
// continued by another process sharing the same storage.
package storage

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/opencontainers/go-digest"
)

// Sentinel errors. Drivers wrap them with context; callers test with errors.Is.
var (
	ErrBlobUnknown     = errors.New("blob unknown")
	ErrUploadUnknown   = errors.New("upload unknown")
	ErrDigestMismatch  = errors.New("digest mismatch")
	ErrSizeMismatch    = errors.New("size mismatch")
	ErrRepoUnknown     = errors.New("repository unknown")
	ErrIndexConflict   = errors.New("index changed concurrently")
	ErrUnsupportedAlgo = errors.New("unsupported digest algorithm")
	ErrUploadBusy      = errors.New("upload in use by another request")
	ErrNameInvalid     = errors.New("invalid repository name")
	// ErrUnavailable means the backend could not be reached or kept failing
	// after retries; nothing was changed. Clients should retry later.
	ErrUnavailable = errors.New("storage backend unavailable")
)

// Redirector is an optional Driver capability: a URL the client can fetch
// the blob from directly (a presigned S3 GET), valid for expires. An error
// wrapping errors.ErrUnsupported means: serve the bytes instead.
type Redirector interface {
	RedirectURL(ctx context.Context, repo string, dgst digest.Digest, expires time.Duration) (string, error)
}

// BlobLister is an optional Driver capability used by garbage collection:
// it enumerates the blobs stored in a repository (manifests included).
type BlobLister interface {
	Blobs(ctx context.Context, repo string, fn func(dgst digest.Digest, info BlobInfo) error) error
}

// TimeResolver is an optional Driver capability: the precision of the
// modification times it reports (S3 reports whole seconds). Drivers
// without it report exact times.
type TimeResolver interface {
	TimeResolution() time.Duration
}

// UploadLister is an optional Driver capability used by garbage collection:
// it enumerates upload sessions with the time of their last write, so
// abandoned ones can be removed while slow, long uploads are spared.
type UploadLister interface {
	Uploads(ctx context.Context, fn func(repo, id string, lastActive time.Time) error) error
}

// BlobInfo describes a stored blob.
type BlobInfo struct {
	Size    int64
	ModTime time.Time
}

// BlobReader is an open blob: seekable so that ranged reads are cheap.
type BlobReader interface {
	io.ReadSeekCloser
	Info() BlobInfo
}

// Driver is the content store. All methods are safe for concurrent use.
type Driver interface {
	// Stat returns the blob's size, or ErrBlobUnknown.
	Stat(ctx context.Context, repo string, dgst digest.Digest) (BlobInfo, error)
	// Open returns a reader over the blob, or ErrBlobUnknown.
	Open(ctx context.Context, repo string, dgst digest.Digest) (BlobReader, error)
	// Put stores small content (manifests) under its digest. The content is
	// verified against dgst first (ErrDigestMismatch); the blob becomes visible
	// atomically and durably before Put returns.
	Put(ctx context.Context, repo string, dgst digest.Digest, content []byte) error
	// Delete removes a blob; ErrBlobUnknown when absent.
	Delete(ctx context.Context, repo string, dgst digest.Digest) error
	// Mount makes the blob dgst of repo from visible in repo to, without
	// copying bytes through the caller. ErrBlobUnknown when from lacks it.
	Mount(ctx context.Context, from, to string, dgst digest.Digest) error

	// NewUpload starts an upload session for repo.
	NewUpload(ctx context.Context, repo string) (Upload, error)
	// Upload resumes the session id of repo, or returns ErrUploadUnknown.
	// The caller must Close it. A session is used by one request at a time;
	// a concurrent user gets ErrUploadBusy.
	Upload(ctx context.Context, repo, id string) (Upload, error)

	// Index returns the repository's index.json and its version for
	// PutIndex; ErrRepoUnknown if the repository has no index yet. The
	// version of an index is the lowercase hex SHA-256 of its bytes, so
	// callers can compute the version of what they write.
	Index(ctx context.Context, repo string) (data []byte, version string, err error)
	// PutIndex replaces index.json atomically if its version is still
	// expect ("" meaning: no index yet), else returns ErrIndexConflict.
	// It creates the OCI layout of a new repository.
	PutIndex(ctx context.Context, repo string, data []byte, expect string) error
	// Repos calls fn for every repository that has an index, in no order.
	Repos(ctx context.Context, fn func(repo string) error) error
}

// Upload is an upload session. Bytes are appended; the running size is
// durable once Append returns (a crash loses at most the append in progress).
type Upload interface {
	ID() string
	// Size is the number of bytes received so far.
	Size() int64
	// StartedAt is when the session began (for expiry).
	StartedAt() time.Time
	// Append copies r to the end of the upload, returning the bytes written.
	// On error, the bytes that were durably written remain part of the upload.
	Append(ctx context.Context, r io.Reader) (int64, error)
	// Commit verifies the content against dgst (ErrDigestMismatch) and makes
	// it visible as the blob dgst of the session's repository. The session
	// ends on success and on digest mismatch; it continues when the
	// algorithm is unsupported (ErrUnsupportedAlgo).
	Commit(ctx context.Context, dgst digest.Digest) (BlobInfo, error)
	// Cancel discards the session.
	Cancel(ctx context.Context) error
	// Close releases the session for the next request without ending it.
	Close() error
}
