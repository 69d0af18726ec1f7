// Package api serves the OCI Distribution API v1.1 over a registry.Registry.
// It knows the storage and metadata stores only through their interfaces.
package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/internal/reqinfo"
	"github.com/berthreg/berth/pkg/registry"
)

// Options configures a Server.
type Options struct {
	// Log is the root logger; request fields are added per request.
	Log zerolog.Logger
	// Member names this process in logs (host:port), empty when alone.
	Member string
	// Metrics receives the server's collectors; nil disables /metrics.
	Metrics *prometheus.Registry
	// MetricsPath is where metrics are served (default /metrics).
	MetricsPath string
	// Auth, when set, authenticates and authorises every API request,
	// before it is forwarded and again on the member that serves it.
	Auth Authorizer
	// Sync, when set, mirrors missing content from upstream registries.
	Sync Syncer
	// Cluster, when set, forwards repository requests this member does not
	// own. Nil: a single node serves everything.
	Cluster Forwarder
	// Limits protect against clients that hold resources (see SetLimits).
	Limits Limits
}

// Syncer mirrors content from upstream registries on demand.
type Syncer interface {
	// Manifest runs before a manifest GET or HEAD is answered; missing
	// reports whether the registry lacks repo:ref. It copies the image
	// (with everything it references) when the sync rules match and, for a
	// reference present locally, when its re-check interval has passed. A
	// non-nil manifest is upstream's, to be served while the copy goes on
	// (the registry does not hold it yet); nil means serving the registry's
	// own. Errors matter only when missing is true: they are answered to
	// the client.
	Manifest(ctx context.Context, repo, ref string, missing bool) (*SyncedManifest, error)
	// Referrers runs before a referrers listing of repo@dgst is answered.
	Referrers(ctx context.Context, repo string, dgst digest.Digest) error
	// Blob runs before a GET or HEAD of a blob the registry lacks. It
	// returns the blob when it is being copied from upstream for an image
	// being synced, readable as its bytes arrive; nil means answering from
	// the registry's store.
	Blob(ctx context.Context, repo string, dgst digest.Digest) (SyncedBlob, error)
}

// SyncedManifest is a manifest fetched from upstream and being synced.
type SyncedManifest struct {
	Digest    string
	MediaType string
	Body      []byte
}

// SyncedBlob is a blob being copied from upstream: reads wait for the
// bytes to arrive and fail when the copy does. The caller closes it.
type SyncedBlob interface {
	io.ReadSeekCloser
	// Size is the blob's size.
	Size() int64
	// EndsAt says the response ends at byte end (a Range short of the
	// blob's end): like the blob's last byte, that byte is held back
	// until the digest is verified, so no complete response carries
	// unverified bytes.
	EndsAt(end int64)
}

// Actions a request needs on a repository (zot's names).
const (
	ActionRead   = "read"
	ActionCreate = "create"
	ActionUpdate = "update"
	ActionDelete = "delete"
)

// Authorizer authenticates callers and checks their rights.
type Authorizer interface {
	// Authorize checks that the caller of r may perform action on repo
	// (repo "" for /v2/ and the catalog). When it may not, Authorize writes
	// the answer itself (401 with a challenge, or 403) and returns false.
	Authorize(w http.ResponseWriter, r *http.Request, repo, action string) bool
	// FilterRepos keeps the repositories the caller of r may read.
	FilterRepos(r *http.Request, repos []string) []string
}

// Forwarder is the cluster router as the HTTP layer sees it.
type Forwarder interface {
	// Forward handles the request for repo when another member should serve
	// it (by forwarding or answering an error) and returns true; false means
	// serve it here. local serves the request on this member.
	Forward(w http.ResponseWriter, r *http.Request, repo string, local http.Handler) bool
}

// Server is the HTTP handler of the registry.
type Server struct {
	reg     *registry.Registry
	opts    Options
	metrics *metrics
	ready   atomic.Bool
	mux     *http.ServeMux
	lim     atomic.Pointer[limiter]
	running atomic.Int64 // handlers in ServeHTTP
}

