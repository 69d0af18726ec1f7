// Package bolt implements meta.Store on a single bbolt file, the default
// metadata store for a single node.
//
// Layout (bucket names in quotes, keys and values as raw bytes):
//
//	"repos"
//	  <repository name>          nested bucket per repository, full name with slashes
//	    "version"   -> index.json version the repository was derived from
//	    "manifests" -> digest                    -> JSON of meta.Manifest
//	    "tags"      -> tag                       -> digest
//	    "referrers" -> subject "\x00" referrer   -> empty
//
// bbolt keeps keys in byte order, so cursors give the lexical order that
// tag and catalog pagination need. Every write is one bbolt transaction;
// bbolt serialises writers, which gives the per-repository write order the
// meta.Store contract asks for.
package bolt

import (
	"errors"
	"fmt"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/berthreg/berth/pkg/meta"
)

// openTimeout bounds how long Open waits for the file lock, so a second
// process fails clearly instead of hanging.
const openTimeout = 2 * time.Second

// Bucket and key names.
var (
	bucketRepos     = []byte("repos")
	bucketManifests = []byte("manifests")
	bucketTags      = []byte("tags")
	bucketReferrers = []byte("referrers")
	keyVersion      = []byte("version")
)

// Store is a meta.Store backed by a bbolt file. It is safe for concurrent
// use; only one Store (in any process) may hold a given file at a time.
type Store struct {
	db *bbolt.DB
}

var _ meta.Store = (*Store)(nil)

// Open opens (creating it if needed, mode 0600) the bbolt file at path.
// It fails after two seconds if another process or Store holds the file.
func Open(path string) (*Store, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout:        openTimeout,
		NoFreelistSync: true,
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketRepos)
		return err
	})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("bolt: init %s: %w", path, err), db.Close())
	}
	return &Store{db: db}, nil
}

// Close releases the file. The Store must not be used afterwards.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("bolt: close: %w", err)
	}
	return nil
}

// repoBucket returns the nested bucket of repo, or nil when unknown.
func repoBucket(tx *bbolt.Tx, repo string) *bbolt.Bucket {
	if repo == "" {
		return nil
	}
	return tx.Bucket(bucketRepos).Bucket([]byte(repo))
}

// createRepo returns the nested bucket of repo with its sub-buckets,
// creating whatever is missing. tx must be writable.
func createRepo(tx *bbolt.Tx, repo string) (*bbolt.Bucket, error) {
	if repo == "" {
		return nil, errors.New("empty repository name")
	}
	rb, err := tx.Bucket(bucketRepos).CreateBucketIfNotExists([]byte(repo))
	if err != nil {
		return nil, err
	}
	for _, name := range [][]byte{bucketManifests, bucketTags, bucketReferrers} {
		if _, err := rb.CreateBucketIfNotExists(name); err != nil {
			return nil, err
		}
	}
	return rb, nil
}

// referrerKey is the referrers-bucket key linking subject to referrer.
func referrerKey(subject, referrer string) []byte {
	k := make([]byte, 0, len(subject)+1+len(referrer))
	k = append(k, subject...)
	k = append(k, 0)
	return append(k, referrer...)
}
