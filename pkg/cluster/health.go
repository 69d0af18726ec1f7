package cluster

import (
	"context"
	"io"
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

// run checks every peer each interval until ctx ends. A check may take up
// to timeout, which may be longer than the interval: a peer is checked again
// only once its previous check has ended, and a slow peer does not delay
// the checks of the others.
func (h *health) run(ctx context.Context, interval, timeout time.Duration, peers func() []string, client *http.Client, url func(string) string) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		inFlight = map[string]bool{}
	)
	defer wg.Wait()
	for {
		for _, p := range peers() {
			mu.Lock()
			busy := inFlight[p]
			inFlight[p] = true
			mu.Unlock()
			if busy {
				continue
			}
			wg.Add(1)
			go func(p string) {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(inFlight, p)
					mu.Unlock()
				}()
				ok := check(ctx, client, url(p)+"/readyz", timeout)
				if ctx.Err() == nil {
					h.record(p, ok)
				}
			}(p)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// check reports whether url answers 200 within timeout.
func check(ctx context.Context, client *http.Client, url string, timeout time.Duration) bool {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
