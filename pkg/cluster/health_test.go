package cluster

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// healthRun runs health checks of the given peers in the background until
// the test ends, and records every state change.
type healthRun struct {
	h       *health
	mu      sync.Mutex
	checks  int  // checks recorded
	wentOff bool // a peer was seen down
}

func startHealth(t *testing.T, interval, timeout time.Duration, peers ...string) *healthRun {
	t.Helper()
	hr := &healthRun{h: newHealth(zerolog.Nop())}
	hr.h.onChange = func(_ string, up bool) {
		hr.mu.Lock()
		defer hr.mu.Unlock()
		hr.checks++
		hr.wentOff = hr.wentOff || !up
	}
	tr := &http.Transport{Proxy: nil}
	client := &http.Client{Transport: tr, Timeout: timeout}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		hr.h.run(ctx, interval, timeout, func() []string { return peers }, client, func(p string) string { return "http://" + p })
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		tr.CloseIdleConnections()
	})
	return hr
}

func (hr *healthRun) state() (checks int, wentOff bool) {
	hr.mu.Lock()
	defer hr.mu.Unlock()
	return hr.checks, hr.wentOff
}

// readyz serves /readyz through f and tracks concurrent checks.
type readyz struct {
	inFlight, maxInFlight atomic.Int64
	f                     func(w http.ResponseWriter, r *http.Request)
}

func (z *readyz) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := z.inFlight.Add(1)
	defer z.inFlight.Add(-1)
	for {
		m := z.maxInFlight.Load()
		if n <= m || z.maxInFlight.CompareAndSwap(m, n) {
			break
		}
	}
	z.f(w, r)
}

func TestHealthTimeoutDefault(t *testing.T) {
	for _, tc := range []struct{ interval, want time.Duration }{
		{100 * time.Millisecond, 2 * time.Second},
		{time.Second, 3 * time.Second},
		{5 * time.Second, 15 * time.Second},
	} {
		if got := defaultHealthTimeout(tc.interval); got != tc.want {
			t.Errorf("defaultHealthTimeout(%s) = %s, want %s", tc.interval, got, tc.want)
		}
	}
	members := memberNames(3)
	rt, err := New(Options{Members: members, HashKey: testKey, Self: members[0], Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	if rt.opts.HealthInterval != time.Second || rt.opts.HealthTimeout != 3*time.Second {
		t.Errorf("defaults: interval %s timeout %s, want 1s and 3s", rt.opts.HealthInterval, rt.opts.HealthTimeout)
	}
	rt, err = New(Options{Members: members, HashKey: testKey, Self: members[0], Log: zerolog.Nop(),
		HealthInterval: 100 * time.Millisecond, HealthTimeout: 7 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rt.opts.HealthTimeout != 7*time.Second {
		t.Errorf("explicit HealthTimeout became %s", rt.opts.HealthTimeout)
	}
}

// TestHealthSlowPeerStaysUp: a peer answering slower than the interval, but
// within the timeout, is never marked down, and is not checked again while
// a check is in flight.
func TestHealthSlowPeerStaysUp(t *testing.T) {
	z := &readyz{f: func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(150 * time.Millisecond)
		w.WriteHeader(http.StatusOK)
	}}
	srv := httptest.NewServer(z)
	defer srv.Close()
	peer := srv.Listener.Addr().String()
	hr := startHealth(t, 20*time.Millisecond, 30*time.Second, peer)
	waitFor(t, "three checks of the slow peer", 30*time.Second, func() bool {
		n, _ := hr.state()
		return n >= 3
	})
	if _, off := hr.state(); off || !hr.h.up(peer) {
		t.Errorf("a peer answering in 150ms was marked down with a 20ms interval and a 30s timeout")
	}
	if m := z.maxInFlight.Load(); m != 1 {
		t.Errorf("%d checks of one peer in flight at once, want 1", m)
	}
}

// TestHealthHangingPeerDown: a peer that never answers is marked down after
// two checks have timed out, not after two intervals.
func TestHealthHangingPeerDown(t *testing.T) {
	release := make(chan struct{})
	z := &readyz{f: func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}}
	srv := httptest.NewServer(z)
	defer srv.Close()
	defer close(release)
	peer := srv.Listener.Addr().String()
	const timeout = 200 * time.Millisecond
	start := time.Now()
	hr := startHealth(t, 20*time.Millisecond, timeout, peer)
	waitFor(t, "the hanging peer to be marked down", 30*time.Second, func() bool { return !hr.h.up(peer) })
	if el := time.Since(start); el < 2*timeout {
		t.Errorf("marked down after %s, before two checks could time out (%s each)", el, timeout)
	}
	if m := z.maxInFlight.Load(); m != 1 {
		t.Errorf("%d checks of one peer in flight at once, want 1", m)
	}
}

// TestHealthRefusedPeerDownAtOnce: a refused connection fails the check at
// once, however long the timeout.
func TestHealthRefusedPeerDownAtOnce(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	peer := ln.Addr().String()
	ln.Close()
	hr := startHealth(t, 20*time.Millisecond, time.Hour, peer)
	waitFor(t, "the refusing peer to be marked down", 30*time.Second, func() bool { return !hr.h.up(peer) })
}
