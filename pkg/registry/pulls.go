package registry

import (
	"context"
	"errors"
	"fmt"
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

// FlushPulls writes the pulls noted since the last flush. A repository
// whose write fails keeps its pulls for the next flush, and the others are
// still written: pull times feed retention rules, so a dropped batch could
// let retention delete tags that were pulled recently.
func (r *Registry) FlushPulls(ctx context.Context) error {
	pr, ok := r.meta.(meta.PullRecorder)
	if !ok {
		return nil
	}
	r.pulls.mu.Lock()
	batch := r.pulls.m
	r.pulls.m = nil
	r.pulls.mu.Unlock()
	var errs []error
	skipped := 0
	for repo, pulls := range batch {
		if ctx.Err() != nil {
			// Every further write would fail the same way.
			r.pulls.requeue(repo, pulls)
			skipped++
			continue
		}
		if err := pr.RecordPulls(ctx, repo, pulls); err != nil {
			r.pulls.requeue(repo, pulls)
			errs = append(errs, err) // the stores name the repository
		}
	}
	if skipped > 0 {
		errs = append(errs, fmt.Errorf("record pulls of %d more repositories: %w", skipped, ctx.Err()))
	}
	return errors.Join(errs...)
}

// requeue puts back pulls of repo that were not written, keeping the later
// time where a pull was noted again meanwhile.
func (l *pullLog) requeue(repo string, pulls map[string]time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]map[string]time.Time{}
	}
	cur := l.m[repo]
	if cur == nil {
		l.m[repo] = pulls
		return
	}
	for d, t := range pulls {
		if t.After(cur[d]) {
			cur[d] = t
		}
	}
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