// New returns a Server for reg. It answers /readyz with 503 until SetReady.
func New(reg *registry.Registry, opts Options) *Server {
	if opts.MetricsPath == "" {
		opts.MetricsPath = "/metrics"
	}
	s := &Server{reg: reg, opts: opts, metrics: newMetrics(opts.Metrics)}
	s.SetLimits(opts.Limits)
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("/livez", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	s.mux.HandleFunc("/readyz", s.readyz)
	if opts.Metrics != nil {
		s.mux.Handle(opts.MetricsPath, s.metrics.handler())
	}
	return s
}

// SetReady marks the server ready (or not) for /readyz.
func (s *Server) SetReady(ok bool) { s.ready.Store(ok) }

// Wait waits up to d for the handlers still running to return, and
// reports whether they did. After http.Server.Close, which does not wait
// for them, it lets commits in flight end before the stores close.
func (s *Server) Wait(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for s.running.Load() > 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if !s.ready.Load() {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// ServeHTTP implements http.Handler with request ids, access logs, metrics,
// idle timeouts on the body and the response, and panic recovery around the
// routes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.running.Add(1)
	defer s.running.Add(-1)
	start := time.Now()
	lim := s.lim.Load()
	id := requestID(r)
	w.Header().Set("X-Request-Id", id)
	r.Header.Set("X-Request-Id", id) // kept when the request is forwarded
	rt := parseRoute(r.URL.Path)
	lg := s.opts.Log.With().Str("req_id", id).Str("method", r.Method).Str("path", r.URL.Path)
	if rt.Repo != "" {
		lg = lg.Str("repo", rt.Repo)
	}
	if s.opts.Member != "" {
		lg = lg.Str("member", s.opts.Member)
	}
	base := lg.Logger()
	ctx, info := reqinfo.With(base.WithContext(r.Context()))
	r = r.WithContext(ctx)
	logger := zerolog.Ctx(r.Context())
	rc := http.NewResponseController(w)
	var readIdle, writeIdle *idleDeadline
	if lim.WriteIdle > 0 {
		writeIdle = newIdleDeadline(lim.WriteIdle, rc.SetWriteDeadline)
		if r.ProtoMajor == 1 {
			// An HTTP/1 connection keeps the deadline of its previous request.
			_ = rc.SetWriteDeadline(time.Time{})
		}
		w = &idleWriter{ResponseWriter: w, rc: rc, d: writeIdle}
	}
	if lim.ReadIdle > 0 && r.Body != nil && r.Body != http.NoBody {
		readIdle = newIdleDeadline(lim.ReadIdle, rc.SetReadDeadline)
		r.Body = &idleBody{ReadCloser: r.Body, d: readIdle}
	}
	cw := &countingWriter{ResponseWriter: w}
	body := &countingBody{ReadCloser: r.Body}
	r.Body = body
	defer func() {
		p := recover()
		if p != nil && p != http.ErrAbortHandler {
			logger.Error().Interface("panic", p).Msg("handler panicked")
			if cw.status == 0 {
				writeError(cw, r, fmt.Errorf("panic: %v", p))
			}
			p = nil
		}
		status := cw.status
		ev := logger.Info()
		if rt.Kind == kindNone {
			ev = logger.Debug()
		}
		if readIdle != nil {
			readIdle.stop(time.Time{})
			if readIdle.expired.Load() {
				// Nothing came for the idle timeout: drop the connection
				// rather than answer a client that stopped sending.
				s.metrics.limited.WithLabelValues("read_idle").Inc()
				ev = ev.Str("aborted", "request body idle for "+lim.ReadIdle.String())
				status, p = http.StatusRequestTimeout, http.ErrAbortHandler
			}
		}
		if writeIdle != nil {
			final := time.Time{}
			if r.ProtoMajor == 1 {
				final = time.Now().Add(lim.WriteIdle) // bounds the server's last flush
			}
			writeIdle.stop(final)
			if writeIdle.expired.Load() {
				s.metrics.limited.WithLabelValues("write_idle").Inc()
				ev = ev.Str("aborted", "client took no response data for "+lim.WriteIdle.String())
			}
		}
		switch {
		case p != nil:
			ev = ev.Bool("connection_aborted", true)
			if status == 0 {
				status = statusClientClosed
			}
		case status == 0:
			status = http.StatusOK
		}
		dur := time.Since(start)
		s.metrics.observe(rt.Kind.String(), r.Method, status, body.n, cw.n, dur)
		if o := info.Owner(); o != "" {
			ev = ev.Str("owner", o)
		}
		ev.Int("status", status).Int64("bytes_in", body.n).Int64("bytes_out", cw.n).
			Dur("dur", dur).Msg("request")
		if p != nil {
			panic(p)
		}
	}()
	// API paths bypass ServeMux, which would redirect unclean paths such as
	// /v2/a//b to cleaned ones instead of rejecting the name.
	if r.URL.Path == "/v2" || strings.HasPrefix(r.URL.Path, "/v2/") {
		s.v2(cw, r)
		return
	}
	s.mux.ServeHTTP(cw, r)
}

// statusClientClosed is logged for a request whose connection was dropped
// before any answer (nginx's 499); no client ever receives it.
const statusClientClosed = 499

// v2 dispatches an API request by its parsed route.
func (s *Server) v2(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	rt := parseRoute(r.URL.Path)
	if rt.Kind == kindNone {
		writeError(w, r, unknownEndpoint(r.URL.Path))
		return
	}
	if rt.Kind != kindBase && rt.Kind != kindCatalog && !registry.ValidName(rt.Repo) {
		writeError(w, r, newError(errcode.ErrorCodeNameInvalid, fmt.Sprintf("invalid repository name %q", rt.Repo)))
		return
	}
	release, ok := s.limitUploads(w, r, rt)
	if !ok {
		return
	}
	defer release()
	if s.opts.Auth != nil && !s.opts.Auth.Authorize(w, r, rt.Repo, s.action(r, rt)) {
		return
	}
	if s.opts.Cluster != nil && rt.Repo != "" {
		local := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.serveRoute(w, r, rt) })
		if s.opts.Cluster.Forward(w, r, rt.Repo, local) {
			return
		}
	}
	s.serveRoute(w, r, rt)
}

