package api

import (
	"strings"
)

// kind is the resource a request addresses.
type kind int

const (
	kindNone kind = iota
	kindBase
	kindCatalog
	kindTags
	kindManifest
	kindBlob
	kindUploadStart
	kindUpload
	kindReferrers
)

var kindNames = [...]string{"none", "base", "catalog", "tags", "manifest", "blob", "upload_start", "upload", "referrers"}

func (k kind) String() string { return kindNames[k] }

// route is a parsed /v2/ request path. Repository names contain slashes, so
// the path is matched from its tail.
type route struct {
	Kind kind
	Repo string // repository name, not yet validated
	Ref  string // tag, digest or upload id, not yet validated
}

// parseRoute parses an escaped-free URL path. It returns kindNone for paths
// outside the API.
func parseRoute(path string) route {
	if path == "/v2" || path == "/v2/" {
		return route{Kind: kindBase}
	}
	if !strings.HasPrefix(path, "/v2/") {
		return route{}
	}
	rest := path[len("/v2/"):]
	if rest == "_catalog" {
		return route{Kind: kindCatalog}
	}
	el := strings.Split(rest, "/")
	n := len(el)
	repo := func(k int) string { return strings.Join(el[:n-k], "/") }
	switch {
	case n >= 4 && el[n-3] == "blobs" && el[n-2] == "uploads" && el[n-1] == "":
		return route{Kind: kindUploadStart, Repo: repo(3)}
	case n >= 3 && el[n-2] == "blobs" && el[n-1] == "uploads":
		return route{Kind: kindUploadStart, Repo: repo(2)}
	case n >= 4 && el[n-3] == "blobs" && el[n-2] == "uploads":
		return route{Kind: kindUpload, Repo: repo(3), Ref: el[n-1]}
	case n >= 3 && el[n-2] == "blobs":
		return route{Kind: kindBlob, Repo: repo(2), Ref: el[n-1]}
	case n >= 3 && el[n-2] == "manifests":
		return route{Kind: kindManifest, Repo: repo(2), Ref: el[n-1]}
	case n >= 3 && el[n-2] == "tags" && el[n-1] == "list":
		return route{Kind: kindTags, Repo: repo(2)}
	case n >= 3 && el[n-2] == "referrers":
		return route{Kind: kindReferrers, Repo: repo(2), Ref: el[n-1]}
	}
	return route{}
}
