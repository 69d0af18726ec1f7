package fs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"

	"github.com/berthreg/berth/pkg/storage"
)

var _ storage.BlobLister = (*Driver)(nil)

// Blobs calls fn for every blob of repo (blobs/<alg>/<hex>), skipping
// anything that is not a well-formed digest of a supported algorithm.
func (d *Driver) Blobs(ctx context.Context, repo string, fn func(digest.Digest, storage.BlobInfo) error) error {
	dir, err := d.repoDir(repo)
	if err != nil {
		return err
	}
	root := filepath.Join(dir, blobsDir)
	algs, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("fs: list blobs of %s: %w", repo, err)
	}
	for _, a := range algs {
		if !a.IsDir() {
			continue
		}
		entries, err := os.ReadDir(filepath.Join(root, a.Name()))
		if err != nil {
			return fmt.Errorf("fs: list blobs of %s: %w", repo, err)
		}
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return err
			}
			dgst := digest.NewDigestFromEncoded(digest.Algorithm(a.Name()), e.Name())
			if e.IsDir() || storage.ValidateDigest(dgst) != nil {
				continue
			}
			fi, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("fs: stat blob %s: %w", dgst, err)
			}
			if err := fn(dgst, storage.BlobInfo{Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
				return err
			}
		}
	}
	return nil
}
