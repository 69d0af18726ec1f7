package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/registry"
	"github.com/berthreg/berth/pkg/storage"
)

// startUpload handles POST .../blobs/uploads/: a cross-repository mount, a
// monolithic upload (?digest=), or a new session.
func (s *Server) startUpload(w http.ResponseWriter, r *http.Request, rt route) error {
	ctx := r.Context()
	q := r.URL.Query()
	if m := q.Get("mount"); m != "" {
		if dgst, err := parseDigest(m); err == nil {
			if ok := s.mount(r, rt.Repo, q.Get("from"), dgst); ok {
				return blobCreated(w, rt.Repo, dgst)
			}
		}
		// The spec lets a registry that cannot mount start a session instead.
	}
	if d := q.Get("digest"); d != "" {
		dgst, err := parseDigest(d)
		if err != nil {
			return err
		}
		up, err := s.reg.Store().NewUpload(ctx, rt.Repo)
		if err != nil {
			return err
		}
		defer up.Close()
		// The client never learns this session: end it on any failure,
		// even when the request's context ended with the connection.
		if err := s.appendBody(r, up, -1); err != nil {
			_ = up.Cancel(context.WithoutCancel(ctx))
			return err
		}
		if _, err := up.Commit(ctx, dgst); err != nil {
			_ = up.Cancel(context.WithoutCancel(ctx))
			return err
		}
		s.reg.NoteBlob(ctx, rt.Repo, dgst)
		return blobCreated(w, rt.Repo, dgst)
	}
	up, err := s.reg.Store().NewUpload(ctx, rt.Repo)
	if err != nil {
		return err
	}
	defer up.Close()
	return uploadAccepted(w, rt.Repo, up, http.StatusAccepted)
}

// mount makes dgst of from (or, without from, of any repository holding
// it) visible in repo, reporting success.
func (s *Server) mount(r *http.Request, repo, from string, dgst digest.Digest) bool {
	ctx := r.Context()
	log := zerolog.Ctx(ctx)
	if _, err := s.reg.Store().Stat(ctx, repo, dgst); err == nil {
		return true
	}
	if from == "" {
		found, err := s.reg.FindBlob(ctx, dgst, repo)
		if err != nil {
			log.Debug().Err(err).Str("digest", dgst.String()).Msg("no repository to mount from")
			return false
		}
		from = found
	}
	if from == repo || !registry.ValidName(from) {
		return false
	}
	// A mount reads from: only from a repository the caller may read.
	if s.opts.Auth != nil && len(s.opts.Auth.FilterRepos(r, []string{from})) == 0 {
		log.Debug().Str("from", from).Str("digest", dgst.String()).Msg("mount refused: the caller may not read the source")
		return false
	}
	if err := s.reg.Store().Mount(ctx, from, repo, dgst); err != nil {
		log.Debug().Err(err).Str("from", from).Str("digest", dgst.String()).Msg("mount failed")
		return false
	}
	s.reg.NoteBlob(ctx, repo, dgst)
	return true
}

// patchUpload appends a chunk (with Content-Range) or a stream (without).
func (s *Server) patchUpload(w http.ResponseWriter, r *http.Request, rt route) error {
	up, err := s.reg.Store().Upload(r.Context(), rt.Repo, rt.Ref)
	if err != nil {
		return err
	}
	defer up.Close()
	want, err := checkContentRange(r, rt.Repo, up)
	if err != nil {
		return err
	}
	if err := s.appendBody(r, up, want); err != nil {
		return err
	}
	return uploadAccepted(w, rt.Repo, up, http.StatusAccepted)
}

// putUpload closes a session, with or without a final chunk.
func (s *Server) putUpload(w http.ResponseWriter, r *http.Request, rt route) error {
	ctx := r.Context()
	d := r.URL.Query().Get("digest")
	if d == "" {
		return newError(errcode.ErrorCodeDigestInvalid, "digest query parameter is required to close an upload")
	}
	dgst, err := parseDigest(d)
	if err != nil {
		return err
	}
	up, err := s.reg.Store().Upload(ctx, rt.Repo, rt.Ref)
	if err != nil {
		return err
	}
	defer up.Close()
	want, err := checkContentRange(r, rt.Repo, up)
	if err != nil {
		return err
	}
	if err := s.appendBody(r, up, want); err != nil {
		return err
	}
	if _, err := up.Commit(ctx, dgst); err != nil {
		return err
	}
	s.reg.NoteBlob(ctx, rt.Repo, dgst)
	return blobCreated(w, rt.Repo, dgst)
}

// uploadStatus reports how much of a session has been received.
func (s *Server) uploadStatus(w http.ResponseWriter, r *http.Request, rt route) error {
	up, err := s.reg.Store().Upload(r.Context(), rt.Repo, rt.Ref)
	if err != nil {
		return err
	}
	defer up.Close()
	return uploadAccepted(w, rt.Repo, up, http.StatusNoContent)
}

