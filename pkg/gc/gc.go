// Package gc collects garbage online: tags outside retention rules,
// manifests nothing keeps, unreferenced blobs and abandoned upload
// sessions. In a cluster each member collects only the repositories it
// owns. Safety against concurrent pushes comes from pkg/registry: every
// deletion is a compare-and-set on the repository's index.json that
// re-checks its condition on the current index, and blobs are deleted under
// a mark that manifest pushes honour (see registry/gcmark.go).
package gc

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/registry"
	"github.com/berthreg/berth/pkg/storage"
)

// Options configures a Collector.
type Options struct {
	// Delay keeps blobs and upload sessions younger than this (gcDelay).
	Delay time.Duration
	// UntaggedDelay keeps untagged manifests younger than this
	// (retention.delay; defaults to Delay).
	UntaggedDelay time.Duration
	// Interval is the time between passes of Run; 0 disables Run.
	Interval time.Duration
	// Policies are the retention policies; nil keeps every tag.
	Policies []Policy
	// DryRun reports what would be removed and removes nothing.
	DryRun bool
	// Owns limits collection to the repositories this member owns; nil
	// means all.
	Owns func(repo string) bool
	// Log receives progress and removals.
	Log zerolog.Logger
	// Metrics receives the collector's metrics; nil disables them.
	Metrics *prometheus.Registry
}

// Action is one removal (or, in a dry run, one that would happen).
type Action struct {
	Repo string `json:"repo"`
	Kind string `json:"kind"` // tag, manifest, blob, upload
	Ref  string `json:"ref"`  // tag, digest or upload id
	Size int64  `json:"size,omitempty"`
}

// Report sums up a pass.
type Report struct {
	Repos    int           `json:"repos"`
	Actions  []Action      `json:"actions"`
	Bytes    int64         `json:"bytes"`
	Duration time.Duration `json:"duration"`
	Errors   []string      `json:"errors,omitempty"`
}

// Collector runs garbage collection passes.
type Collector struct {
	reg     *registry.Registry
	opts    Options
	metrics *metrics
}

// New returns a Collector over reg.
func New(reg *registry.Registry, opts Options) *Collector {
	if opts.UntaggedDelay == 0 {
		opts.UntaggedDelay = opts.Delay
	}
	if opts.Owns == nil {
		opts.Owns = func(string) bool { return true }
	}
	return &Collector{reg: reg, opts: opts, metrics: newMetrics(opts.Metrics)}
}

// Run collects every Interval (never when 0) until ctx ends, and writes
// recorded pulls to metadata every half minute.
func (c *Collector) Run(ctx context.Context) {
	var passC <-chan time.Time
	if c.opts.Interval > 0 {
		pass := time.NewTicker(c.opts.Interval)
		defer pass.Stop()
		passC = pass.C
	}
	flush := time.NewTicker(30 * time.Second)
	defer flush.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if err := c.reg.FlushPulls(fctx); err != nil {
				c.opts.Log.Warn().Err(err).Msg("failed to record pulls at shutdown")
			}
			return
		case <-flush.C:
			// At shutdown the pulls stay queued for the flush above.
			if err := c.reg.FlushPulls(ctx); err != nil && ctx.Err() == nil {
				c.opts.Log.Warn().Err(err).Msg("failed to record pulls")
			}
		case <-passC:
			rep, err := c.Pass(ctx, "", nil)
			c.logPass(ctx, rep, err)
		}
	}
}

// logPass logs the outcome of a pass of Run. A pass cut short by shutdown
// is not a failure: it is logged at info, without the context's error.
func (c *Collector) logPass(ctx context.Context, rep Report, err error) {
	ev, msg := c.opts.Log.Info(), "garbage collection pass"
	switch {
	case err != nil && ctx.Err() != nil:
		msg = "garbage collection pass interrupted by shutdown"
	case err != nil:
		ev = c.opts.Log.Error().Err(err)
	}
	ev.Int("repos", rep.Repos).Int("removed", len(rep.Actions)).Int64("bytes", rep.Bytes).
		Dur("dur", rep.Duration).Msg(msg)
}

