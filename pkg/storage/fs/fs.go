// Package fs is the default storage driver: every repository is an OCI
// image layout on a local filesystem, so tools such as skopeo can read a
// repository directly (oci:<root>/<repo>:<tag>).
//
//	<root>/<repo>/oci-layout              {"imageLayoutVersion":"1.0.0"}
//	<root>/<repo>/index.json              written by PutIndex only
//	<root>/<repo>/blobs/<alg>/<hex>       blobs and manifests
//	<root>/_uploads/<id>/info.json        {"repo", "startedAt"} of a session
//	<root>/_uploads/<id>/data             bytes received so far
//	<root>/_uploads/<id>/hashstate        {"offset", "state"}: sha256 state of data[:offset]
//	<root>/_tmp/                          temp files and dirs, renamed into place
//
// Repository name components start with [a-z0-9], so the driver's own
// top-level names start with "_" and never collide with a repository. A
// component other than the first may not be blobs, oci-layout or index.json,
// which would collide with the layout of the parent repository.
//
// Every write is atomic and durable: a temp file under _tmp is written,
// fsynced and renamed into place, then its new directory is fsynced. A crash
// leaves at most stale entries under _tmp, which New removes.
package fs

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/storage"
)

const (
	uploadsDir = "_uploads"
	tmpDir     = "_tmp"

	layoutFile = storage.LayoutFile
	indexFile  = storage.IndexFile
	blobsDir   = storage.BlobsDir
	layoutJSON = `{"imageLayoutVersion":"1.0.0"}`

	bufSize      = 256 << 10 // per Append, Mount copy and rehash
	staleTempAge = time.Hour // a temp entry this old belongs to no live write
	indexStripes = 64
)

var _ storage.Driver = (*Driver)(nil)

// Driver stores repositories under a root directory. It is safe for
// concurrent use. Upload sessions are exclusive within one Driver; two
// Drivers (or processes) on the same root do not see each other's use.
type Driver struct {
	root string
	log  zerolog.Logger
	bufs sync.Pool // *[]byte of bufSize

	sessions storage.SessionLocks // upload ids held by an open Upload

	index [indexStripes]sync.Mutex // serialises PutIndex per repository
}

// New returns a driver storing under root, creating it if needed, and
// removes temp files that earlier runs left behind.
func New(root string, log zerolog.Logger) (*Driver, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("fs: root %q: %w", root, err)
	}
	for _, dir := range []string{root, filepath.Join(root, uploadsDir), filepath.Join(root, tmpDir)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("fs: %w", err)
		}
	}
	d := &Driver{
		root: root,
		log:  log.With().Str("component", "storage-fs").Logger(),
	}
	d.bufs.New = func() any { b := make([]byte, bufSize); return &b }
	d.cleanTemp(time.Now().Add(-staleTempAge))
	return d, nil
}

// cleanTemp removes entries of _tmp last modified before cutoff. Younger
// ones may belong to another process sharing root.
func (d *Driver) cleanTemp(cutoff time.Time) {
	dir := filepath.Join(d.root, tmpDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		d.log.Warn().Err(err).Msg("failed to list temp dir")
		return
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || info.ModTime().After(cutoff) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			d.log.Warn().Err(err).Str("name", e.Name()).Msg("failed to remove stale temp file")
			continue
		}
		d.log.Debug().Str("name", e.Name()).Msg("removed stale temp file")
	}
}

// blobReader is an open blob file; *os.File gives Read, Seek and Close.
type blobReader struct {
	*os.File
	info storage.BlobInfo
}

func (r *blobReader) Info() storage.BlobInfo { return r.info }

