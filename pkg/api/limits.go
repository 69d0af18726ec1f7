package api

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
)

// Limits protect the server from clients that hold its resources: too many
// uploads at once, or transfers that stall. The zero value limits nothing.
type Limits struct {
	// UploadsPerClient bounds the blob upload requests with a body (PATCH,
	// PUT, monolithic POST) in progress from one client IP; one more is
	// answered 429 TOOMANYREQUESTS. Requests forwarded by another cluster
	// member are counted there, by the client's address. 0: no limit.
	UploadsPerClient int
	// ReadIdle is how long a request body read may wait for its next byte;
	// then the request is aborted with its connection (an upload session
	// keeps what was received). It bounds silence, not the transfer: the
	// deadline moves on with every read. 0: no limit.
	ReadIdle time.Duration
	// WriteIdle is how long a response write may wait for the client to
	// take more data; then the connection is closed. Blob downloads send
	// sendfile pieces of idleChunk bytes, each with the whole WriteIdle.
	// 0: no limit.
	WriteIdle time.Duration
}

// hopHeader marks a request forwarded by another cluster member
// (cluster.HopHeader; the cluster router verifies it).
const hopHeader = "X-Berth-Hop"

// idleChunk is the most a download hands to sendfile under one write
// deadline: a client slower than idleChunk per WriteIdle is cut.
const idleChunk = 128 << 10

// uploadRetryAfter is the Retry-After (seconds) of a 429 for too many uploads.
const uploadRetryAfter = "1"

// errClientIdle is reported when a request body stalled past ReadIdle.
var errClientIdle = errors.New("client sent no data within the idle timeout")

// limiter is a Limits in force, with the uploads counted per client IP.
type limiter struct {
	Limits
	mu      sync.Mutex
	uploads map[string]int
}

func newLimiter(l Limits) *limiter {
	return &limiter{Limits: l, uploads: map[string]int{}}
}

// SetLimits puts l in force for the requests that start from now on.
// Uploads already in progress are not counted against the new limit.
func (s *Server) SetLimits(l Limits) { s.lim.Store(newLimiter(l)) }

// acquire counts one more upload from ip, reporting false (and counting
// nothing) when ip is at the limit.
func (l *limiter) acquire(ip string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.uploads[ip] >= l.UploadsPerClient {
		return false
	}
	l.uploads[ip]++
	return true
}

// release ends an upload counted by acquire.
func (l *limiter) release(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.uploads[ip] <= 1 {
		delete(l.uploads, ip)
		return
	}
	l.uploads[ip]--
}

// isUploadTransfer reports a request that streams blob data: a PATCH or
// PUT of a session, or a POST starting one, with a body.
func isUploadTransfer(r *http.Request, rt route) bool {
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return false
	}
	switch rt.Kind {
	case kindUpload:
		return r.Method == http.MethodPatch || r.Method == http.MethodPut
	case kindUploadStart:
		return r.Method == http.MethodPost
	}
	return false
}

// clientIP is the address the request came from, without the port.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// limitUploads counts r against the per-client upload limit. It answers
// 429 and returns false when the client is at the limit; otherwise the
// caller must call the returned release when the request ends.
func (s *Server) limitUploads(w http.ResponseWriter, r *http.Request, rt route) (release func(), ok bool) {
	lim := s.lim.Load()
	if lim.UploadsPerClient <= 0 || !isUploadTransfer(r, rt) {
		return func() {}, true
	}
	if s.opts.Cluster != nil && r.Header.Get(hopHeader) != "" {
		// Counted by the member the client reached; the router rejects a
		// forged hop header.
		return func() {}, true
	}
	ip := clientIP(r)
	if !lim.acquire(ip) {
		s.metrics.limited.WithLabelValues("uploads_per_client").Inc()
		e := newError(errcode.ErrorCodeTooManyRequests,
			fmt.Sprintf("%d uploads from %s are in progress, the most allowed; retry when one ends", lim.UploadsPerClient, ip))
		e.Header = http.Header{"Retry-After": {uploadRetryAfter}}
		writeError(w, r, e)
		return nil, false
	}
	return func() { lim.release(ip) }, true
}

