package gc

import (
	"context"
	"errors"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berthreg/berth/pkg/registry"
	"github.com/berthreg/berth/pkg/storage"
)

// maxRounds bounds the untagged-manifest rounds per repository (deleting an
// index makes its children collectable in the next round).
const maxRounds = 8

// collectRepo runs retention, manifest and blob collection on one
// repository.
func (c *Collector) collectRepo(ctx context.Context, repo string, rep *Report) error {
	now := time.Now()
	pol := For(c.opts.Policies, repo)
	deleteUntagged, deleteReferrers := true, false
	if pol != nil {
		deleteUntagged, deleteReferrers = pol.DeleteUntagged, pol.DeleteReferrers
	}
	// Metadata a crash or a cross-process overlap left stale is re-derived
	// here, not only at the next start (a no-op when it is current).
	if !c.opts.DryRun {
		if _, err := c.reg.RebuildRepo(ctx, repo); err != nil {
			return err
		}
	}
	g, err := c.reg.Graph(ctx, repo)
	if err != nil {
		return err
	}

	// 1. Tags outside the retention rules.
	if pol != nil && len(pol.KeepTags) > 0 {
		pulls, err := c.reg.Pulls(ctx, repo)
		if err != nil {
			return err
		}
		var tags []TagInfo
		for _, n := range g.Nodes {
			for _, t := range n.Tags {
				tags = append(tags, TagInfo{Tag: t, Digest: n.Digest.String(), PushedAt: n.PushedAt, PulledAt: pulls[n.Digest.String()]})
			}
		}
		sort.Slice(tags, func(i, j int) bool { return tags[i].Tag < tags[j].Tag })
		keep := pol.Keep(tags, now, pulls != nil)
		for _, t := range tags {
			if keep[t.Tag] {
				continue
			}
			if !c.opts.DryRun {
				ok, err := c.reg.DeleteTagIf(ctx, repo, t.Tag, digest.Digest(t.Digest), t.PushedAt)
				if err != nil {
					return err
				}
				if !ok {
					continue // pushed again meanwhile
				}
			} else {
				dropTag(g, t.Tag)
			}
			c.record(rep, Action{Repo: repo, Kind: "tag", Ref: t.Tag})
		}
	}

	// 2. Manifests nothing keeps, in rounds.
	cutoff := now.Add(-c.opts.UntaggedDelay)
	for round := 0; round < maxRounds; round++ {
		if !c.opts.DryRun {
			if g, err = c.reg.Graph(ctx, repo); err != nil {
				return err
			}
		}
		var chosen []digest.Digest
		byDigest := map[digest.Digest]*registry.Node{}
		for _, n := range g.Unreachable(deleteReferrers) {
			if n.Subject == "" && !deleteUntagged || !c.reg.WrittenBefore(n.PushedAt, cutoff) {
				continue
			}
			chosen = append(chosen, n.Digest)
			byDigest[n.Digest] = n
		}
		removed := chosen
		if !c.opts.DryRun {
			// One compare-and-set for the round; it re-checks each choice.
			if removed, err = c.reg.DeleteUnreachableSet(ctx, repo, chosen, deleteReferrers); err != nil {
				return err
			}
		} else {
			for _, d := range chosen {
				delete(g.Nodes, d)
			}
		}
		for _, d := range removed {
			c.record(rep, Action{Repo: repo, Kind: "manifest", Ref: d.String(), Size: byDigest[d].Size})
		}
		if len(removed) == 0 {
			break
		}
	}

	// 3. Blobs nothing references.
	olderThan := now.Add(-c.opts.Delay)
	if c.opts.DryRun {
		// Against the simulated graph, without the removals above.
		bl, ok := c.reg.Store().(storage.BlobLister)
		if !ok {
			return nil
		}
		ref := g.Referenced()
		return bl.Blobs(ctx, repo, func(d digest.Digest, info storage.BlobInfo) error {
			if !ref[d] && c.reg.WrittenBefore(info.ModTime, olderThan) {
				c.record(rep, Action{Repo: repo, Kind: "blob", Ref: d.String(), Size: info.Size})
			}
			return nil
		})
	}
	cands, _, err := c.reg.UnreferencedBlobs(ctx, repo, olderThan)
	if err != nil {
		return err
	}
	deleted, err := c.reg.DeleteBlobs(ctx, repo, cands, olderThan)
	for _, b := range deleted {
		c.record(rep, Action{Repo: repo, Kind: "blob", Ref: b.Digest.String(), Size: b.Size})
	}
	if errors.Is(err, registry.ErrGCBusy) {
		c.opts.Log.Info().Str("repo", repo).Msg("another collector is busy with this repository; skipping its blobs")
		return nil
	}
	return err
}

// dropTag removes a tag from a graph (dry runs simulate deletions).
func dropTag(g *registry.Graph, tag string) {
	for _, n := range g.Nodes {
		for i, t := range n.Tags {
			if t == tag {
				n.Tags = append(n.Tags[:i], n.Tags[i+1:]...)
				return
			}
		}
	}
}
