package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthreg/berth/pkg/cluster"
)

func TestHopHeader(t *testing.T) {
	t.Parallel()
	if hopHeader != cluster.HopHeader {
		t.Errorf("hopHeader = %q, cluster.HopHeader = %q", hopHeader, cluster.HopHeader)
	}
}

// TestIdleDeadline: the deadline moves at most every idle/16 and always
// stays at least idle ahead; clear and stop work, and nothing is set once
// the request ended.
func TestIdleDeadline(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var set []time.Time
	d := newIdleDeadline(time.Hour, func(tm time.Time) error {
		mu.Lock()
		defer mu.Unlock()
		set = append(set, tm)
		return nil
	})
	before := time.Now()
	for range 100 {
		d.extend()
	}
	if len(set) != 1 || set[0].Before(before.Add(time.Hour)) {
		t.Fatalf("after 100 quick extends: %v, want one deadline an hour ahead", set)
	}
	d.clear()
	if len(set) != 2 || !set[1].IsZero() {
		t.Fatalf("clear: %v", set)
	}
	d.clear() // nothing set: nothing to clear
	d.extend()
	if len(set) != 3 || set[2].IsZero() {
		t.Fatalf("extend after clear: %v", set)
	}
	final := time.Now().Add(time.Minute)
	d.stop(final)
	d.extend()
	d.clear()
	if len(set) != 4 || !set[3].Equal(final) {
		t.Fatalf("after stop: %v", set)
	}
}

// TestLimitsWithoutDeadlines: a ResponseWriter without deadline support
// (a recorder) serves normally with the idle limits on.
func TestLimitsWithoutDeadlines(t *testing.T) {
	t.Parallel()
	s := New(nil, Options{Limits: Limits{ReadIdle: time.Second, WriteIdle: time.Second, UploadsPerClient: 1}})
	s.SetReady(true)
	for _, path := range []string{"/livez", "/readyz"} {
		w := httptest.NewRecorder()
		s.ServeHTTP(w, httptest.NewRequest("POST", path, strings.NewReader("body")))
		if w.Code != http.StatusOK {
			t.Errorf("%s: %d", path, w.Code)
		}
	}
}