// Stat returns the size of the blob dgst in repo, or ErrBlobUnknown.
func (d *Driver) Stat(ctx context.Context, repo string, dgst digest.Digest) (storage.BlobInfo, error) {
	p, err := d.blobPath(repo, dgst)
	if err != nil {
		return storage.BlobInfo{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return storage.BlobInfo{}, blobErr(repo, dgst, err)
	}
	return storage.BlobInfo{Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Open returns the blob dgst of repo as an *os.File-backed reader, or
// ErrBlobUnknown.
func (d *Driver) Open(ctx context.Context, repo string, dgst digest.Digest) (storage.BlobReader, error) {
	p, err := d.blobPath(repo, dgst)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, blobErr(repo, dgst, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("fs: %w", err)
	}
	return &blobReader{File: f, info: storage.BlobInfo{Size: fi.Size(), ModTime: fi.ModTime()}}, nil
}

// Put verifies content against dgst and stores it atomically.
func (d *Driver) Put(ctx context.Context, repo string, dgst digest.Digest, content []byte) error {
	p, err := d.blobPath(repo, dgst)
	if err != nil {
		return err
	}
	if err := storage.VerifyContent(dgst, content); err != nil {
		return fmt.Errorf("fs: put %s: %w", repo, err)
	}
	if err := d.ensureLayout(repo, dgst.Algorithm()); err != nil {
		return err
	}
	return d.writeFile(p, func(f *os.File) error {
		_, err := f.Write(content)
		return err
	})
}

// Delete removes the blob dgst from repo, or returns ErrBlobUnknown.
func (d *Driver) Delete(ctx context.Context, repo string, dgst digest.Digest) error {
	p, err := d.blobPath(repo, dgst)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		return blobErr(repo, dgst, err)
	}
	return syncDir(filepath.Dir(p))
}

// Mount hard-links the blob dgst of from into to, copying it when linking
// fails. It creates to's layout but not its index.json.
func (d *Driver) Mount(ctx context.Context, from, to string, dgst digest.Digest) error {
	src, err := d.blobPath(from, dgst)
	if err != nil {
		return err
	}
	dst, err := d.blobPath(to, dgst)
	if err != nil {
		return err
	}
	if _, err := os.Stat(src); err != nil {
		return blobErr(from, dgst, err)
	}
	if src == dst {
		return nil
	}
	if err := d.ensureLayout(to, dgst.Algorithm()); err != nil {
		return err
	}
	switch err := os.Link(src, dst); {
	case err == nil:
		return syncDir(filepath.Dir(dst))
	case errors.Is(err, os.ErrExist):
		// Content-addressed: already there. Refresh its time as a write
		// would, for collectors that spare recently written blobs.
		now := time.Now()
		if err := os.Chtimes(dst, now, now); err != nil && !isNotExist(err) {
			return fmt.Errorf("fs: %w", err)
		}
		return nil
	case isNotExist(err):
		return blobErr(from, dgst, err) // deleted meanwhile
	default:
		d.log.Debug().Err(err).Msg("failed to link blob, copying")
	}
	return d.copyFile(ctx, src, dst)
}

func (d *Driver) copyFile(ctx context.Context, src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("fs: %w", err)
	}
	defer in.Close()
	buf := d.getBuf()
	defer d.bufs.Put(buf)
	return d.writeFile(dst, func(f *os.File) error {
		_, err := io.CopyBuffer(f, ctxReader{ctx, in}, *buf)
		return err
	})
}

func (d *Driver) getBuf() *[]byte { return d.bufs.Get().(*[]byte) }

// blobPath is the file of dgst in repo; it validates both.
func (d *Driver) blobPath(repo string, dgst digest.Digest) (string, error) {
	dir, err := d.repoDir(repo)
	if err != nil {
		return "", err
	}
	if err := storage.ValidateDigest(dgst); err != nil {
		return "", fmt.Errorf("fs: %w", err)
	}
	return filepath.Join(dir, blobsDir, dgst.Algorithm().String(), dgst.Encoded()), nil
}

// repoDir is the layout directory of repo, or an error when repo could
// escape root or collide with a layout or driver name.
func (d *Driver) repoDir(repo string) (string, error) {
	if !validRepo(repo) {
		return "", fmt.Errorf("fs: repository name %q: %w", repo, storage.ErrNameInvalid)
	}
	return filepath.Join(d.root, filepath.FromSlash(repo)), nil
}

func validRepo(repo string) bool { return storage.ValidRepoPath(repo) }

func validComponent(c string, first bool) bool { return storage.ValidRepoComponent(c, first) }

// ensureLayout creates repo's oci-layout file and blobs/<alg> directory
// (only blobs/ when alg is empty) if missing.
func (d *Driver) ensureLayout(repo string, alg digest.Algorithm) error {
	dir, err := d.repoDir(repo)
	if err != nil {
		return err
	}
	if err := d.mkdirAll(filepath.Join(dir, blobsDir, alg.String())); err != nil {
		return err
	}
	layout := filepath.Join(dir, layoutFile)
	if _, err := os.Stat(layout); err == nil {
		return nil
	}
	return d.writeFile(layout, func(f *os.File) error {
		_, err := f.WriteString(layoutJSON)
		return err
	})
}

// mkdirAll creates dir and its missing parents below root, fsyncing the
// parent of each new directory so that it survives a crash.
func (d *Driver) mkdirAll(dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	parent := filepath.Dir(dir)
	if len(parent) > len(d.root) {
		if err := d.mkdirAll(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil
		}
		return fmt.Errorf("fs: %w", err)
	}
	return syncDir(parent)
}

// writeFile makes dst hold what fill writes, atomically and durably.
func (d *Driver) writeFile(dst string, fill func(*os.File) error) (err error) {
	f, err := os.CreateTemp(filepath.Join(d.root, tmpDir), "tmp-*")
	if err != nil {
		return fmt.Errorf("fs: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("fs: write %s: %w", dst, err)
		}
	}()
	if err := f.Chmod(0o644); err != nil { // CreateTemp's 0600 would hide blobs from other readers
		return err
	}
	if err := fill(f); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return err
	}
	return syncDir(filepath.Dir(dst))
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fs: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fs: sync %s: %w", dir, err)
	}
	return nil
}

func isNotExist(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

func blobErr(repo string, dgst digest.Digest, err error) error {
	if isNotExist(err) {
		return fmt.Errorf("fs: %s in %s: %w", dgst, repo, storage.ErrBlobUnknown)
	}
	return fmt.Errorf("fs: %w", err)
}

func (d *Driver) indexLock(repo string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(repo))
	return &d.index[h.Sum32()%indexStripes]
}

// ctxReader stops a long read (rehash, copy) once ctx is done.
type ctxReader struct {
	ctx context.Context // forced by io.Reader
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
