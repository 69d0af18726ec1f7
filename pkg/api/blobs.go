package api

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"

	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/registry"
	"github.com/berthreg/berth/pkg/storage"
)

// redirectExpiry is how long a redirect URL for a blob stays valid.
const redirectExpiry = 20 * time.Minute

// parseDigest validates a digest from a path or query.
func parseDigest(s string) (digest.Digest, error) {
	d, err := digest.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%w: %q: %v", registry.ErrDigestInvalid, s, err)
	}
	if !storage.SupportedAlgorithm(d.Algorithm()) {
		return "", fmt.Errorf("%w: algorithm %s not supported", registry.ErrDigestInvalid, d.Algorithm())
	}
	return d, nil
}

// getBlob serves GET and HEAD of a blob, with Range support.
func (s *Server) getBlob(w http.ResponseWriter, r *http.Request, rt route) error {
	dgst, err := parseDigest(rt.Ref)
	if err != nil {
		return err
	}
	if rdr, ok := s.reg.Store().(storage.Redirector); ok && r.Method == http.MethodGet {
		_, err := s.reg.Store().Stat(r.Context(), rt.Repo, dgst)
		if s.syncs(err) {
			if served, serr := s.syncedBlob(w, r, rt.Repo, dgst); served || serr != nil {
				return serr
			}
			_, err = s.reg.Store().Stat(r.Context(), rt.Repo, dgst)
		}
		if err != nil {
			return err
		}
		u, err := rdr.RedirectURL(r.Context(), rt.Repo, dgst, redirectExpiry)
		if err == nil {
			w.Header().Set("Docker-Content-Digest", dgst.String())
			http.Redirect(w, r, u, http.StatusTemporaryRedirect)
			return nil
		}
		if !errors.Is(err, errors.ErrUnsupported) {
			return err
		}
	}
	rd, err := s.reg.Store().Open(r.Context(), rt.Repo, dgst)
	if s.syncs(err) {
		if served, serr := s.syncedBlob(w, r, rt.Repo, dgst); served || serr != nil {
			return serr
		}
		rd, err = s.reg.Store().Open(r.Context(), rt.Repo, dgst)
	}
	if err != nil {
		return err
	}
	defer rd.Close()
	return serveBlob(w, r, dgst, rd.Info().Size, rd.Info().ModTime, rd)
}

// syncs reports whether a blob the store answered err for may come from
// upstream.
func (s *Server) syncs(err error) bool {
	return s.opts.Sync != nil && errors.Is(err, storage.ErrBlobUnknown)
}

// syncedBlob serves a blob the store lacks from the copy in flight from
// upstream, when there is one (a GET may start one). served false with a
// nil error: answer from the store.
func (s *Server) syncedBlob(w http.ResponseWriter, r *http.Request, repo string, dgst digest.Digest) (bool, error) {
	sb, err := s.opts.Sync.Blob(r.Context(), repo, dgst)
	if err != nil || sb == nil {
		return false, err
	}
	defer sb.Close()
	// Settle Range first (as serveBlob does), so that the range whose last
	// byte is held back is the one served, however the header was written.
	if rg := r.Header.Get("Range"); rg != "" {
		spec, err := checkRange(rg, r.Header.Get("If-Range"), `"`+dgst.String()+`"`, time.Time{}, sb.Size())
		if err != nil {
			return true, err
		}
		r.Header.Set("Range", spec)
		if spec == "" {
			r.Header.Del("Range")
		}
	}
	if strings.Contains(r.Header.Get("Range"), ",") {
		// Multiple ranges would be read by ServeContent from a goroutine
		// of its own; a blob in flight is served whole instead (a server
		// may ignore Range).
		r.Header.Del("Range")
	}
	if end, ok := rangeEnd(r.Header.Get("Range"), sb.Size()); ok {
		sb.EndsAt(end)
	}
	rd := &readErr{ReadSeeker: sb}
	fw := &flushWriter{ResponseWriter: w, rc: http.NewResponseController(w)}
	if err := serveBlob(fw, r, dgst, sb.Size(), time.Time{}, rd); err != nil {
		return true, err
	}
	if rd.err != nil && r.Context().Err() == nil {
		// The copy failed under the response: cut it short of its length
		// (a reset stream on HTTP/2), logged as aborted.
		zerolog.Ctx(r.Context()).Error().Err(rd.err).Str("digest", dgst.String()).Msg("copy from upstream failed while streaming the blob")
		panic(http.ErrAbortHandler)
	}
	return true, nil
}

// flushWriter flushes after every write: a blob in flight is read as it
// arrives, and the client should have every byte read so far while the
// next ones are awaited. It hides ReadFrom, so copies go through Write.
type flushWriter struct {
	http.ResponseWriter
	rc *http.ResponseController
}

func (w *flushWriter) WriteHeader(code int) {
	w.ResponseWriter.WriteHeader(code)
	_ = w.rc.Flush() // the client learns the size before the bytes arrive
}

func (w *flushWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	if err == nil {
		err = w.rc.Flush()
	}
	return n, err
}

