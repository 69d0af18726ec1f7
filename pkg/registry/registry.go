// Package registry is the repository logic between the HTTP API and the
// stores: it validates manifests, keeps each repository's OCI layout
// index.json (the truth for tags and manifests) and the metadata store (a
// queryable projection of it) in step, and rebuilds metadata that is
// missing or stale.
package registry

import (
	"context"
	"errors"
	"regexp"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/meta"
	"github.com/berthreg/berth/pkg/storage"
)

// Errors the registry returns besides the storage and meta sentinels.
var (
	ErrNameInvalid      = errors.New("invalid repository name")
	ErrTagInvalid       = errors.New("invalid tag")
	ErrDigestInvalid    = errors.New("invalid digest")
	ErrManifestInvalid  = errors.New("manifest invalid")
	ErrManifestTooLarge = errors.New("manifest too large")
	ErrManifestBlob     = errors.New("manifest references unknown blob")
	ErrManifestUnknown  = errors.New("manifest unknown")
	ErrNameUnknown      = errors.New("repository name unknown")
	ErrNotAcceptable    = errors.New("manifest media type not acceptable")
)

var (
	nameRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagRE  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

// MaxNameLength bounds repository names.
const MaxNameLength = 255

// ValidName reports whether name is a valid repository name.
func ValidName(name string) bool {
	return len(name) <= MaxNameLength && nameRE.MatchString(name)
}

// ValidTag reports whether tag is a valid tag.
func ValidTag(tag string) bool { return tagRE.MatchString(tag) }

// Registry coordinates storage and metadata. Writes to one repository are
// serialised in-process so that index.json and metadata change in the same
// order; storage's compare-and-set on index.json guards against other
// processes.
type Registry struct {
	store storage.Driver
	meta  meta.Store
	log   zerolog.Logger
	locks keyedMutex
	pulls pullLog
	refs  refsCache // what manifests reference, for garbage collection
	now   func() time.Time
}

// New returns a Registry over store and md.
func New(store storage.Driver, md meta.Store, log zerolog.Logger) *Registry {
	return &Registry{store: store, meta: md, log: log, now: time.Now}
}

// Store returns the content store (blobs and uploads are used directly).
func (r *Registry) Store() storage.Driver { return r.store }

// keyedMutex is a set of mutexes by key, created on demand and dropped when
// unused.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*refMutex
}

type refMutex struct {
	sync.Mutex
	refs int
}

// lock locks key and returns the unlock function.
func (k *keyedMutex) lock(ctx context.Context, key string) func() {
	k.mu.Lock()
	if k.m == nil {
		k.m = make(map[string]*refMutex)
	}
	m := k.m[key]
	if m == nil {
		m = &refMutex{}
		k.m[key] = m
	}
	m.refs++
	k.mu.Unlock()
	m.Lock()
	return func() {
		m.Unlock()
		k.mu.Lock()
		m.refs--
		if m.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}
