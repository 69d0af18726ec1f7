package bolt

import (
	"bytes"
	"context"
	"fmt"

	bbolt "go.etcd.io/bbolt"

	"github.com/berthreg/berth/pkg/meta"
)

// bucketBlobs holds blob location hints: digest "\x00" repo -> empty.
var bucketBlobs = []byte("blobs")

var _ meta.BlobLocator = (*Store)(nil)

// AddBlob records that repo holds digest.
func (s *Store) AddBlob(ctx context.Context, repo, digest string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketBlobs)
		if err != nil {
			return err
		}
		return b.Put(referrerKey(digest, repo), nil)
	})
	if err != nil {
		return fmt.Errorf("bolt: add blob %s@%s: %w", repo, digest, err)
	}
	return nil
}

// BlobRepos lists up to n repositories recorded as holding digest.
func (s *Store) BlobRepos(ctx context.Context, digest string, n int) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := []string{}
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketBlobs)
		if b == nil {
			return nil
		}
		prefix := referrerKey(digest, "")
		c := b.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && (n < 0 || len(out) < n); k, _ = c.Next() {
			out = append(out, string(k[len(prefix):]))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: blob repos of %s: %w", digest, err)
	}
	return out, nil
}
