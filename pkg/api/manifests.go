package api

import (
	"errors"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/registry"
)

// getManifest serves GET and HEAD of a manifest by tag or digest.
func (s *Server) getManifest(w http.ResponseWriter, r *http.Request, rt route) error {
	ctx := r.Context()
	m, err := s.reg.Resolve(ctx, rt.Repo, rt.Ref)
	if s.opts.Sync != nil && (err == nil || errors.Is(err, registry.ErrManifestUnknown)) {
		missing := err != nil
		synced, serr := s.opts.Sync.Manifest(ctx, rt.Repo, rt.Ref, missing)
		switch {
		case serr != nil && (missing || abandoned(r, serr)):
			return serr
		case serr != nil:
			zerolog.Ctx(ctx).Warn().Err(serr).Msg("failed to re-check tag upstream; serving the local copy")
		case synced != nil:
			if r.Method != http.MethodHead {
				s.reg.NotePull(rt.Repo, synced.Digest)
			}
			return writeManifest(w, r, synced.MediaType, synced.Digest, int64(len(synced.Body)), synced.Body)
		}
		m, err = s.reg.Resolve(ctx, rt.Repo, rt.Ref)
	}
	if err != nil {
		return err
	}
	var body []byte
	if r.Method != http.MethodHead && accepts(r.Header.Values("Accept"), m.MediaType) {
		if body, err = s.reg.ManifestBody(ctx, rt.Repo, m); err != nil {
			return err
		}
		s.reg.NotePull(rt.Repo, m.Digest)
		m.Size = int64(len(body))
	}
	return writeManifest(w, r, m.MediaType, m.Digest, m.Size, body)
}

// writeManifest answers a manifest GET (with body) or HEAD, or 406 when
// the Accept header rules its media type out.
func writeManifest(w http.ResponseWriter, r *http.Request, mediaType, dgst string, size int64, body []byte) error {
	if !accepts(r.Header.Values("Accept"), mediaType) {
		return errors.Join(registry.ErrNotAcceptable,
			errors.New("manifest is "+mediaType+", which the Accept header does not list"))
	}
	h := w.Header()
	h.Set("Content-Type", mediaType)
	h.Set("Docker-Content-Digest", dgst)
	h.Set("ETag", `"`+dgst+`"`)
	h.Set("Content-Length", itoa(size))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
	return nil
}

// accepts reports whether the Accept header values allow mediaType. No
// header, a wildcard, or a header naming no manifest type at all accepts
// everything.
func accepts(values []string, mediaType string) bool {
	listed := false
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil {
				continue
			}
			if mt == "*/*" || mt == "application/*" || mt == mediaType {
				return true
			}
			if strings.Contains(mt, "manifest") || strings.Contains(mt, "index") {
				listed = true
			}
		}
	}
	return !listed
}

// putManifest stores a manifest under a tag or digest (plus ?tag= values).
func (s *Server) putManifest(w http.ResponseWriter, r *http.Request, rt route) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, registry.MaxManifestSize+1))
	if err != nil {
		return err
	}
	res, err := s.reg.PushManifest(r.Context(), rt.Repo, rt.Ref, r.Header.Get("Content-Type"), body, r.URL.Query()["tag"])
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Location", "/v2/"+rt.Repo+"/manifests/"+res.Digest.String())
	h.Set("Docker-Content-Digest", res.Digest.String())
	for _, t := range res.Tags {
		h.Add("OCI-Tag", t)
	}
	if res.Subject != "" {
		h.Set("OCI-Subject", res.Subject.String())
	}
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}

// deleteManifest deletes a tag, or a manifest by digest with all its tags.
func (s *Server) deleteManifest(w http.ResponseWriter, r *http.Request, rt route) error {
	if err := s.reg.DeleteManifest(r.Context(), rt.Repo, rt.Ref); err != nil {
		return err
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
	return nil
}
