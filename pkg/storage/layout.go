package storage

import (
	"strings"
	"sync"
)

// Names of the OCI image layout inside a repository, shared by drivers.
const (
	LayoutFile = "oci-layout"
	IndexFile  = "index.json"
	BlobsDir   = "blobs"
)

// ValidRepoPath reports whether repo is safe as a path (or key prefix) in a
// driver: non-empty components of [a-z0-9][a-z0-9._-]*, so no "..", no
// leading "_" (drivers keep private data under such names), and no
// component below the first that is a layout name (it would collide with
// the parent repository's layout).
func ValidRepoPath(repo string) bool {
	if repo == "" {
		return false
	}
	for i, c := range strings.Split(repo, "/") {
		if !ValidRepoComponent(c, i == 0) {
			return false
		}
	}
	return true
}

// ValidRepoComponent reports whether c may be one "/"-separated component
// of a repository name; first is true for the top-level component.
func ValidRepoComponent(c string, first bool) bool {
	if c == "" || !isAlnum(c[0]) {
		return false
	}
	for i := 1; i < len(c); i++ {
		if b := c[i]; !isAlnum(b) && b != '.' && b != '_' && b != '-' {
			return false
		}
	}
	return first || (c != BlobsDir && c != LayoutFile && c != IndexFile)
}

func isAlnum(b byte) bool { return 'a' <= b && b <= 'z' || '0' <= b && b <= '9' }

// SessionLocks holds the upload session ids in use by an open Upload in
// this process, so a second request for the same session gets
// ErrUploadBusy. The zero value is ready.
type SessionLocks struct {
	mu   sync.Mutex
	busy map[string]struct{}
}

// Acquire takes id, reporting false when it is already held.
func (l *SessionLocks) Acquire(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.busy[id]; ok {
		return false
	}
	if l.busy == nil {
		l.busy = map[string]struct{}{}
	}
	l.busy[id] = struct{}{}
	return true
}

// Release gives id back.
func (l *SessionLocks) Release(id string) {
	l.mu.Lock()
	delete(l.busy, id)
	l.mu.Unlock()
}

// Held reports whether id is held.
func (l *SessionLocks) Held(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.busy[id]
	return ok
}
