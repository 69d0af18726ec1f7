package cluster

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// fakeClock is a settable clock for hopSigner.now (single goroutine).
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time                 { return c.t }
func (c *fakeClock) add(d time.Duration) *fakeClock { c.t = c.t.Add(d); return c }
func (c *fakeClock) set(t time.Time)                { c.t = t }
func newClock(sec int64) *fakeClock                 { return &fakeClock{t: time.Unix(sec, 0)} }
func signerAt(key []byte, c *fakeClock) *hopSigner {
	s := newHopSigner(key)
	s.now = c.now
	return s
}

const (
	hopMethod = "PUT"
	hopURI    = "/v2/library/alpine/blobs/uploads/abc?digest=sha256%3A00"
	hopFrom   = "10.0.0.1:5000"
	hopTo     = "10.0.0.2:5000"
)

// hopFields splits a header value into its ordered key=value fields.
func hopFields(t *testing.T, v string) []string {
	t.Helper()
	f := strings.Fields(v)
	if len(f) != 7 || f[0] != "v1" {
		t.Fatalf("unexpected header shape %q", v)
	}
	return f
}

// withField replaces field key's value in header v.
func withField(t *testing.T, v, key, val string) string {
	t.Helper()
	f := hopFields(t, v)
	for i, p := range f[1:] {
		if k, _, _ := strings.Cut(p, "="); k == key {
			f[i+1] = key + "=" + val
			return strings.Join(f, " ")
		}
	}
	t.Fatalf("no field %q in %q", key, v)
	return ""
}

func fieldOf(t *testing.T, v, key string) string {
	t.Helper()
	for _, p := range hopFields(t, v)[1:] {
		if k, val, _ := strings.Cut(p, "="); k == key {
			return val
		}
	}
	t.Fatalf("no field %q in %q", key, v)
	return ""
}

func TestHopRoundTrip(t *testing.T) {
	clk := newClock(1_800_000_000)
	sender, receiver := signerAt(testKey, clk), signerAt(testKey, clk)
	for _, fo := range []bool{false, true} {
		v := sender.sign(hopMethod, hopURI, hopFrom, hopTo, fo, "0123456789ab")
		h, err := receiver.verify(hopMethod, hopURI, hopTo, v)
		if err != nil {
			t.Fatalf("verify(sign(failover=%v)) = %v", fo, err)
		}
		if h.From != hopFrom || h.Failover != fo || h.Ring != "0123456789ab" {
			t.Errorf("verify = %+v, want From %q Failover %v Ring 0123456789ab", h, hopFrom, fo)
		}
		if got := fieldOf(t, v, "ts"); got != "1800000000" {
			t.Errorf("ts = %q, want the signer's clock", got)
		}
	}
	// Nonces differ between signatures.
	a, b := sender.sign("GET", "/", hopFrom, hopTo, false, ""), sender.sign("GET", "/", hopFrom, hopTo, false, "")
	if fieldOf(t, a, "nonce") == fieldOf(t, b, "nonce") {
		t.Errorf("two signatures share a nonce: %q, %q", a, b)
	}
	// A member verifying its own signature works (same derived key).
	if _, err := sender.verify("GET", "/", hopTo, a); err != nil {
		t.Errorf("sender verifying its own header: %v", err)
	}
}

