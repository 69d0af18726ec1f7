package cluster

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// health tracks which peers answer. A peer starts up; it goes down after
// failing checks or a failed forward, and up again on its first good check.
type health struct {
	mu    sync.RWMutex
	down  map[string]bool
	log   zerolog.Logger
	fails map[string]int
	// onChange, when set, is told every checked state (under mu).
	onChange func(peer string, up bool)
}

// downAfter is how many consecutive failed checks mark a peer down.
const downAfter = 2

func newHealth(log zerolog.Logger) *health {
	return &health{down: map[string]bool{}, fails: map[string]int{}, log: log}
}

func (h *health) up(member string) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return !h.down[member]
}

// markDown records a failed forward: the peer is down until a check passes.
func (h *health) markDown(member string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.down[member] {
		h.log.Warn().Str("peer", member).Msg("peer marked down after a failed forward")
	}
	h.down[member] = true
	h.fails[member] = downAfter
	if h.onChange != nil {
		h.onChange(member, false)
	}
}

func (h *health) record(member string, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	defer func() {
		if h.onChange != nil {
			h.onChange(member, !h.down[member])
		}
	}()
	if ok {
		if h.down[member] {
			h.log.Info().Str("peer", member).Msg("peer is up")
		}
		h.down[member], h.fails[member] = false, 0
		return
	}
	h.fails[member]++
	if h.fails[member] >= downAfter && !h.down[member] {
		h.down[member] = true
		h.log.Warn().Str("peer", member).Msg("peer is down")
	}
}

// run checks every peer each interval until ctx ends.
func (h *health) run(ctx context.Context, interval time.Duration, peers func() []string, client *http.Client, url func(string) string) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		var wg sync.WaitGroup
		for _, p := range peers() {
			wg.Add(1)
			go func(p string) {
				defer wg.Done()
				cctx, cancel := context.WithTimeout(ctx, interval)
				defer cancel()
				req, _ := http.NewRequestWithContext(cctx, http.MethodGet, url(p)+"/readyz", nil)
				resp, err := client.Do(req)
				ok := err == nil && resp.StatusCode == http.StatusOK
				if resp != nil {
					resp.Body.Close()
				}
				if ctx.Err() == nil {
					h.record(p, ok)
				}
			}(p)
		}
		wg.Wait()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
