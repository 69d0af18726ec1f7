package registry

import (
	"context"
	"sync"
	"time"

	"github.com/berthreg/berth/pkg/meta"
)

// pullLog collects manifest pulls in memory; FlushPulls writes them in one
// batch per repository, so pulls never wait for a metadata write.
type pullLog struct {
	mu sync.Mutex
	m  map[string]map[string]time.Time // repo -> digest -> last pull
}

// NotePull records that repo@dgst was pulled now.
func (r *Registry) NotePull(repo, dgst string) {
	if _, ok := r.meta.(meta.PullRecorder); !ok {
		return
	}
	now := time.Now()
	r.pulls.mu.Lock()
	defer r.pulls.mu.Unlock()
	if r.pulls.m == nil {
		r.pulls.m = map[string]map[string]time.Time{}
	}
	if r.pulls.m[repo] == nil {
		r.pulls.m[repo] = map[string]time.Time{}
	}
	r.pulls.m[repo][dgst] = now
}

// FlushPulls writes the pulls noted since the last flush.
func (r *Registry) FlushPulls(ctx context.Context) error {
	pr, ok := r.meta.(meta.PullRecorder)
	if !ok {
		return nil
	}
	r.pulls.mu.Lock()
	batch := r.pulls.m
	r.pulls.m = nil
	r.pulls.mu.Unlock()
	for repo, pulls := range batch {
		if err := pr.RecordPulls(ctx, repo, pulls); err != nil {
			return err
		}
	}
	return nil
}

// Pulls returns the recorded last pull time per manifest digest of repo, or
// nil when the metadata store does not record pulls.
func (r *Registry) Pulls(ctx context.Context, repo string) (map[string]time.Time, error) {
	pr, ok := r.meta.(meta.PullRecorder)
	if !ok {
		return nil, nil
	}
	if err := r.FlushPulls(ctx); err != nil {
		return nil, err
	}
	return pr.Pulls(ctx, repo)
}
