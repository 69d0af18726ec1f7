package cluster

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// HopHeader marks a request forwarded by a member. Its value is signed with
// a key derived from the cluster's hashKey, binds the method, the request
// URI and a timestamp, and carries a nonce so it cannot be replayed.
const HopHeader = "X-Berth-Hop"

// hopWindow is how far a hop timestamp may be from the receiver's clock.
const hopWindow = 60 * time.Second

// Errors of hop verification.
var (
	ErrHopInvalid  = errors.New("invalid cluster hop header")
	ErrHopReplayed = errors.New("replayed cluster hop header")
)

// hop is a verified hop header.
type hop struct {
	From     string // forwarding member
	Failover bool   // the sender chose this member because better ones were down
	Ring     string // the sender's membership epoch (see Router.epoch)
}

// hopSigner signs and verifies hop headers.
type hopSigner struct {
	key []byte
	now func() time.Time

	// Nonces seen recently, in two generations rotated every 2*hopWindow:
	// a nonce is remembered for at least the window it could be replayed in.
	mu       sync.Mutex
	cur      map[string]struct{}
	prev     map[string]struct{}
	rotateAt time.Time
}

func newHopSigner(hashKey []byte) *hopSigner {
	k := sha256.Sum256(append([]byte("berth cluster hop v1\x00"), hashKey...))
	return &hopSigner{key: k[:], now: time.Now, cur: map[string]struct{}{}, prev: map[string]struct{}{}}
}

func (s *hopSigner) mac(method, uri, ts, nonce, from, to, fo, ring string) string {
	h := hmac.New(sha256.New, s.key)
	for _, p := range []string{method, uri, ts, nonce, from, to, fo, ring} {
		h.Write([]byte(p))
		h.Write([]byte{'\n'})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// sign returns the header value for a request forwarded by from to to.
// Binding the destination stops a captured header being replayed to
// another member. ring is the sender's membership epoch (see ringEpoch):
// it must be the epoch of the member list the destination was chosen from,
// so a receiver can tell a membership change in progress from a misroute.
func (s *hopSigner) sign(method, uri, from, to string, failover bool, ring string) string {
	var nb [12]byte
	_, _ = rand.Read(nb[:])
	nonce := hex.EncodeToString(nb[:])
	ts := strconv.FormatInt(s.now().Unix(), 10)
	fo := "0"
	if failover {
		fo = "1"
	}
	if ring == "" {
		ring = "-"
	}
	return fmt.Sprintf("v1 ts=%s nonce=%s from=%s fo=%s ring=%s sig=%s", ts, nonce, from, fo, ring, s.mac(method, uri, ts, nonce, from, to, fo, ring))
}

// verify checks a header value for method and uri received by member self
// and remembers its nonce.
func (s *hopSigner) verify(method, uri, self, value string) (hop, error) {
	f := map[string]string{}
	parts := strings.Fields(value)
	if len(parts) != 7 || parts[0] != "v1" {
		return hop{}, fmt.Errorf("%w: malformed", ErrHopInvalid)
	}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			return hop{}, fmt.Errorf("%w: malformed", ErrHopInvalid)
		}
		f[k] = v
	}
	want := s.mac(method, uri, f["ts"], f["nonce"], f["from"], self, f["fo"], f["ring"])
	if !hmac.Equal([]byte(want), []byte(f["sig"])) {
		return hop{}, fmt.Errorf("%w: bad signature", ErrHopInvalid)
	}
	sec, err := strconv.ParseInt(f["ts"], 10, 64)
	if err != nil {
		return hop{}, fmt.Errorf("%w: bad timestamp", ErrHopInvalid)
	}
	now := s.now()
	if d := now.Sub(time.Unix(sec, 0)); d > hopWindow || d < -hopWindow {
		return hop{}, fmt.Errorf("%w: timestamp outside the %s window", ErrHopInvalid, hopWindow)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.After(s.rotateAt) {
		s.prev, s.cur = s.cur, map[string]struct{}{}
		s.rotateAt = now.Add(2 * hopWindow)
	}
	n := f["nonce"]
	_, dup1 := s.cur[n]
	_, dup2 := s.prev[n]
	if dup1 || dup2 {
		return hop{}, ErrHopReplayed
	}
	s.cur[n] = struct{}{}
	return hop{From: f["from"], Failover: f["fo"] == "1", Ring: f["ring"]}, nil
}
