package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/internal/reqinfo"
)

// Options configures a Router.
type Options struct {
	// Members is every member's host:port, identical on all members.
	Members []string
	// HashKey is the 16-byte SipHash key.
	HashKey []byte
	// Self is this process's entry in Members (see FindSelf).
	Self string
	// TLS is the client TLS configuration towards peers; nil means plain HTTP.
	TLS *tls.Config
	// Log receives cluster events.
	Log zerolog.Logger
	// HealthInterval is how often peers are checked (default 1s).
	HealthInterval time.Duration
	// HealthTimeout bounds one check of a peer's /readyz (default
	// max(3 × HealthInterval, 2s)). It is independent of the interval: a
	// loaded but healthy peer may answer slower than the interval. A
	// refused connection or an error answer is a failed check at once.
	HealthTimeout time.Duration
	// Metrics receives the router's metrics; nil disables them.
	Metrics *prometheus.Registry
	// Transport, when set, replaces the pooled transport towards a member
	// (tests use it to drop or delay traffic).
	Transport func(member string) http.RoundTripper
}

// Router decides, per repository, whether this member serves a request or
// forwards it, streaming, to the owner.
type Router struct {
	opts   Options
	view   atomic.Pointer[view]
	signer *hopSigner
	health *health
	pool   *bufferPool
	mu     sync.Mutex // serialises Update

	forwarded *prometheus.CounterVec // by peer and outcome
	peerUp    *prometheus.GaugeVec
}

// view is one membership: the ring, its epoch and a reverse proxy per
// peer, swapped as one value so that a forward picks its target and signs
// its hop header from the same member list.
type view struct {
	ring    *Ring
	epoch   string // ringEpoch of the ring's members
	proxies map[string]*httputil.ReverseProxy
}

type ctxKey int

const (
	keyRepo ctxKey = iota
	keyFailover
	keyAttempt
	keyIncoming
	keyFailed
	keyEpoch // the epoch of the view a forward's target was chosen from
)

// New returns a Router. Call Start to begin health checks.
func New(opts Options) (*Router, error) {
	if opts.HealthInterval <= 0 {
		opts.HealthInterval = time.Second
	}
	if opts.HealthTimeout <= 0 {
		opts.HealthTimeout = defaultHealthTimeout(opts.HealthInterval)
	}
	rt := &Router{
		opts:   opts,
		signer: newHopSigner(opts.HashKey),
		health: newHealth(opts.Log),
		pool:   &bufferPool{},
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_cluster_forwarded_total", Help: "Requests forwarded to the owning member, by peer and outcome (ok, error, retried).",
		}, []string{"peer", "outcome"}),
		peerUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "berth_cluster_peer_up", Help: "1 when a peer answers its health check, else 0.",
		}, []string{"peer"}),
	}
	rt.health.onChange = func(peer string, up bool) {
		v := 0.0
		if up {
			v = 1
		}
		rt.peerUp.WithLabelValues(peer).Set(v)
	}
	if opts.Metrics != nil {
		opts.Metrics.MustRegister(rt.forwarded, rt.peerUp)
	}
	if err := rt.Update(opts.Members); err != nil {
		return nil, err
	}
	return rt, nil
}

// Start runs peer health checks until ctx ends.
func (rt *Router) Start(ctx context.Context) {
	client := &http.Client{Transport: rt.transport("health"), Timeout: rt.opts.HealthTimeout}
	go rt.health.run(ctx, rt.opts.HealthInterval, rt.opts.HealthTimeout, rt.peers, client, rt.baseURL)
}

// defaultHealthTimeout is the check timeout for interval: three intervals,
// and never under 2s, so a slow answer from a busy peer is not a miss.
func defaultHealthTimeout(interval time.Duration) time.Duration {
	return max(3*interval, 2*time.Second)
}

// Update switches to a new member list (SIGHUP), keeping peer health.
func (rt *Router) Update(members []string) error {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	ring, err := NewRing(members, rt.opts.HashKey)
	if err != nil {
		return err
	}
	found := false
	for _, m := range members {
		found = found || m == rt.opts.Self
	}
	if !found {
		return fmt.Errorf("cluster: this member %s is not in the new member list", rt.opts.Self)
	}
	v := &view{ring: ring, epoch: ringEpoch(members), proxies: map[string]*httputil.ReverseProxy{}}
	old := rt.view.Load()
	for _, m := range members {
		if m == rt.opts.Self {
			continue
		}
		if old != nil && old.proxies[m] != nil {
			v.proxies[m] = old.proxies[m]
		} else {
			v.proxies[m] = rt.newProxy(m)
		}
	}
	rt.view.Store(v)
	return nil
}

// ringEpoch names a member list: the first bytes of its hash.
func ringEpoch(members []string) string {
	h := sha256.Sum256([]byte(strings.Join(members, "\n")))
	return hex.EncodeToString(h[:6])
}