// idleDeadline keeps a read or write deadline of a connection (or HTTP/2
// stream) idle+idle/16 ahead of the last activity. It moves the deadline
// at most every idle/16, so a wait of at least idle is always allowed.
type idleDeadline struct {
	idle time.Duration
	set  func(time.Time) error

	mu      sync.Mutex
	last    time.Time // when the deadline was last moved; zero: not set
	off     bool      // the request ended, or deadlines are not supported
	expired atomic.Bool
}

func newIdleDeadline(idle time.Duration, set func(time.Time) error) *idleDeadline {
	return &idleDeadline{idle: idle, set: set}
}

// extend moves the deadline ahead of now.
func (d *idleDeadline) extend() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.off {
		return
	}
	now := time.Now()
	if !d.last.IsZero() && now.Sub(d.last) < d.idle/16 {
		return
	}
	if err := d.set(now.Add(d.idle + d.idle/16)); err != nil {
		d.off = true // http.ErrNotSupported: nothing to keep
		return
	}
	d.last = now
}

// clear removes the deadline until the next extend.
func (d *idleDeadline) clear() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.off || d.last.IsZero() {
		return
	}
	_ = d.set(time.Time{})
	d.last = time.Time{}
}

// stop ends the wrapper's use of the connection: after the handler returns
// the connection may serve another request. A non-zero final is set as the
// deadline first.
func (d *idleDeadline) stop(final time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.off && !final.IsZero() {
		_ = d.set(final)
	}
	d.off = true
}

// note records whether err is the deadline expiring.
func (d *idleDeadline) note(err error) bool {
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		d.expired.Store(true)
		return true
	}
	return false
}

// idleBody is a request body whose reads may each wait at most the idle
// timeout for data. The cluster router forwards the same body, so it
// covers forwarded uploads too.
type idleBody struct {
	io.ReadCloser
	d *idleDeadline
}

func (b *idleBody) Read(p []byte) (int, error) {
	b.d.extend()
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF:
		// The server now reads ahead to notice a closed connection, which
		// no deadline of ours may cut while the handler works on.
		b.d.clear()
	case b.d.note(err):
		err = fmt.Errorf("%w (%s): %w", errClientIdle, b.d.idle, err)
	}
	return n, err
}

// idleWriter is a response whose writes may each wait at most the idle
// timeout for the client to take data.
type idleWriter struct {
	http.ResponseWriter
	rc *http.ResponseController
	d  *idleDeadline
}

func (w *idleWriter) WriteHeader(code int) {
	if code < 200 {
		w.d.extend() // 1xx responses are written at once
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *idleWriter) Write(p []byte) (int, error) {
	w.d.extend()
	n, err := w.ResponseWriter.Write(p)
	w.d.note(err)
	return n, err
}

func (w *idleWriter) Flush() {
	w.d.extend()
	w.d.note(w.rc.Flush())
}

// ReadFrom keeps sendfile for downloads (an *os.File, bare or in an
// io.LimitedReader as http.ServeContent passes it) by handing it idleChunk
// bytes at a time, each under a fresh deadline.
func (w *idleWriter) ReadFrom(src io.Reader) (int64, error) {
	rf, ok := w.ResponseWriter.(io.ReaderFrom)
	if !ok {
		return io.Copy(writerOnly{w}, src)
	}
	outer, limited := src.(*io.LimitedReader)
	inner := src
	if limited {
		inner = outer.R
	}
	var total int64
	piece := &io.LimitedReader{R: inner}
	for {
		want := int64(idleChunk)
		if limited {
			want = min(want, outer.N)
		}
		if want <= 0 {
			return total, nil
		}
		w.d.extend()
		piece.N = want
		n, err := rf.ReadFrom(piece)
		total += n
		if limited {
			outer.N -= n
		}
		if err != nil {
			w.d.note(err)
			return total, err
		}
		if n < want {
			return total, nil // src is exhausted
		}
	}
}

func (w *idleWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// writerOnly hides ReadFrom so that io.Copy uses Write.
type writerOnly struct{ io.Writer }
