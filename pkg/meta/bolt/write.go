package bolt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	bbolt "go.etcd.io/bbolt"

	"github.com/berthreg/berth/pkg/meta"
)

// PutManifest upserts m in repo (creating the repository), points every tag
// in tags at m.Digest, indexes m as a referrer of m.Subject and records
// version, all in one transaction.
func (s *Store) PutManifest(ctx context.Context, repo string, m meta.Manifest, tags []string, version string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("bolt: put manifest %s@%s: %w", repo, m.Digest, err)
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		rb, err := createRepo(tx, repo)
		if err != nil {
			return err
		}
		if err := putManifest(rb, m); err != nil {
			return err
		}
		tb := rb.Bucket(bucketTags)
		for _, tag := range tags {
			if tag == "" {
				return errors.New("empty tag")
			}
			if err := tb.Put([]byte(tag), []byte(m.Digest)); err != nil {
				return fmt.Errorf("tag %s: %w", tag, err)
			}
		}
		return rb.Put(keyVersion, []byte(version))
	})
	if err != nil {
		return fmt.Errorf("bolt: put manifest %s@%s: %w", repo, m.Digest, err)
	}
	return nil
}

// putManifest writes m into rb's manifests and keeps the referrers index in
// step with m.Subject (dropping the entry of a previous record's subject).
func putManifest(rb *bbolt.Bucket, m meta.Manifest) error {
	if m.Digest == "" {
		return errors.New("empty digest")
	}
	mb, refb := rb.Bucket(bucketManifests), rb.Bucket(bucketReferrers)
	if raw := mb.Get([]byte(m.Digest)); raw != nil {
		old, err := decodeManifest(raw)
		if err != nil {
			return err
		}
		if old.Subject != "" && old.Subject != m.Subject {
			if err := refb.Delete(referrerKey(old.Subject, m.Digest)); err != nil {
				return err
			}
		}
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	if err := mb.Put([]byte(m.Digest), raw); err != nil {
		return err
	}
	if m.Subject != "" {
		return refb.Put(referrerKey(m.Subject, m.Digest), nil)
	}
	return nil
}

// DeleteManifest removes digest from repo with every tag pointing at it and
// its referrers-index entry, records version and returns the removed tags
// in lexical order. Referrers whose subject is digest are kept. It returns
// an error wrapping meta.ErrNotFound (and changes nothing) when the
// repository or manifest is unknown. The repository itself is kept even if
// it ends up empty.
func (s *Store) DeleteManifest(ctx context.Context, repo, digest, version string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("bolt: delete manifest %s@%s: %w", repo, digest, err)
	}
	var removed []string
	err := s.db.Update(func(tx *bbolt.Tx) error {
		removed = nil
		rb := repoBucket(tx, repo)
		if rb == nil {
			return meta.ErrNotFound
		}
		mb := rb.Bucket(bucketManifests)
		raw := mb.Get([]byte(digest))
		if raw == nil {
			return meta.ErrNotFound
		}
		m, err := decodeManifest(raw)
		if err != nil {
			return err
		}
		if m.Subject != "" {
			if err := rb.Bucket(bucketReferrers).Delete(referrerKey(m.Subject, digest)); err != nil {
				return err
			}
		}
		if err := mb.Delete([]byte(digest)); err != nil {
			return err
		}
		tb := rb.Bucket(bucketTags)
		// Collect first: bbolt forbids changing a bucket inside ForEach.
		err = tb.ForEach(func(k, v []byte) error {
			if string(v) == digest {
				removed = append(removed, string(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, tag := range removed {
			if err := tb.Delete([]byte(tag)); err != nil {
				return err
			}
		}
		return rb.Put(keyVersion, []byte(version))
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: delete manifest %s@%s: %w", repo, digest, err)
	}
	return removed, nil
}

// DeleteTag removes tag from repo and records version. It returns an error
// wrapping meta.ErrNotFound (and changes nothing) when the repository or
// tag is unknown.
func (s *Store) DeleteTag(ctx context.Context, repo, tag, version string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("bolt: delete tag %s:%s: %w", repo, tag, err)
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		rb := repoBucket(tx, repo)
		if rb == nil {
			return meta.ErrNotFound
		}
		tb := rb.Bucket(bucketTags)
		if tag == "" || tb.Get([]byte(tag)) == nil {
			return meta.ErrNotFound
		}
		if err := tb.Delete([]byte(tag)); err != nil {
			return err
		}
		return rb.Put(keyVersion, []byte(version))
	})
	if err != nil {
		return fmt.Errorf("bolt: delete tag %s:%s: %w", repo, tag, err)
	}
	return nil
}

// ReplaceRepo atomically replaces everything known of r.Name with r:
// manifests, tags, the referrers index (derived from Subject fields) and
// the version. The repository is created if unknown.
func (s *Store) ReplaceRepo(ctx context.Context, r meta.Repo) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("bolt: replace repo %s: %w", r.Name, err)
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		if repoBucket(tx, r.Name) != nil {
			if err := tx.Bucket(bucketRepos).DeleteBucket([]byte(r.Name)); err != nil {
				return err
			}
		}
		rb, err := createRepo(tx, r.Name)
		if err != nil {
			return err
		}
		for _, m := range r.Manifests {
			if err := putManifest(rb, m); err != nil {
				return fmt.Errorf("manifest %s: %w", m.Digest, err)
			}
		}
		tb := rb.Bucket(bucketTags)
		for tag, digest := range r.Tags {
			if tag == "" {
				return errors.New("empty tag")
			}
			if err := tb.Put([]byte(tag), []byte(digest)); err != nil {
				return fmt.Errorf("tag %s: %w", tag, err)
			}
		}
		return rb.Put(keyVersion, []byte(r.Version))
	})
	if err != nil {
		return fmt.Errorf("bolt: replace repo %s: %w", r.Name, err)
	}
	return nil
}

// DeleteRepo forgets repo and everything in it. Deleting an unknown
// repository is not an error.
func (s *Store) DeleteRepo(ctx context.Context, repo string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("bolt: delete repo %s: %w", repo, err)
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		if repoBucket(tx, repo) == nil {
			return nil
		}
		return tx.Bucket(bucketRepos).DeleteBucket([]byte(repo))
	})
	if err != nil {
		return fmt.Errorf("bolt: delete repo %s: %w", repo, err)
	}
	return nil
}

// decodeManifest parses a manifests-bucket value.
func decodeManifest(raw []byte) (meta.Manifest, error) {
	var m meta.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return meta.Manifest{}, fmt.Errorf("decode manifest: %w", err)
	}
	return m, nil
}