// cancelUpload discards a session.
func (s *Server) cancelUpload(w http.ResponseWriter, r *http.Request, rt route) error {
	up, err := s.reg.Store().Upload(r.Context(), rt.Repo, rt.Ref)
	if err != nil {
		return err
	}
	defer up.Close()
	if err := up.Cancel(r.Context()); err != nil {
		return err
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// appendBody streams the request body into the session. With want >= 0
// (the length a Content-Range declares) the body must hold exactly want
// bytes: no more are read, and a shorter or longer body is refused. Like a
// body broken off, what was stored before the refusal stays in the session
// (its Range says how much).
func (s *Server) appendBody(r *http.Request, up storage.Upload, want int64) error {
	body := r.Body
	if body == nil {
		body = http.NoBody
	}
	if want < 0 && (body == http.NoBody || r.ContentLength == 0) {
		return nil
	}
	s.metrics.uploads.Inc()
	defer s.metrics.uploads.Dec()
	var src io.Reader = body
	if want >= 0 {
		src = io.LimitReader(body, want)
	}
	// A broken-off body ends the request's context with the connection;
	// what was received is still stored, so the session can be resumed.
	n, err := up.Append(context.WithoutCancel(r.Context()), src)
	if err != nil {
		return fmt.Errorf("receive upload body after %d bytes: %w", n, err)
	}
	if r.ContentLength > 0 && n != r.ContentLength {
		return newError(errcode.ErrorCodeSizeInvalid, fmt.Sprintf("received %d bytes, Content-Length was %d", n, r.ContentLength))
	}
	if want >= 0 && n != want {
		return newError(errcode.ErrorCodeSizeInvalid, fmt.Sprintf("received %d bytes, Content-Range declared %d", n, want))
	}
	if want >= 0 && r.ContentLength < 0 {
		// A body without Content-Length may go on past the range.
		var b [1]byte
		if k, _ := io.ReadFull(body, b[:]); k > 0 {
			return newError(errcode.ErrorCodeSizeInvalid, fmt.Sprintf("the body is longer than the %d bytes Content-Range declared", want))
		}
	}
	return nil
}

// checkContentRange checks a chunk's Content-Range, if any, and returns
// the length it declares (-1 without one). A chunk that does not start
// where the session ends is refused with 416 and the current Range; one
// whose range disagrees with its Content-Length, with 400 SIZE_INVALID.
func checkContentRange(r *http.Request, repo string, up storage.Upload) (int64, error) {
	cr := r.Header.Get("Content-Range")
	if cr == "" {
		return -1, nil
	}
	start, end, err := parseContentRange(cr)
	if err != nil || start != up.Size() {
		e := newError(errcode.ErrorCodeBlobUploadInvalid, fmt.Sprintf("Content-Range %q does not continue the upload at offset %d", cr, up.Size()))
		e.Status = http.StatusRequestedRangeNotSatisfiable
		e.Header = http.Header{}
		e.Header.Set("Location", uploadLocation(repo, up.ID()))
		e.Header.Set("Range", uploadRange(up.Size()))
		e.Header.Set("Docker-Upload-UUID", up.ID())
		return 0, e
	}
	n := end - start + 1
	if r.ContentLength >= 0 && n != r.ContentLength {
		return 0, newError(errcode.ErrorCodeSizeInvalid, fmt.Sprintf("Content-Range %q declares %d bytes, Content-Length is %d", cr, n, r.ContentLength))
	}
	return n, nil
}

// parseContentRange accepts "start-end", "bytes start-end" and "bytes start-end/total".
func parseContentRange(s string) (int64, int64, error) {
	s = strings.TrimSpace(strings.TrimPrefix(s, "bytes"))
	s = strings.TrimPrefix(s, "=")
	if i := strings.IndexByte(s, '/'); i >= 0 {
		s = s[:i]
	}
	a, b, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return 0, 0, errors.New("missing '-'")
	}
	start, err1 := parseOffset(a)
	end, err2 := parseOffset(b)
	if err1 != nil || err2 != nil || end < start {
		return 0, 0, errors.New("malformed range")
	}
	return start, end, nil
}

// parseOffset reads a byte offset: decimal digits only (no sign, no space).
func parseOffset(s string) (int64, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, errors.New("not a byte offset")
	}
	return strconv.ParseInt(s, 10, 64)
}

func uploadLocation(repo, id string) string { return "/v2/" + repo + "/blobs/uploads/" + id }

// uploadRange is the Range header of a session holding size bytes.
func uploadRange(size int64) string {
	if size <= 0 {
		return "0-0"
	}
	return "0-" + itoa(size-1)
}

func uploadAccepted(w http.ResponseWriter, repo string, up storage.Upload, status int) error {
	h := w.Header()
	h.Set("Location", uploadLocation(repo, up.ID()))
	h.Set("Range", uploadRange(up.Size()))
	h.Set("Docker-Upload-UUID", up.ID())
	h.Set("Content-Length", "0")
	w.WriteHeader(status)
	return nil
}

func blobCreated(w http.ResponseWriter, repo string, dgst digest.Digest) error {
	h := w.Header()
	h.Set("Location", "/v2/"+repo+"/blobs/"+dgst.String())
	h.Set("Docker-Content-Digest", dgst.String())
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}