func TestHopTampered(t *testing.T) {
	clk := newClock(1_800_000_000)
	sender := signerAt(testKey, clk)
	v := sender.sign(hopMethod, hopURI, hopFrom, hopTo, false, "")
	sig := fieldOf(t, v, "sig")
	flipped := "0" + sig[1:]
	if sig[0] == '0' {
		flipped = "1" + sig[1:]
	}
	tests := []struct {
		name, method, uri, value string
	}{
		{"method", "GET", hopURI, v},
		{"method case", "put", hopURI, v},
		{"uri path", hopMethod, "/v2/library/busybox/blobs/uploads/abc?digest=sha256%3A00", v},
		{"uri query", hopMethod, "/v2/library/alpine/blobs/uploads/abc?digest=sha256%3A01", v},
		{"uri without query", hopMethod, "/v2/library/alpine/blobs/uploads/abc", v},
		{"ts", hopMethod, hopURI, withField(t, v, "ts", "1800000001")},
		{"ring", hopMethod, hopURI, withField(t, v, "ring", "0123456789ab")},
		{"nonce", hopMethod, hopURI, withField(t, v, "nonce", strings.Repeat("ab", 12))},
		{"from", hopMethod, hopURI, withField(t, v, "from", "10.0.0.2:5000")},
		{"fo", hopMethod, hopURI, withField(t, v, "fo", "1")},
		{"sig flipped", hopMethod, hopURI, withField(t, v, "sig", flipped)},
		{"sig empty", hopMethod, hopURI, withField(t, v, "sig", "")},
		{"sig uppercase", hopMethod, hopURI, withField(t, v, "sig", strings.ToUpper(sig))},
		{"sig truncated", hopMethod, hopURI, withField(t, v, "sig", sig[:32])},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// A fresh receiver each time, so a rejection is not a replay.
			receiver := signerAt(testKey, clk)
			if _, err := receiver.verify(tc.method, tc.uri, hopTo, tc.value); !errors.Is(err, ErrHopInvalid) {
				t.Fatalf("verify = %v, want ErrHopInvalid", err)
			}
		})
	}
	// The untampered value still verifies.
	if _, err := signerAt(testKey, clk).verify(hopMethod, hopURI, hopTo, v); err != nil {
		t.Fatalf("original value: %v", err)
	}
}

func TestHopOtherKey(t *testing.T) {
	clk := newClock(1_800_000_000)
	other := signerAt([]byte("another16bytekey"), clk)
	receiver := signerAt(testKey, clk)
	for _, fo := range []bool{false, true} {
		v := other.sign(hopMethod, hopURI, hopFrom, hopTo, fo, "")
		if _, err := receiver.verify(hopMethod, hopURI, hopTo, v); !errors.Is(err, ErrHopInvalid) {
			t.Errorf("header signed with another hashKey: verify = %v, want ErrHopInvalid", err)
		}
	}
	// The hop key is derived from, not equal to, the hashKey.
	if string(receiver.key) == string(testKey) {
		t.Error("hop HMAC key equals the raw hashKey")
	}
}

func TestHopReplay(t *testing.T) {
	clk := newClock(1_800_000_000)
	sender, receiver := signerAt(testKey, clk), signerAt(testKey, clk)
	v := sender.sign(hopMethod, hopURI, hopFrom, hopTo, false, "")
	if _, err := receiver.verify(hopMethod, hopURI, hopTo, v); err != nil {
		t.Fatalf("first verify: %v", err)
	}
	for _, d := range []time.Duration{0, time.Second, 59 * time.Second} {
		clk.set(time.Unix(1_800_000_000, 0).Add(d))
		if _, err := receiver.verify(hopMethod, hopURI, hopTo, v); !errors.Is(err, ErrHopReplayed) {
			t.Errorf("replay after %s: verify = %v, want ErrHopReplayed", d, err)
		}
	}
	// A rejected (tampered) attempt does not burn the nonce of a genuine one.
	w := sender.sign(hopMethod, hopURI, hopFrom, hopTo, false, "")
	if _, err := receiver.verify(hopMethod, hopURI, hopTo, withField(t, w, "fo", "1")); !errors.Is(err, ErrHopInvalid) {
		t.Fatalf("tampered: %v", err)
	}
	if _, err := receiver.verify(hopMethod, hopURI, hopTo, w); err != nil {
		t.Errorf("genuine value after a tampered copy was rejected: %v", err)
	}
}

