package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berthreg/berth/pkg/meta"
	"github.com/berthreg/berth/pkg/storage"
)

// ErrGCBusy means another collector holds a live mark on the repository.
var ErrGCBusy = errors.New("repository is being collected by another process")

// Node is one manifest of a repository as garbage collection sees it.
type Node struct {
	Digest    digest.Digest
	MediaType string
	Size      int64
	Tags      []string
	PushedAt  time.Time       // when the manifest was last written
	Subject   digest.Digest   // "" unless a referrer
	Children  []digest.Digest // manifests an index lists
	Blobs     []digest.Digest // config and layers
}

// Graph is a repository's manifests at one index version.
type Graph struct {
	Repo    string
	Version string
	Nodes   map[digest.Digest]*Node
}

// graphCache remembers parsed manifests (content-addressed, so immutable)
// during a pass.
type graphCache map[digest.Digest]*Node

// Graph reads repo's manifests and what they reference.
func (r *Registry) Graph(ctx context.Context, repo string) (*Graph, error) {
	idx, ver, err := r.readIndex(ctx, repo)
	if err != nil {
		return nil, err
	}
	return r.graphOf(ctx, repo, idx, ver, graphCache{}, true)
}

func (r *Registry) graphOf(ctx context.Context, repo string, idx *ociIndex, ver string, cache graphCache, withTimes bool) (*Graph, error) {
	g := &Graph{Repo: repo, Version: ver, Nodes: map[digest.Digest]*Node{}}
	for _, d := range idx.Manifests {
		n := g.Nodes[d.Digest]
		if n == nil {
			base, err := r.node(ctx, repo, d, cache, withTimes)
			if err != nil {
				return nil, err
			}
			cp := *base
			cp.Tags = nil
			n = &cp
			g.Nodes[d.Digest] = n
		}
		if t := tagOf(d); t != "" {
			n.Tags = append(n.Tags, t)
		}
	}
	return g, nil
}

// node parses one manifest (from the caches when possible). withTimes
// asks for PushedAt, which costs a Stat; without it a manifest whose
// references are known is not read again (content-addressed, so they
// never change), which is conservative for reachability.
func (r *Registry) node(ctx context.Context, repo string, d v1.Descriptor, cache graphCache, withTimes bool) (*Node, error) {
	if n, ok := cache[d.Digest]; ok {
		return n, nil
	}
	n := &Node{Digest: d.Digest, MediaType: d.MediaType, Size: d.Size}
	if e, ok := r.refs.get(d.Digest); ok && !withTimes {
		n.Subject, n.Children, n.Blobs = e.Subject, e.Children, e.Blobs
		cache[d.Digest] = n
		return n, nil
	}
	info, err := r.store.Stat(ctx, repo, d.Digest)
	switch {
	case errors.Is(err, storage.ErrBlobUnknown):
		// A manifest whose content is gone references nothing.
	case err != nil:
		return nil, err
	default:
		n.PushedAt = info.ModTime
		if e, ok := r.refs.get(d.Digest); ok {
			n.Subject, n.Children, n.Blobs = e.Subject, e.Children, e.Blobs
			break
		}
		body, err := r.ManifestBody(ctx, repo, metaOf(d))
		if err != nil && !errors.Is(err, ErrManifestUnknown) {
			return nil, err
		}
		if err == nil {
			if p, perr := parseManifest(d.MediaType, body); perr == nil {
				n.Subject = p.subject
				for _, b := range p.blobs {
					n.Blobs = append(n.Blobs, b.Digest)
				}
				for _, c := range p.children {
					n.Children = append(n.Children, c.Digest)
				}
				r.refs.put(d.Digest, n)
			}
		}
	}
	cache[d.Digest] = n
	return n, nil
}

// refsCache remembers what parsed manifests reference, by digest. Bounded:
// it starts over when full.
type refsCache struct {
	mu sync.Mutex
	m  map[digest.Digest]refsEntry
}

type refsEntry struct {
	Subject  digest.Digest
	Children []digest.Digest
	Blobs    []digest.Digest
}

const maxRefsCache = 100_000

func (c *refsCache) get(d digest.Digest) (refsEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[d]
	return e, ok
}

func (c *refsCache) put(d digest.Digest, n *Node) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxRefsCache {
		c.m = map[digest.Digest]refsEntry{}
	}
	c.m[d] = refsEntry{Subject: n.Subject, Children: n.Children, Blobs: n.Blobs}
}

// Referenced returns every digest the repository still needs: its
// manifests and everything they reference.
func (g *Graph) Referenced() map[digest.Digest]bool {
	ref := map[digest.Digest]bool{}
	for d, n := range g.Nodes {
		ref[d] = true
		for _, b := range n.Blobs {
			ref[b] = true
		}
		for _, c := range n.Children {
			ref[c] = true
		}
	}
	return ref
}

