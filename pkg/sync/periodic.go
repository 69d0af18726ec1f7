package sync

import (
	"context"
	"errors"
	"slices"
	gosync "sync"
	"sync/atomic"
	"time"

	"github.com/berthreg/berth/pkg/storage"
)

// Run syncs, every pollInterval, the content of each registry that has a
// pollInterval and content rules, until ctx ends. The first pass starts at
// once. Only repositories this member owns (by their local name) are
// synced; errors are logged and retried at the next interval.
func (s *Syncer) Run(ctx context.Context) {
	var wg gosync.WaitGroup
	for _, r := range s.regs {
		if r.poll <= 0 || len(r.rules) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTimer(0)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				s.pass(ctx, r)
				t.Reset(r.poll)
			}
		}()
	}
	wg.Wait()
}

// SyncOnce runs one periodic pass over every registry with content rules
// (what Run does every pollInterval).
func (s *Syncer) SyncOnce(ctx context.Context) {
	for _, r := range s.regs {
		if len(r.rules) > 0 {
			s.pass(ctx, r)
		}
	}
}

// pass syncs r's content once.
func (s *Syncer) pass(ctx context.Context, r *upstreamRegistry) {
	start := time.Now()
	log := s.log.With().Str("registry", r.label).Logger()
	targets, err := s.targets(ctx, r)
	if err != nil {
		if ctx.Err() != nil {
			log.Info().Msg("periodic sync stopped by shutdown")
			return
		}
		log.Error().Err(err).Msg("failed to list upstream repositories; retrying at the next interval")
		return
	}
	synced, failed := 0, 0
	for _, src := range targets {
		n, err := s.syncRepo(ctx, src)
		synced += n
		if ctx.Err() != nil {
			log.Info().Int("images", synced).Msg("periodic sync stopped by shutdown")
			return
		}
		if err != nil {
			failed++
			s.logger(ctx, src).Error().Err(err).Msg("failed to sync repository; retrying at the next interval")
		}
	}
	log.Info().Int("repos", len(targets)).Int("images", synced).Int("failed", failed).
		Dur("dur", time.Since(start)).Msg("periodic sync done")
}

// targets lists the repositories of r to sync here: every upstream name a
// rule selects (literal prefixes without listing, globs from the catalog),
// mapped to its local name, that this member owns.
func (s *Syncer) targets(ctx context.Context, r *upstreamRegistry) ([]source, error) {
	var names []string
	needCatalog := false
	for _, rule := range r.rules {
		if rule.Literal() {
			names = append(names, rule.base)
		} else {
			needCatalog = true
		}
	}
	if needCatalog {
		var cat []string
		var err error
		for i, u := range r.mirrors {
			cat, err = u.catalog(ctx)
			if err == nil || !errors.Is(err, storage.ErrUnavailable) || i == len(r.mirrors)-1 {
				break
			}
		}
		if err != nil {
			return nil, err
		}
		names = append(names, cat...)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	var out []source
	for _, up := range names {
		for _, rule := range r.rules {
			local, ok := rule.Local(up)
			if !ok {
				continue
			}
			src := source{reg: r, rule: rule, local: local, upstream: up}
			if s.deps.Owns != nil && !s.deps.Owns(local) {
				s.logger(ctx, src).Debug().Msg("skipping a repository another member owns")
			} else {
				out = append(out, src)
			}
			break // the first rule selecting a name decides
		}
	}
	return out, nil
}

// syncRepo copies src's tags that the tag filters keep and whose digest
// differs locally, returning how many images it copied.
func (s *Syncer) syncRepo(ctx context.Context, src source) (int, error) {
	var tags []string
	var err error
	for i, u := range src.reg.mirrors {
		tags, err = u.tags(ctx, src.upstream)
		if err == nil || !errors.Is(err, storage.ErrUnavailable) || i == len(src.reg.mirrors)-1 {
			break
		}
	}
	if errors.Is(err, errNotFound) {
		s.logger(ctx, src).Debug().Msg("repository not found upstream")
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var synced atomic.Int64
	var errs []error
	for _, tag := range tags {
		if !src.rule.Tag(tag) {
			continue
		}
		key := src.local + ":" + tag
		img := s.image(ctx, src, tag, key, modePeriodic, func(fctx context.Context, img *liveImage) error {
			copied, err := s.syncTag(fctx, src, tag, img)
			if copied {
				synced.Add(1)
			}
			return err
		})
		select {
		case <-img.done:
		case <-ctx.Done():
			return int(synced.Load()), errors.Join(append(errs, ctx.Err())...)
		}
		err := img.err
		switch {
		case err == nil:
			s.checks.mark(key, s.deps.Now(), src.reg.recheck)
		case errors.Is(err, errNotFound):
		case errors.Is(err, errUnsigned):
			s.logger(ctx, src).Debug().Str("tag", tag).Msg("skipping an image without a signature (onlySigned)")
		default:
			errs = append(errs, err)
		}
	}
	return int(synced.Load()), errors.Join(errs...)
}

// syncTag copies src:tag unless the local tag already has upstream's
// digest, reporting whether it copied.
func (s *Syncer) syncTag(ctx context.Context, src source, tag string, img *liveImage) (bool, error) {
	if m, err := s.deps.Registry.Resolve(ctx, src.local, tag); err == nil {
		d, err := s.headDigest(ctx, src, tag)
		if err != nil {
			return false, err
		}
		if d.String() == m.Digest {
			return false, nil
		}
	}
	_, err := s.copyImage(ctx, src, tag, modePeriodic, img)
	return err == nil, err
}
