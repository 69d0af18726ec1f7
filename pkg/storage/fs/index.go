package fs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path"
	"path/filepath"

	"github.com/berthreg/berth/pkg/storage"
)

// Index returns repo's index.json and its version, the hex sha256 of the
// bytes; ErrRepoUnknown when there is none.
func (d *Driver) Index(ctx context.Context, repo string) ([]byte, string, error) {
	dir, err := d.repoDir(repo)
	if err != nil {
		return nil, "", err
	}
	data, err := os.ReadFile(filepath.Join(dir, indexFile))
	if err != nil {
		if isNotExist(err) {
			return nil, "", fmt.Errorf("fs: %s: %w", repo, storage.ErrRepoUnknown)
		}
		return nil, "", fmt.Errorf("fs: %w", err)
	}
	return data, indexVersion(data), nil
}

// PutIndex replaces repo's index.json atomically if its version is still
// expect ("" for none), else returns ErrIndexConflict. The check is atomic
// within this Driver only.
func (d *Driver) PutIndex(ctx context.Context, repo string, data []byte, expect string) error {
	dir, err := d.repoDir(repo)
	if err != nil {
		return err
	}
	mu := d.indexLock(repo)
	mu.Lock()
	defer mu.Unlock()

	p := filepath.Join(dir, indexFile)
	var current string
	switch old, err := os.ReadFile(p); {
	case err == nil:
		current = indexVersion(old)
	case !isNotExist(err):
		return fmt.Errorf("fs: %w", err)
	}
	if current != expect {
		return fmt.Errorf("fs: %s: index is at %q, expected %q: %w", repo, current, expect, storage.ErrIndexConflict)
	}
	if err := d.ensureLayout(repo, ""); err != nil {
		return err
	}
	return d.writeFile(p, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

func indexVersion(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// Repos calls fn for every directory below root that holds an index.json,
// skipping the driver's _ directories and the contents of blobs/.
func (d *Driver) Repos(ctx context.Context, fn func(repo string) error) error {
	return d.walkRepos(ctx, "", fn)
}

func (d *Driver) walkRepos(ctx context.Context, repo string, fn func(string) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	entries, err := os.ReadDir(filepath.Join(d.root, filepath.FromSlash(repo)))
	if err != nil {
		if isNotExist(err) {
			return nil // removed meanwhile
		}
		return fmt.Errorf("fs: %w", err)
	}
	var dirs []string
	for _, e := range entries {
		switch {
		case repo != "" && e.Name() == indexFile && e.Type().IsRegular():
			if err := fn(repo); err != nil {
				return err
			}
		case e.IsDir() && validComponent(e.Name(), repo == ""):
			dirs = append(dirs, e.Name())
		}
	}
	for _, name := range dirs {
		if err := d.walkRepos(ctx, path.Join(repo, name), fn); err != nil {
			return err
		}
	}
	return nil
}