// Pass collects every owned repository (or only the one named) once.
// progress, when not nil, receives a line per repository.
func (c *Collector) Pass(ctx context.Context, only string, progress io.Writer) (Report, error) {
	start := time.Now()
	var rep Report
	var repos []string
	err := c.reg.Store().Repos(ctx, func(repo string) error {
		if (only == "" || repo == only) && c.opts.Owns(repo) {
			repos = append(repos, repo)
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("list repositories: %w", err)
	}
	for i, repo := range repos {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		n := len(rep.Actions)
		if err := c.collectRepo(ctx, repo, &rep); err != nil {
			if ctx.Err() != nil {
				// Interrupted, not failed: the caller reports that once.
				return rep, ctx.Err()
			}
			rep.Errors = append(rep.Errors, repo+": "+err.Error())
			c.opts.Log.Warn().Err(err).Str("repo", repo).Msg("failed to collect repository")
		}
		rep.Repos++
		c.metrics.repos.Inc()
		if progress != nil {
			fmt.Fprintf(progress, "[%d/%d] %s: %d removed\n", i+1, len(repos), repo, len(rep.Actions)-n)
		}
	}
	if err := c.collectUploads(ctx, only, &rep); err != nil {
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		rep.Errors = append(rep.Errors, "uploads: "+err.Error())
	}
	rep.Duration = time.Since(start)
	c.metrics.duration.Observe(rep.Duration.Seconds())
	return rep, nil
}

// collectUploads cancels sessions not written for Delay in owned
// repositories; sessions in use by a request are skipped.
func (c *Collector) collectUploads(ctx context.Context, only string, rep *Report) error {
	ul, ok := c.reg.Store().(storage.UploadLister)
	if !ok {
		return nil
	}
	cutoff := time.Now().Add(-c.opts.Delay)
	type sess struct{ repo, id string }
	var old []sess
	err := ul.Uploads(ctx, func(repo, id string, lastActive time.Time) error {
		if lastActive.Before(cutoff) && (only == "" || repo == only) && c.opts.Owns(repo) {
			old = append(old, sess{repo, id})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, s := range old {
		if !c.opts.DryRun {
			up, err := c.reg.Store().Upload(ctx, s.repo, s.id)
			if err != nil {
				continue // finished, cancelled or in use meanwhile
			}
			err = up.Cancel(ctx)
			up.Close()
			if err != nil {
				continue
			}
		}
		c.record(rep, Action{Repo: s.repo, Kind: "upload", Ref: s.id})
	}
	if as, ok := c.reg.Store().(interface {
		AbortStale(context.Context, time.Duration, func(string) bool) (int, error)
	}); ok && !c.opts.DryRun && only == "" {
		// Later than the sessions above, so those are ended (and logged) by
		// the pass; this catches what they miss: leftovers without a
		// readable session and multipart uploads no session refers to.
		if _, err := as.AbortStale(ctx, 2*c.opts.Delay+time.Minute, c.opts.Owns); err != nil {
			return err
		}
	}
	return nil
}

func (c *Collector) record(rep *Report, a Action) {
	rep.Actions = append(rep.Actions, a)
	// Bytes are what storage loses: blobs (a manifest's content is a blob
	// too, counted when that blob goes).
	if a.Kind == "blob" {
		rep.Bytes += a.Size
	}
	if !c.opts.DryRun {
		c.metrics.removed.WithLabelValues(a.Kind).Inc()
		if a.Kind == "blob" {
			c.metrics.bytes.Add(float64(a.Size))
		}
	}
	verb := "removed"
	if c.opts.DryRun {
		verb = "would remove"
	}
	c.opts.Log.Info().Str("repo", a.Repo).Str("kind", a.Kind).Str("ref", a.Ref).Int64("size", a.Size).
		Bool("dry_run", c.opts.DryRun).Msg("garbage collection " + verb + " " + a.Kind)
}
