package api

import (
	"fmt"
	"net/http"

	"github.com/opencontainers/go-digest"

	"github.com/berthreg/berth/pkg/registry"
	"github.com/berthreg/berth/pkg/storage"
)

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
	rd, err := s.reg.Store().Open(r.Context(), rt.Repo, dgst)
	if err != nil {
		return err
	}
	defer rd.Close()
	h := w.Header()
	h.Set("Docker-Content-Digest", dgst.String())
	h.Set("ETag", `"`+dgst.String()+`"`)
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Accept-Ranges", "bytes")
	h.Set("Cache-Control", "max-age=31536000")
	if r.Method == http.MethodHead {
		h.Set("Content-Length", itoa(rd.Info().Size))
		w.WriteHeader(http.StatusOK)
		return nil
	}
	// ServeContent handles Range (206, 416) and If-None-Match on the ETag.
	http.ServeContent(w, r, "", rd.Info().ModTime, rd)
	return nil
}

// deleteBlob removes a blob from the repository.
func (s *Server) deleteBlob(w http.ResponseWriter, r *http.Request, rt route) error {
	dgst, err := parseDigest(rt.Ref)
	if err != nil {
		return err
	}
	if err := s.reg.Store().Delete(r.Context(), rt.Repo, dgst); err != nil {
		return err
	}
	w.Header().Set("Docker-Content-Digest", dgst.String())
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
	return nil
}