// Unreachable returns the manifests that nothing keeps: no tag, no index
// listing them, and (unless a referrer of a present subject) no subject
// keeping them. Referrers whose subject is gone are included only when
// withOrphanReferrers is true.
func (g *Graph) Unreachable(withOrphanReferrers bool) []*Node {
	child := map[digest.Digest]bool{}
	for _, n := range g.Nodes {
		for _, c := range n.Children {
			child[c] = true
		}
	}
	var out []*Node
	for d, n := range g.Nodes {
		if len(n.Tags) > 0 || child[d] {
			continue
		}
		if n.Subject != "" {
			if _, present := g.Nodes[n.Subject]; present || !withOrphanReferrers {
				continue
			}
		}
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b *Node) int { return a.PushedAt.Compare(b.PushedAt) })
	return out
}

// DeleteTagIf removes tag only if it still names dgst and the manifest was
// not written again after pushedAt (when the decision saw it), reporting
// whether it did: a tag pushed again meanwhile, even to the same digest
// (which may leave index.json as it was), is never removed by a stale
// decision. Cancelling ctx stops it until index.json is written; from then
// on the metadata write completes (see commitContext).
func (r *Registry) DeleteTagIf(ctx context.Context, repo, tag string, dgst digest.Digest, pushedAt time.Time) (bool, error) {
	unlock := r.locks.lock(ctx, repo)
	defer unlock()
	if err := ctx.Err(); err != nil {
		return false, err
	}
	cctx, cancel := commitContext(ctx)
	defer cancel()
	errStale := errors.New("stale")
	ver, err := r.updateIndex(cctx, repo, func(x *ociIndex) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		for _, d := range x.Manifests {
			if tagOf(d) == tag && d.Digest == dgst {
				// A push writes the manifest before index.json: one that
				// has not updated the index yet will find the tag gone
				// and put it back.
				info, err := r.store.Stat(ctx, repo, dgst)
				switch {
				case errors.Is(err, storage.ErrBlobUnknown):
					// The manifest's content is gone: nothing to protect.
				case err != nil:
					return fmt.Errorf("check when %s was last pushed: %w", tag, err)
				case info.ModTime.After(pushedAt):
					return errStale
				}
				x.deleteTag(tag)
				return nil
			}
		}
		return errStale
	})
	if errors.Is(err, errStale) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	// ErrNotFound: another process removed the record meanwhile.
	if err := r.meta.DeleteTag(cctx, repo, tag, ver); err != nil && !errors.Is(err, meta.ErrNotFound) {
		return true, fmt.Errorf("forget tag %s: %w", tag, err)
	}
	r.settle(cctx, repo, ver)
	return true, nil
}

// DeleteUnreachable removes manifest dgst only if, in the index current at
// the moment of writing, it is still unreachable (see Graph.Unreachable).
func (r *Registry) DeleteUnreachable(ctx context.Context, repo string, dgst digest.Digest, withOrphanReferrers bool) (bool, error) {
	done, err := r.DeleteUnreachableSet(ctx, repo, []digest.Digest{dgst}, withOrphanReferrers)
	return len(done) == 1, err
}

// DeleteUnreachableSet removes, in one compare-and-set of index.json, the
// manifests of want that are still unreachable in the index current at the
// moment of writing, and returns those it removed. Cancelling ctx stops it
// until index.json is written; from then on the metadata writes complete
// (see commitContext).
func (r *Registry) DeleteUnreachableSet(ctx context.Context, repo string, want []digest.Digest, withOrphanReferrers bool) ([]digest.Digest, error) {
	if len(want) == 0 {
		return nil, nil
	}
	unlock := r.locks.lock(ctx, repo)
	defer unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cctx, cancel := commitContext(ctx)
	defer cancel()
	cache := graphCache{}
	wanted := make(map[digest.Digest]bool, len(want))
	for _, d := range want {
		wanted[d] = true
	}
	var done []digest.Digest
	ver, err := r.updateIndex(cctx, repo, func(x *ociIndex) error {
		// Reading manifests is still the decision: ctx may stop it.
		if err := ctx.Err(); err != nil {
			return err
		}
		g, err := r.graphOf(ctx, repo, x, "", cache, false)
		if err != nil {
			return err
		}
		done = done[:0]
		for _, n := range g.Unreachable(withOrphanReferrers) {
			if wanted[n.Digest] {
				done = append(done, n.Digest)
			}
		}
		if len(done) == 0 {
			return errNothing
		}
		gone := make(map[digest.Digest]bool, len(done))
		for _, d := range done {
			gone[d] = true
		}
		x.remove(func(d v1.Descriptor) bool { return gone[d.Digest] })
		return nil
	})
	if errors.Is(err, errNothing) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	for _, d := range done {
		if _, err := r.meta.DeleteManifest(cctx, repo, d.String(), ver); err != nil && !errors.Is(err, meta.ErrNotFound) {
			return done, fmt.Errorf("forget manifest %s: %w", d, err)
		}
	}
	r.settle(cctx, repo, ver)
	return done, nil
}

// commitTimeout bounds a write that cancellation no longer stops once
// started, such as a collector's commit (index.json, then the metadata
// that mirrors it).
const commitTimeout = 30 * time.Second