// epoch is the current member list's name.
func (rt *Router) epoch() string { return rt.view.Load().epoch }

// Ring returns the current ring.
func (rt *Router) Ring() *Ring { return rt.view.Load().ring }

// Self returns this member's address.
func (rt *Router) Self() string { return rt.opts.Self }

// Owner returns the member that should serve repo now: the first member of
// its ranking that is up (this member counts as up).
func (rt *Router) Owner(repo string) string {
	for _, m := range rt.Ring().Rank(repo) {
		if m == rt.opts.Self || rt.health.up(m) {
			return m
		}
	}
	return rt.opts.Self
}

// Owns reports whether this member serves repo now (sync and GC use it).
func (rt *Router) Owns(repo string) bool { return rt.Owner(repo) == rt.opts.Self }

func (rt *Router) peers() []string {
	var ps []string
	for _, m := range rt.Ring().Members() {
		if m != rt.opts.Self {
			ps = append(ps, m)
		}
	}
	return ps
}

func (rt *Router) baseURL(member string) string {
	if rt.opts.TLS != nil {
		return "https://" + member
	}
	return "http://" + member
}

// transport is the pooled connection to one member: keep-alive, no overall
// timeout (long transfers must not be cut), idle connections expire.
func (rt *Router) transport(member string) http.RoundTripper {
	if rt.opts.Transport != nil {
		return rt.opts.Transport(member)
	}
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       rt.opts.TLS,
		ForceAttemptHTTP2:     false,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}
}

// Forward serves the cluster's part of a request for repo. It returns false
// when this member should handle the request itself, true when the request
// was forwarded or answered. local is the member's own handler, used when a
// forward finds its target unreachable and this member is next in line.
func (rt *Router) Forward(w http.ResponseWriter, r *http.Request, repo string, local http.Handler) bool {
	if local != nil {
		r = r.WithContext(context.WithValue(r.Context(), localKey{}, local))
	}
	if r.Context().Value(keyIncoming) == nil {
		// ReverseProxy hands its error handler the outgoing request; keep
		// the client's request for retries and the local fallback.
		r = r.WithContext(context.WithValue(r.Context(), keyIncoming, r))
	}
	log := zerolog.Ctx(r.Context())
	if v := r.Header.Get(HopHeader); v != "" {
		h, err := rt.signer.verify(r.Method, r.URL.RequestURI(), rt.opts.Self, v)
		r.Header.Del(HopHeader)
		if err != nil {
			log.Warn().Err(err).Str("remote", r.RemoteAddr).Msg("rejected forwarded request")
			writeError(w, r, http.StatusForbidden, "DENIED", "invalid cluster hop header", 0)
			return true
		}
		cur := rt.view.Load() // one snapshot: ring and epoch agree
		owner := cur.ring.Owner(repo)
		if owner == rt.opts.Self || h.Failover || h.Ring != cur.epoch {
			// The owner, a chosen failover, or a sender with another member
			// list (a resize in progress): serve. Storage and metadata are
			// shared and writes are compare-and-set, so this is safe, and a
			// forwarded request is never forwarded again.
			return false
		}
		log.Warn().Str("from", h.From).Str("owner", owner).Msg("forwarded request for a repository this member does not own")
		writeError(w, r, http.StatusMisdirectedRequest, "UNAVAILABLE",
			fmt.Sprintf("member %s does not own repository %s; its owner is %s", rt.opts.Self, repo, owner), 1)
		return true
	}
	v := rt.view.Load()
	for i, m := range v.ring.Rank(repo) {
		if m == rt.opts.Self {
			if i > 0 {
				log.Debug().Str("owner", v.ring.Owner(repo)).Msg("serving as failover for an unreachable owner")
			}
			return false
		}
		if !rt.health.up(m) {
			continue
		}
		if g, ok := r.Body.(*guardBody); !ok && r.Body != nil && r.Body != http.NoBody {
			r.Body = &guardBody{ReadCloser: r.Body}
		} else if ok {
			r.Body = g
		}
		ctx := context.WithValue(r.Context(), keyRepo, repo)
		ctx = context.WithValue(ctx, keyFailed, new(bool))
		ctx = context.WithValue(ctx, keyFailover, i > 0)
		// Proxies are shared between views: sign with this view's epoch,
		// not whatever list is current when the request goes out.
		ctx = context.WithValue(ctx, keyEpoch, v.epoch)
		reqinfo.SetOwner(r.Context(), m)
		v.proxies[m].ServeHTTP(w, r.WithContext(ctx))
		if failed, _ := ctx.Value(keyFailed).(*bool); failed == nil || !*failed {
			rt.forwarded.WithLabelValues(m, "ok").Inc()
		}
		return true
	}
	writeError(w, r, http.StatusServiceUnavailable, "UNAVAILABLE", "no cluster member can serve repository "+repo, 1)
	return true
}

