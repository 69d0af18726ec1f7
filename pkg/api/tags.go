package api

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rs/zerolog"
)

// maxPage caps n in tag and catalog listings.
const maxPage = 10000

// pagination reads n and last; n is -1 when absent.
func pagination(r *http.Request) (int, string, error) {
	q := r.URL.Query()
	n := -1
	if v := q.Get("n"); v != "" {
		i, err := strconv.Atoi(v)
		if err != nil || i < 0 {
			return 0, "", newError(errcode.ErrorCodePaginationNumberInvalid, "n must be a non-negative integer")
		}
		n = min(i, maxPage)
	}
	return n, q.Get("last"), nil
}

// page fetches one more than n to learn whether a Link header is due.
func page(n int, list func(n int) ([]string, error)) ([]string, bool, error) {
	if n < 0 {
		all, err := list(-1)
		return all, false, err
	}
	if n == 0 {
		return []string{}, false, nil
	}
	items, err := list(n + 1)
	if err != nil {
		return nil, false, err
	}
	if len(items) > n {
		return items[:n], true, nil
	}
	return items, false, nil
}

func writeJSON(w http.ResponseWriter, r *http.Request, contentType string, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", itoa(int64(len(body))))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
	return nil
}

func setNextLink(w http.ResponseWriter, path string, n int, last string) {
	q := url.Values{"n": {strconv.Itoa(n)}, "last": {last}}
	w.Header().Set("Link", "<"+path+"?"+q.Encode()+`>; rel="next"`)
}

// tags lists a repository's tags, paginated.
func (s *Server) tags(w http.ResponseWriter, r *http.Request, rt route) error {
	n, last, err := pagination(r)
	if err != nil {
		return err
	}
	tags, more, err := page(n, func(k int) ([]string, error) { return s.reg.Tags(r.Context(), rt.Repo, last, k) })
	if err != nil {
		return err
	}
	if tags == nil {
		tags = []string{}
	}
	if more {
		setNextLink(w, "/v2/"+rt.Repo+"/tags/list", n, tags[len(tags)-1])
	}
	return writeJSON(w, r, "application/json", map[string]any{"name": rt.Repo, "tags": tags})
}

// catalog lists repositories, paginated.
func (s *Server) catalog(w http.ResponseWriter, r *http.Request, _ route) error {
	n, last, err := pagination(r)
	if err != nil {
		return err
	}
	repos, more, err := page(n, func(k int) ([]string, error) {
		if s.opts.Auth == nil {
			return s.reg.Catalog(r.Context(), last, k)
		}
		return s.readableCatalog(r, last, k)
	})
	if err != nil {
		return err
	}
	if repos == nil {
		repos = []string{}
	}
	if more {
		setNextLink(w, "/v2/_catalog", n, repos[len(repos)-1])
	}
	return writeJSON(w, r, "application/json", map[string]any{"repositories": repos})
}

// readableCatalog pages through the catalog keeping only the repositories
// the caller may read, until it has n of them (n<0: all).
func (s *Server) readableCatalog(r *http.Request, last string, n int) ([]string, error) {
	var out []string
	for n < 0 || len(out) < n {
		batch, err := s.reg.Catalog(r.Context(), last, 1000)
		if err != nil {
			return nil, err
		}
		if len(batch) == 0 {
			break
		}
		out = append(out, s.opts.Auth.FilterRepos(r, batch)...)
		last = batch[len(batch)-1]
	}
	if n >= 0 && len(out) > n {
		out = out[:n]
	}
	return out, nil
}

// referrers lists the manifests that name a digest as their subject.
func (s *Server) referrers(w http.ResponseWriter, r *http.Request, rt route) error {
	dgst, err := parseDigest(rt.Ref)
	if err != nil {
		return err
	}
	if s.opts.Sync != nil {
		if err := s.opts.Sync.Referrers(r.Context(), rt.Repo, dgst); abandoned(r, err) {
			return err
		} else if err != nil {
			zerolog.Ctx(r.Context()).Warn().Err(err).Msg("failed to sync referrers; answering with local ones")
		}
	}
	at := r.URL.Query().Get("artifactType")
	list, err := s.reg.Referrers(r.Context(), rt.Repo, dgst, at)
	if err != nil {
		return err
	}
	idx := v1.Index{MediaType: v1.MediaTypeImageIndex, Manifests: make([]v1.Descriptor, 0, len(list))}
	idx.SchemaVersion = 2
	for _, m := range list {
		idx.Manifests = append(idx.Manifests, v1.Descriptor{
			MediaType: m.MediaType, Digest: digest.Digest(m.Digest), Size: m.Size,
			ArtifactType: m.ArtifactType, Annotations: m.Annotations,
		})
	}
	if at != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	return writeJSON(w, r, v1.MediaTypeImageIndex, idx)
}