// commitContext returns the context for a collector's commit. Like a
// manifest push or delete (see manifests.go) the commit is not torn by
// cancellation: a shutdown between the index.json write and the metadata
// writes would leave tags and manifests resolving and listed although
// index.json dropped them, until the next rebuild. Unlike a push it is
// bounded, as nothing waits on it but the collector.
func commitContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
}

// WrittenBefore reports whether something storage says was written at t
// was certainly written before cutoff, allowing for storage that reports
// times truncated (S3: whole seconds), so a delay is never cut short.
func (r *Registry) WrittenBefore(t, cutoff time.Time) bool {
	var res time.Duration
	if tr, ok := r.store.(storage.TimeResolver); ok {
		res = tr.TimeResolution()
	}
	return t.Add(res).Before(cutoff)
}

// BlobCandidate is a blob garbage collection may delete.
type BlobCandidate struct {
	Digest digest.Digest
	Size   int64
}

// UnreferencedBlobs lists blobs of repo that no manifest in the current
// index references and that were written before olderThan.
func (r *Registry) UnreferencedBlobs(ctx context.Context, repo string, olderThan time.Time) ([]BlobCandidate, *Graph, error) {
	bl, ok := r.store.(storage.BlobLister)
	if !ok {
		return nil, nil, errors.New("storage driver cannot list blobs")
	}
	g, err := r.Graph(ctx, repo)
	if err != nil {
		return nil, nil, err
	}
	ref := g.Referenced()
	var out []BlobCandidate
	err = bl.Blobs(ctx, repo, func(d digest.Digest, info storage.BlobInfo) error {
		if !ref[d] && r.WrittenBefore(info.ModTime, olderThan) {
			out = append(out, BlobCandidate{Digest: d, Size: info.Size})
		}
		return nil
	})
	return out, g, err
}

func metaOf(d v1.Descriptor) meta.Manifest { return meta.Manifest{Digest: d.Digest.String()} }

// errNothing ends an index update that has nothing to write.
var errNothing = errors.New("nothing to write")

// DeleteBlobs deletes the candidates that are still unreferenced when the
// collector's mark is written (see gcmark.go) and were not written again
// after olderThan, returning what it deleted. It fails with ErrGCBusy when
// another collector's mark is live.
func (r *Registry) DeleteBlobs(ctx context.Context, repo string, cands []BlobCandidate, olderThan time.Time) ([]BlobCandidate, error) {
	if len(cands) == 0 {
		return nil, nil
	}
	unlock := r.locks.lock(ctx, repo)
	defer unlock()
	cache := graphCache{}
	markAt := r.now()
	var pending []BlobCandidate
	_, err := r.updateIndex(ctx, repo, func(x *ociIndex) error {
		if since, ok := x.gcMarkTime(); ok && markAt.Sub(since) <= gcMarkTTL {
			return ErrGCBusy
		}
		g, err := r.graphOf(ctx, repo, x, "", cache, false)
		if err != nil {
			return err
		}
		ref := g.Referenced()
		pending = pending[:0]
		ds := make([]digest.Digest, 0, len(cands))
		for _, c := range cands {
			if !ref[c.Digest] {
				pending = append(pending, c)
				ds = append(ds, c.Digest)
			}
		}
		if len(pending) == 0 {
			return errNothing
		}
		x.setGCMark(ds, markAt)
		return nil
	})
	if errors.Is(err, errNothing) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	// From here on no push can start relying on a pending blob: clear the
	// mark whatever happens.
	defer func() {
		_, cerr := r.updateIndex(context.WithoutCancel(ctx), repo, func(x *ociIndex) error {
			if t, ok := x.gcMarkTime(); ok && t.Equal(markAt) {
				x.clearGCMark()
				return nil
			}
			return errNothing
		})
		if cerr != nil && !errors.Is(cerr, errNothing) {
			r.log.Warn().Err(cerr).Str("repo", repo).Msg("failed to clear garbage collection mark; it expires by itself")
		}
	}()
	var deleted []BlobCandidate
	for i, c := range pending {
		if r.now().Sub(markAt) > gcMarkTTL/2 {
			// Pushers stop honouring the mark after gcMarkTTL by their own
			// clocks: stop well before; the rest waits for the next pass.
			r.log.Warn().Str("repo", repo).Int("left", len(pending)-i).
				Msg("garbage collection mark half expired; leaving the remaining blobs to the next pass")
			break
		}
		info, err := r.store.Stat(ctx, repo, c.Digest)
		if err != nil || !r.WrittenBefore(info.ModTime, olderThan) {
			continue // gone already, or written again since it was chosen
		}
		if err := r.store.Delete(ctx, repo, c.Digest); err != nil {
			if errors.Is(err, storage.ErrBlobUnknown) {
				continue
			}
			return deleted, fmt.Errorf("delete blob %s: %w", c.Digest, err)
		}
		deleted = append(deleted, c)
	}
	return deleted, nil
}
