package bolt

import (
	"bytes"
	"context"
	"fmt"

	bbolt "go.etcd.io/bbolt"

	"github.com/berthreg/berth/pkg/meta"
)

// Manifest returns the record of digest in repo, or an error wrapping
// meta.ErrNotFound.
func (s *Store) Manifest(ctx context.Context, repo, digest string) (meta.Manifest, error) {
	if err := ctx.Err(); err != nil {
		return meta.Manifest{}, fmt.Errorf("bolt: manifest %s@%s: %w", repo, digest, err)
	}
	var m meta.Manifest
	err := s.db.View(func(tx *bbolt.Tx) error {
		rb := repoBucket(tx, repo)
		if rb == nil || digest == "" {
			return meta.ErrNotFound
		}
		raw := rb.Bucket(bucketManifests).Get([]byte(digest))
		if raw == nil {
			return meta.ErrNotFound
		}
		var err error
		m, err = decodeManifest(raw)
		return err
	})
	if err != nil {
		return meta.Manifest{}, fmt.Errorf("bolt: manifest %s@%s: %w", repo, digest, err)
	}
	return m, nil
}

// Tag resolves tag in repo to its manifest record. It returns an error
// wrapping meta.ErrNotFound when the repository or tag is unknown, or when
// the tag points at a manifest the store does not hold.
func (s *Store) Tag(ctx context.Context, repo, tag string) (meta.Manifest, error) {
	if err := ctx.Err(); err != nil {
		return meta.Manifest{}, fmt.Errorf("bolt: tag %s:%s: %w", repo, tag, err)
	}
	var m meta.Manifest
	err := s.db.View(func(tx *bbolt.Tx) error {
		rb := repoBucket(tx, repo)
		if rb == nil || tag == "" {
			return meta.ErrNotFound
		}
		digest := rb.Bucket(bucketTags).Get([]byte(tag))
		if digest == nil {
			return meta.ErrNotFound
		}
		raw := rb.Bucket(bucketManifests).Get(digest)
		if raw == nil {
			return fmt.Errorf("manifest %s: %w", digest, meta.ErrNotFound)
		}
		var err error
		m, err = decodeManifest(raw)
		return err
	})
	if err != nil {
		return meta.Manifest{}, fmt.Errorf("bolt: tag %s:%s: %w", repo, tag, err)
	}
	return m, nil
}

// Tags lists repo's tags in lexical (byte) order strictly after last, at
// most n of them (all when n < 0). The result is never nil. It returns an
// error wrapping meta.ErrNotFound when the repository is unknown.
func (s *Store) Tags(ctx context.Context, repo, last string, n int) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("bolt: tags %s: %w", repo, err)
	}
	var tags []string
	err := s.db.View(func(tx *bbolt.Tx) error {
		rb := repoBucket(tx, repo)
		if rb == nil {
			return meta.ErrNotFound
		}
		tags = page(rb.Bucket(bucketTags).Cursor(), last, n)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: tags %s: %w", repo, err)
	}
	return tags, nil
}

// Repos lists repository names in lexical (byte) order strictly after
// last, at most n of them (all when n < 0). The result is never nil.
func (s *Store) Repos(ctx context.Context, last string, n int) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("bolt: repos: %w", err)
	}
	var repos []string
	err := s.db.View(func(tx *bbolt.Tx) error {
		repos = page(tx.Bucket(bucketRepos).Cursor(), last, n)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: repos: %w", err)
	}
	return repos, nil
}

// page returns the keys of c strictly after last, at most n (all when
// n < 0), as a non-nil slice.
func page(c *bbolt.Cursor, last string, n int) []string {
	out := []string{}
	if n == 0 {
		return out
	}
	var k []byte
	if last == "" {
		k, _ = c.First()
	} else {
		k, _ = c.Seek([]byte(last))
		if k != nil && string(k) == last {
			k, _ = c.Next()
		}
	}
	for ; k != nil && (n < 0 || len(out) < n); k, _ = c.Next() {
		out = append(out, string(k))
	}
	return out
}

// Referrers returns, ordered by digest, the manifest records of repo whose
// subject is digest. The result is an empty, non-nil slice when there are
// none, including for an unknown repository.
func (s *Store) Referrers(ctx context.Context, repo, digest string) ([]meta.Manifest, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("bolt: referrers %s@%s: %w", repo, digest, err)
	}
	out := []meta.Manifest{}
	err := s.db.View(func(tx *bbolt.Tx) error {
		rb := repoBucket(tx, repo)
		if rb == nil || digest == "" {
			return nil
		}
		mb := rb.Bucket(bucketManifests)
		prefix := referrerKey(digest, "")
		c := rb.Bucket(bucketReferrers).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			raw := mb.Get(k[len(prefix):])
			if raw == nil {
				continue // index entry without record: never written, skip defensively
			}
			m, err := decodeManifest(raw)
			if err != nil {
				return err
			}
			out = append(out, m)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: referrers %s@%s: %w", repo, digest, err)
	}
	return out, nil
}

// Version returns the index version repo was derived from, or "" and an
// error wrapping meta.ErrNotFound when the repository is unknown.
func (s *Store) Version(ctx context.Context, repo string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("bolt: version %s: %w", repo, err)
	}
	var v string
	err := s.db.View(func(tx *bbolt.Tx) error {
		rb := repoBucket(tx, repo)
		if rb == nil {
			return meta.ErrNotFound
		}
		v = string(rb.Get(keyVersion))
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("bolt: version %s: %w", repo, err)
	}
	return v, nil
}