func TestHopTimestampWindow(t *testing.T) {
	const base = 1_800_000_000
	tests := []struct {
		skew time.Duration // signer clock minus receiver clock
		ok   bool
	}{
		{0, true},
		{59 * time.Second, true},
		{-59 * time.Second, true},
		{60 * time.Second, true},
		{-60 * time.Second, true},
		{61 * time.Second, false},
		{-61 * time.Second, false},
		{10 * time.Minute, false},
		{-10 * time.Minute, false},
		{-24 * time.Hour, false},
	}
	for _, tc := range tests {
		t.Run(tc.skew.String(), func(t *testing.T) {
			sender := signerAt(testKey, newClock(base).add(tc.skew))
			receiver := signerAt(testKey, newClock(base))
			v := sender.sign(hopMethod, hopURI, hopFrom, hopTo, false, "")
			_, err := receiver.verify(hopMethod, hopURI, hopTo, v)
			switch {
			case tc.ok && err != nil:
				t.Fatalf("skew %s: verify = %v, want ok", tc.skew, err)
			case !tc.ok && !errors.Is(err, ErrHopInvalid):
				t.Fatalf("skew %s: verify = %v, want ErrHopInvalid", tc.skew, err)
			}
		})
	}
}

func TestHopGarbage(t *testing.T) {
	clk := newClock(1_800_000_000)
	good := signerAt(testKey, clk).sign(hopMethod, hopURI, hopFrom, hopTo, false, "")
	f := hopFields(t, good)
	tests := map[string]string{
		"empty":           "",
		"spaces":          "   ",
		"v1 only":         "v1",
		"random":          "8f1c2a7d0e9b4c3a",
		"wrong version":   "v2" + good[2:],
		"no version":      strings.Join(f[1:], " "),
		"extra field":     good + " x=y",
		"duplicated":      good + " " + good,
		"field no equals": strings.Join(append([]string{"v1"}, "ts", f[2], f[3], f[4], f[5]), " "),
		"keys renamed":    strings.NewReplacer("ts=", "tx=").Replace(good),
		"ts not a number": withField(t, good, "ts", "soon"),
		"ts huge":         withField(t, good, "ts", "99999999999999999999999"),
		"only keys":       "v1 ts= nonce= from= fo= sig=",
		"newlines":        strings.ReplaceAll(good, " ", "\n"),
		"binary":          "v1 \x00\x01 \xff\xfe a=b c=d e=f",
	}
	for name, v := range tests {
		t.Run(name, func(t *testing.T) {
			receiver := signerAt(testKey, clk)
			h, err := receiver.verify(hopMethod, hopURI, hopTo, v)
			if name == "newlines" {
				// strings.Fields treats newlines as spaces; same fields, same MAC.
				if err != nil {
					t.Fatalf("verify = %v", err)
				}
				return
			}
			if !errors.Is(err, ErrHopInvalid) {
				t.Fatalf("verify(%q) = %+v, %v; want ErrHopInvalid", v, h, err)
			}
		})
	}
}

