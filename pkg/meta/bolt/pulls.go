package bolt

import (
	"context"
	"fmt"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/berthreg/berth/pkg/meta"
)

// bucketPulls holds last pull times: repo -> digest -> RFC 3339 time.
var bucketPulls = []byte("pulls")

var _ meta.PullRecorder = (*Store)(nil)

// RecordPulls stores the last pull time of each digest of repo, keeping
// the later of the stored and the given time.
func (s *Store) RecordPulls(ctx context.Context, repo string, pulls map[string]time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		top, err := tx.CreateBucketIfNotExists(bucketPulls)
		if err != nil {
			return err
		}
		b, err := top.CreateBucketIfNotExists([]byte(repo))
		if err != nil {
			return err
		}
		for d, t := range pulls {
			if old, err := time.Parse(time.RFC3339Nano, string(b.Get([]byte(d)))); err == nil && old.After(t) {
				continue
			}
			if err := b.Put([]byte(d), []byte(t.UTC().Format(time.RFC3339Nano))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("bolt: record pulls of %s: %w", repo, err)
	}
	return nil
}

// Pulls returns the last pull time per digest of repo.
func (s *Store) Pulls(ctx context.Context, repo string) (map[string]time.Time, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := map[string]time.Time{}
	err := s.db.View(func(tx *bbolt.Tx) error {
		top := tx.Bucket(bucketPulls)
		if top == nil {
			return nil
		}
		b := top.Bucket([]byte(repo))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			if t, err := time.Parse(time.RFC3339Nano, string(v)); err == nil {
				out[string(k)] = t
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: pulls of %s: %w", repo, err)
	}
	return out, nil
}