// readErr remembers the first read error of the content it wraps
// (http.ServeContent drops it).
type readErr struct {
	io.ReadSeeker
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.ReadSeeker.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

// serveBlob answers a blob GET (with Range support) or HEAD from content.
func serveBlob(w http.ResponseWriter, r *http.Request, dgst digest.Digest, size int64, modTime time.Time, content io.ReadSeeker) error {
	etag := `"` + dgst.String() + `"`
	h := w.Header()
	h.Set("Docker-Content-Digest", dgst.String())
	h.Set("ETag", etag)
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Accept-Ranges", "bytes")
	h.Set("Cache-Control", "max-age=31536000")
	if r.Method == http.MethodHead {
		h.Set("Content-Length", itoa(size))
		w.WriteHeader(http.StatusOK)
		return nil
	}
	if rg := r.Header.Get("Range"); rg != "" {
		spec, err := checkRange(rg, r.Header.Get("If-Range"), etag, modTime, size)
		if err != nil {
			return err
		}
		if spec == "" {
			r.Header.Del("Range")
		} else {
			r.Header.Set("Range", spec)
		}
	}
	// ServeContent handles Range (206) and If-None-Match on the ETag.
	http.ServeContent(w, r, "", modTime, content)
	return nil
}

// checkRange settles the Range header h of a GET of a blob of size bytes
// for ServeContent, which answers a malformed or unsatisfiable one in
// plain text and a zero-length suffix ("bytes=-0") with an empty 206. It
// returns the Range to serve: "" to serve the whole blob, as RFC 9110
// says for a Range that is malformed, of another unit, overridden by
// If-Range, or on an empty blob; else the satisfiable ranges of h. When no
// range is satisfiable (past the end, reversed, an empty suffix) it
// answers 416 with the OCI error body and Content-Range "bytes */size".
func checkRange(h, ifRange, etag string, modTime time.Time, size int64) (string, error) {
	unit, spec, ok := strings.Cut(h, "=")
	if !ok || !strings.EqualFold(strings.TrimSpace(unit), "bytes") || !ifRangeHolds(ifRange, etag, modTime) {
		return "", nil
	}
	var keep []string
	asked := false
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue // as ServeContent does
		}
		first, last, ok := strings.Cut(part, "-")
		first, last = strings.TrimSpace(first), strings.TrimSpace(last)
		if !ok {
			return "", nil
		}
		asked = true
		if first == "" { // suffix-range: the last n bytes
			n, err := parseOffset(last)
			if err != nil {
				return "", nil
			}
			if n > 0 {
				keep = append(keep, "-"+last)
			}
			continue
		}
		start, err := parseOffset(first)
		if err != nil {
			return "", nil
		}
		end := int64(-1)
		if last != "" {
			if end, err = parseOffset(last); err != nil {
				return "", nil
			}
		}
		// A reversed range ("bytes=500-0") selects nothing: the OCI
		// conformance suite wants 416 for it, not the whole blob.
		if start < size && (last == "" || end >= start) {
			keep = append(keep, first+"-"+last)
		}
	}
	switch {
	case !asked || size == 0 && len(keep) > 0:
		// Nothing asked for, or only the suffix of an empty blob: the
		// whole (empty) blob is the answer.
		return "", nil
	case len(keep) == 0:
		e := newError(errcode.ErrorCodeRangeInvalid, fmt.Sprintf("range %q selects none of the blob's %d bytes", h, size))
		e.Header = http.Header{"Content-Range": {fmt.Sprintf("bytes */%d", size)}}
		return "", e
	}
	return "bytes=" + strings.Join(keep, ","), nil
}

// ifRangeHolds reports whether a Range applies under If-Range, as
// ServeContent decides it: absent, the blob's (strong) ETag, or exactly
// its modification time.
func ifRangeHolds(ifRange, etag string, modTime time.Time) bool {
	switch {
	case ifRange == "":
		return true
	case strings.HasPrefix(ifRange, `"`):
		return ifRange == etag
	case modTime.IsZero():
		return false
	}
	t, err := http.ParseTime(ifRange)
	return err == nil && t.Unix() == modTime.Unix()
}

// rangeEnd is the last byte of a single "bytes=first-last" Range (as
// checkRange settles it) that stops short of the end of a blob of size
// bytes.
func rangeEnd(h string, size int64) (int64, bool) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, false
	}
	first, last, _ := strings.Cut(strings.TrimSpace(spec), "-")
	start, err1 := strconv.ParseInt(first, 10, 64)
	end, err2 := strconv.ParseInt(last, 10, 64)
	if err1 != nil || err2 != nil || start > end || end >= size-1 {
		return 0, false
	}
	return end, true
}

// deleteBlob removes a blob from the repository. A manifest's content is
// not a blob to delete: that goes through the manifest endpoint.
func (s *Server) deleteBlob(w http.ResponseWriter, r *http.Request, rt route) error {
	dgst, err := parseDigest(rt.Ref)
	if err != nil {
		return err
	}
	if _, err := s.reg.Resolve(r.Context(), rt.Repo, dgst.String()); err == nil {
		e := newError(errcode.ErrorCodeUnsupported, "digest "+dgst.String()+" is a manifest; delete it with DELETE /v2/"+rt.Repo+"/manifests/"+dgst.String())
		e.Status = http.StatusMethodNotAllowed
		e.Header = http.Header{"Allow": {"GET, HEAD"}}
		return e
	}
	if err := s.reg.Store().Delete(r.Context(), rt.Repo, dgst); err != nil {
		return err
	}
	w.Header().Set("Docker-Content-Digest", dgst.String())
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
	return nil
}
