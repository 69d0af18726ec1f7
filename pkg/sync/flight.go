package sync

import (
	"context"
	gosync "sync"
	"time"
)

// flightGroup runs one function per key at a time: callers asking for a
// key already in flight wait for that run's result instead of starting
// another (concurrent misses for one image cause one upstream fetch).
type flightGroup struct {
	mu gosync.Mutex
	m  map[string]*flight
}

type flight struct {
	done chan struct{}
	err  error
}

// do runs fn for key, or joins the run in progress. fn runs through spawn
// (detached from the caller's cancellation, so one client hanging up does
// not fail the others); a caller whose own context ends stops waiting.
func (g *flightGroup) do(ctx context.Context, key string, spawn func(context.Context, func(context.Context)), fn func(context.Context) error) error {
	g.mu.Lock()
	f, ok := g.m[key]
	if !ok {
		if g.m == nil {
			g.m = map[string]*flight{}
		}
		f = &flight{done: make(chan struct{})}
		g.m[key] = f
		spawn(ctx, func(fctx context.Context) {
			f.err = fn(fctx)
			g.mu.Lock()
			delete(g.m, key)
			g.mu.Unlock()
			close(f.done)
		})
	}
	g.mu.Unlock()
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// checkTimes remembers until when a key (a tag, a referrers listing) needs
// no re-check upstream.
type checkTimes struct {
	mu gosync.Mutex
	m  map[string]time.Time
}

// maxChecks bounds the map; expired entries are dropped past it.
const maxChecks = 4096

// recent reports whether key was checked and its interval has not passed.
func (c *checkTimes) recent(key string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	until, ok := c.m[key]
	return ok && now.Before(until)
}

// mark records that key was checked at now and needs no re-check for
// interval.
func (c *checkTimes) mark(key string, now time.Time, interval time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]time.Time{}
	}
	if len(c.m) >= maxChecks {
		for k, t := range c.m {
			if now.After(t) {
				delete(c.m, k)
			}
		}
	}
	c.m[key] = now.Add(interval)
}