// TestHopNonceGenerations checks the two nonce generations: a nonce is kept
// at least as long as its header's timestamp is acceptable, and forgotten
// after that (memory stays bounded).
func TestHopNonceGenerations(t *testing.T) {
	const base = 1_800_000_000
	clk := newClock(base)
	receiver := signerAt(testKey, clk)
	sender := signerAt(testKey, clk)

	a := sender.sign("GET", "/a", hopFrom, hopTo, false, "")
	if _, err := receiver.verify("GET", "/a", hopTo, a); err != nil {
		t.Fatal(err)
	}
	// Just before the first rotation.
	clk.set(time.Unix(base+119, 0))
	b := sender.sign("GET", "/b", hopFrom, hopTo, false, "")
	if _, err := receiver.verify("GET", "/b", hopTo, b); err != nil {
		t.Fatal(err)
	}
	// After the first rotation b is in the previous generation and still
	// refused.
	clk.set(time.Unix(base+121, 0))
	if _, err := receiver.verify("GET", "/b", hopTo, b); !errors.Is(err, ErrHopReplayed) {
		t.Fatalf("replay of b across a rotation: %v, want ErrHopReplayed", err)
	}
	// a's timestamp is now too old: refused as invalid regardless of nonces.
	if _, err := receiver.verify("GET", "/a", hopTo, a); !errors.Is(err, ErrHopInvalid) {
		t.Fatalf("a after 121s: %v, want ErrHopInvalid", err)
	}
	// After the second rotation b's nonce is forgotten, but its timestamp
	// is out of the window, so it still cannot be used.
	clk.set(time.Unix(base+250, 0))
	c := sender.sign("GET", "/c", hopFrom, hopTo, false, "")
	if _, err := receiver.verify("GET", "/c", hopTo, c); err != nil {
		t.Fatal(err)
	}
	receiver.mu.Lock()
	_, inCur := receiver.cur[fieldOf(t, b, "nonce")]
	_, inPrev := receiver.prev[fieldOf(t, b, "nonce")]
	_, aCur := receiver.cur[fieldOf(t, a, "nonce")]
	_, aPrev := receiver.prev[fieldOf(t, a, "nonce")]
	size := len(receiver.cur) + len(receiver.prev)
	receiver.mu.Unlock()
	if inCur || inPrev || aCur || aPrev {
		t.Errorf("old nonces still remembered after two rotations (a: %v/%v, b: %v/%v)", aCur, aPrev, inCur, inPrev)
	}
	if size != 1 {
		t.Errorf("remembering %d nonces, want only c's", size)
	}
	if _, err := receiver.verify("GET", "/b", hopTo, b); !errors.Is(err, ErrHopInvalid) {
		t.Fatalf("b after 250s: %v, want ErrHopInvalid", err)
	}
}

// TestHopReplayNeverAccepted sweeps first-use times and sender clock skews
// and replays every second until the timestamp expires: a replay must never
// be accepted, whatever the rotation phase.
func TestHopReplayNeverAccepted(t *testing.T) {
	const base = 1_800_000_000
	for _, skew := range []int64{-60, -30, 0, 30, 60} {
		for _, first := range []int64{0, 1, 60, 118, 119, 120, 121, 200, 239, 240, 241} {
			clk := newClock(base)
			receiver := signerAt(testKey, clk)
			// Start the rotation schedule at base.
			warm := signerAt(testKey, clk).sign("GET", "/warm", hopFrom, hopTo, false, "")
			if _, err := receiver.verify("GET", "/warm", hopTo, warm); err != nil {
				t.Fatal(err)
			}
			sender := signerAt(testKey, newClock(base+first+skew))
			v := sender.sign("GET", "/x", hopFrom, hopTo, false, "")
			clk.set(time.Unix(base+first, 0))
			if _, err := receiver.verify("GET", "/x", hopTo, v); err != nil {
				t.Fatalf("skew %d first %d: first use: %v", skew, first, err)
			}
			for now := base + first + 1; now <= base+first+skew+62; now++ {
				clk.set(time.Unix(now, 0))
				if _, err := receiver.verify("GET", "/x", hopTo, v); err == nil {
					t.Fatalf("skew %ds, first use at +%ds: replay accepted at +%ds", skew, first, now-base)
				}
			}
		}
	}
}

func TestHopBoundToDestination(t *testing.T) {
	s := newHopSigner(testKey)
	v := s.sign("GET", "/v2/a/x", hopFrom, hopTo, true, "")
	if _, err := newHopSigner(testKey).verify("GET", "/v2/a/x", "10.0.0.3:5000", v); !errors.Is(err, ErrHopInvalid) {
		t.Fatalf("header for %s accepted by another member: %v", hopTo, err)
	}
	if _, err := newHopSigner(testKey).verify("GET", "/v2/a/x", hopTo, v); err != nil {
		t.Fatalf("header rejected by its destination: %v", err)
	}
}