// unknownEndpoint answers a /v2/ path that is no API route: 404, as
// distribution and zot answer, unless a "." or ".." segment makes it a
// malformed path rather than an unknown one (400 NAME_INVALID, as for the
// names of the API routes).
func unknownEndpoint(path string) *apiError {
	for _, seg := range strings.Split(path, "/") {
		if seg == "." || seg == ".." {
			return newError(errcode.ErrorCodeNameInvalid, "malformed path: dot segments")
		}
	}
	e := newError(errcode.ErrorCodeUnsupported, "no such API endpoint")
	e.Status = http.StatusNotFound
	return e
}

// serveRoute runs the handler of a parsed route on this member.
func (s *Server) serveRoute(w http.ResponseWriter, r *http.Request, rt route) {
	var err error
	switch rt.Kind {
	case kindBase:
		err = s.methods(w, r, rt, map[string]handler{"GET": s.base, "HEAD": s.base})
	case kindCatalog:
		err = s.methods(w, r, rt, map[string]handler{"GET": s.catalog})
	case kindTags:
		err = s.methods(w, r, rt, map[string]handler{"GET": s.tags})
	case kindManifest:
		err = s.methods(w, r, rt, map[string]handler{"GET": s.getManifest, "HEAD": s.getManifest, "PUT": s.putManifest, "DELETE": s.deleteManifest})
	case kindBlob:
		err = s.methods(w, r, rt, map[string]handler{"GET": s.getBlob, "HEAD": s.getBlob, "DELETE": s.deleteBlob})
	case kindUploadStart:
		err = s.methods(w, r, rt, map[string]handler{"POST": s.startUpload})
	case kindUpload:
		err = s.methods(w, r, rt, map[string]handler{"GET": s.uploadStatus, "PATCH": s.patchUpload, "PUT": s.putUpload, "DELETE": s.cancelUpload})
	case kindReferrers:
		err = s.methods(w, r, rt, map[string]handler{"GET": s.referrers})
	}
	if err != nil {
		writeError(w, r, err)
	}
}

// action is what a request does to its repository. A manifest PUT is an
// update when the tag already exists, else a create.
func (s *Server) action(r *http.Request, rt route) string {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		return ActionRead
	case http.MethodDelete:
		if rt.Kind == kindUpload {
			return ActionCreate // cancelling one's own upload
		}
		return ActionDelete
	case http.MethodPut:
		if rt.Kind == kindManifest {
			if _, err := s.reg.Resolve(r.Context(), rt.Repo, rt.Ref); err == nil {
				return ActionUpdate
			}
		}
		return ActionCreate
	default:
		return ActionCreate
	}
}

type handler func(w http.ResponseWriter, r *http.Request, rt route) error

func (s *Server) methods(w http.ResponseWriter, r *http.Request, rt route, m map[string]handler) error {
	h, ok := m[r.Method]
	if !ok {
		e := newError(errcode.ErrorCodeUnsupported, "method "+r.Method+" not allowed on "+rt.Kind.String())
		e.Status = http.StatusMethodNotAllowed
		allowed := make([]string, 0, len(m))
		for k := range m {
			allowed = append(allowed, k)
		}
		sort.Strings(allowed)
		e.Header = http.Header{"Allow": {strings.Join(allowed, ", ")}}
		return e
	}
	return h(w, r, rt)
}

func (s *Server) base(w http.ResponseWriter, r *http.Request, _ route) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", "2")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte("{}"))
	}
	return nil
}

var requestIDRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// requestID reuses a well-formed X-Request-Id (set by a proxy in front or a
// forwarding member) or makes a new one.
func requestID(r *http.Request) string {
	if id := r.Header.Get("X-Request-Id"); requestIDRE.MatchString(id) {
		return id
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