func (rt *Router) newProxy(member string) *httputil.ReverseProxy {
	target := &url.URL{Scheme: "http", Host: member}
	if rt.opts.TLS != nil {
		target.Scheme = "https"
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
			fo, _ := pr.In.Context().Value(keyFailover).(bool)
			ring, _ := pr.In.Context().Value(keyEpoch).(string)
			pr.Out.Header.Set(HopHeader, rt.signer.sign(pr.Out.Method, pr.Out.URL.RequestURI(), rt.opts.Self, member, fo, ring))
		},
		Transport:     rt.transport(member),
		FlushInterval: -1,
		BufferPool:    rt.pool,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			rt.proxyError(w, r, member, err)
		},
	}
}

// proxyError handles a failed forward: an unreachable owner is marked down
// and a request without a body is retried on the next member; anything
// else is answered 503 with Retry-After.
func (rt *Router) proxyError(w http.ResponseWriter, out *http.Request, member string, err error) {
	r := out
	if in, ok := out.Context().Value(keyIncoming).(*http.Request); ok {
		r = in.WithContext(out.Context())
	}
	if failed, _ := out.Context().Value(keyFailed).(*bool); failed != nil {
		*failed = true
	}
	rt.forwarded.WithLabelValues(member, "error").Inc()
	log := zerolog.Ctx(r.Context())
	if r.Context().Err() != nil {
		log.Debug().Err(err).Msg("client went away during a forwarded request")
		w.WriteHeader(499) // nginx's "client closed request": logged, never read
		return
	}
	log.Warn().Err(err).Str("peer", member).Msg("failed to forward request")
	if unreachable(err) {
		rt.health.markDown(member)
		attempt, _ := r.Context().Value(keyAttempt).(int)
		// The connection failed before the peer answered. A body nobody
		// has read yet, or whose first bytes were kept (a stale pooled
		// connection to a member that just died fails on the first write),
		// goes to the next member again from its start.
		replay := true
		if g, ok := r.Body.(*guardBody); ok {
			var body io.ReadCloser
			body, replay = g.replay()
			if replay {
				r.Body = body
			}
		}
		if repo, ok := r.Context().Value(keyRepo).(string); ok && replay && attempt < len(rt.Ring().Members()) {
			log.Info().Str("peer", member).Msg("retrying on the next member")
			ctx := context.WithValue(r.Context(), keyAttempt, attempt+1)
			r = r.WithContext(ctx)
			if !rt.Forward(w, r, repo, nil) {
				// This member is next in line: hand back to the local handler.
				reqinfo.SetOwner(r.Context(), "")
				if h, ok := r.Context().Value(localKey{}).(http.Handler); ok {
					h.ServeHTTP(w, r)
					return
				}
			} else {
				return
			}
		}
	}
	writeError(w, r, http.StatusServiceUnavailable, "UNAVAILABLE", "the member that owns this repository is unreachable", 1)
}

// guardBody wraps a forwarded request's body: the transport closes the body
// when a dial fails, and a retry needs it open and unread. Close is left to
// the HTTP server, which closes the real body when the handler returns.
//
// It keeps the first replayBytes read, so a forward that failed on a dead
// connection after sending only those can be replayed.
type guardBody struct {
	io.ReadCloser
	read     atomic.Bool
	mu       sync.Mutex
	kept     []byte
	overflow bool
}

// replayBytes bounds the body bytes kept per forwarded request.
const replayBytes = 256 << 10

func (g *guardBody) Read(p []byte) (int, error) {
	n, err := g.ReadCloser.Read(p)
	if n > 0 {
		g.read.Store(true)
		g.mu.Lock()
		if !g.overflow && len(g.kept)+n <= replayBytes {
			g.kept = append(g.kept, p[:n]...)
		} else {
			g.overflow, g.kept = true, nil
		}
		g.mu.Unlock()
	}
	return n, err
}

// replay returns a body that reads again from the start, when possible.
func (g *guardBody) replay() (io.ReadCloser, bool) {
	if !g.read.Load() {
		return g, true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.overflow {
		return nil, false
	}
	rest := struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(g.kept), g.ReadCloser), g.ReadCloser}
	return &guardBody{ReadCloser: rest}, true
}

func (g *guardBody) Close() error { return nil }

// localKey carries the local handler for proxyError's fallback.
type localKey struct{}

// unreachable reports errors that mean the peer did not get the request.
func unreachable(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		// A pooled connection to a member that has died since.
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}

// writeError answers with the OCI error body.
func writeError(w http.ResponseWriter, r *http.Request, status int, code, msg string, retryAfter int) {
	body, _ := json.Marshal(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", fmt.Sprint(len(body)))
	if retryAfter > 0 {
		h.Set("Retry-After", fmt.Sprint(retryAfter))
	}
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// bufferPool reuses 32 KiB copy buffers for the proxies.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v := b.p.Get(); v != nil {
		return *(v.(*[]byte))
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(p []byte) { b.p.Put(&p) }
