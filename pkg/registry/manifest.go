package registry

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berthreg/berth/pkg/storage"
)

// Media types of the manifests the registry accepts: image manifests and
// indexes, OCI and Docker schema 2. Any other media type is refused on
// push.
const (
	MediaTypeOCIManifest    = v1.MediaTypeImageManifest
	MediaTypeOCIIndex       = v1.MediaTypeImageIndex
	MediaTypeDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaTypeDockerSchema1  = "application/vnd.docker.distribution.manifest.v1+json"
	mediaTypeDockerSigned   = "application/vnd.docker.distribution.manifest.v1+prettyjws"
	mediaTypeOCIEmptyConfig = "application/vnd.oci.empty.v1+json"
)

// MaxManifestSize is the largest manifest accepted (4 MiB, as the spec suggests).
const MaxManifestSize = 4 << 20

// manifestDoc is the union of the fields of image manifests and indexes
// (OCI and Docker) that the registry inspects.
type manifestDoc struct {
	SchemaVersion *int              `json:"schemaVersion"`
	MediaType     string            `json:"mediaType,omitempty"`
	ArtifactType  string            `json:"artifactType,omitempty"`
	Config        *v1.Descriptor    `json:"config,omitempty"`
	Layers        []v1.Descriptor   `json:"layers,omitempty"`
	Manifests     []v1.Descriptor   `json:"manifests,omitempty"`
	Subject       *v1.Descriptor    `json:"subject,omitempty"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// parsedManifest is a validated manifest with what the registry needs of it.
type parsedManifest struct {
	mediaType    string
	artifactType string
	subject      digest.Digest
	annotations  map[string]string
	blobs        []v1.Descriptor // config and layers that must exist as blobs
	children     []v1.Descriptor // manifests an index refers to
}

// isIndex reports whether mediaType is an index or manifest list.
func isIndex(mediaType string) bool {
	return mediaType == MediaTypeOCIIndex || mediaType == MediaTypeDockerList
}

// isImage reports whether mediaType is an image manifest.
func isImage(mediaType string) bool {
	return mediaType == MediaTypeOCIManifest || mediaType == MediaTypeDockerManifest
}

// nonDistributable reports layers whose content lives elsewhere (foreign
// layers): the registry need not hold them.
func nonDistributable(mediaType string) bool {
	return strings.Contains(mediaType, ".nondistributable.") ||
		strings.Contains(mediaType, ".foreign.")
}

// ManifestMediaType validates a manifest as PutManifest does and returns
// its media type: contentType's, else the one the document gives or
// implies.
func ManifestMediaType(contentType string, body []byte) (string, error) {
	p, err := parseManifest(contentType, body)
	if err != nil {
		return "", err
	}
	return p.mediaType, nil
}

// pushable refuses what a client may not push: any media type but image
// manifests and indexes. It is checked for clients' pushes only (see
// PushManifest): a mirror stores what upstream serves, and stored content
// is parsed as it is (rebuild, collection), so a document an earlier
// version accepted stays readable.
func (p *parsedManifest) pushable() error {
	if !isImage(p.mediaType) && !isIndex(p.mediaType) {
		return fmt.Errorf("%w: media type %q is not a manifest or index media type", ErrManifestInvalid, p.mediaType)
	}
	return nil
}

// parseManifest validates body sent with Content-Type contentType.
func parseManifest(contentType string, body []byte) (*parsedManifest, error) {
	var doc manifestDoc
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("%w: not valid JSON: %v", ErrManifestInvalid, err)
	}
	mt := contentType
	if i := strings.IndexByte(mt, ';'); i >= 0 {
		mt = strings.TrimSpace(mt[:i])
	}
	switch {
	case mt == "" && doc.MediaType != "":
		mt = doc.MediaType
	case mt == "" && doc.Manifests != nil:
		mt = MediaTypeOCIIndex
	case mt == "":
		mt = MediaTypeOCIManifest
	case doc.MediaType != "" && doc.MediaType != mt:
		return nil, fmt.Errorf("%w: mediaType %q does not match Content-Type %q", ErrManifestInvalid, doc.MediaType, mt)
	}
	if mt == mediaTypeDockerSchema1 || mt == mediaTypeDockerSigned {
		return nil, fmt.Errorf("%w: Docker schema 1 manifests are not supported", ErrManifestInvalid)
	}
	p := &parsedManifest{mediaType: mt, artifactType: doc.ArtifactType, annotations: doc.Annotations}
	if doc.Subject != nil {
		if err := doc.Subject.Digest.Validate(); err != nil {
			return nil, fmt.Errorf("%w: subject digest: %v", ErrManifestInvalid, err)
		}
		p.subject = doc.Subject.Digest
	}
	switch {
	case isImage(mt):
		if doc.SchemaVersion == nil || *doc.SchemaVersion != 2 {
			return nil, fmt.Errorf("%w: schemaVersion must be 2", ErrManifestInvalid)
		}
		if doc.Config == nil {
			return nil, fmt.Errorf("%w: config descriptor missing", ErrManifestInvalid)
		}
		if p.artifactType == "" && doc.Config.MediaType != mediaTypeOCIEmptyConfig {
			p.artifactType = doc.Config.MediaType
		}
		p.blobs = append(p.blobs, *doc.Config)
		for _, l := range doc.Layers {
			if !nonDistributable(l.MediaType) {
				p.blobs = append(p.blobs, l)
			}
		}
	case isIndex(mt):
		if doc.SchemaVersion == nil || *doc.SchemaVersion != 2 {
			return nil, fmt.Errorf("%w: schemaVersion must be 2", ErrManifestInvalid)
		}
		if doc.Manifests == nil && (doc.Config != nil || doc.Layers != nil) {
			return nil, fmt.Errorf("%w: an image manifest sent as %s", ErrManifestInvalid, mt)
		}
		p.children = doc.Manifests
	}
	for _, d := range append(append([]v1.Descriptor{}, p.blobs...), p.children...) {
		if err := d.Digest.Validate(); err != nil {
			return nil, fmt.Errorf("%w: descriptor digest %q: %v", ErrManifestInvalid, d.Digest, err)
		}
		if !storage.SupportedAlgorithm(d.Digest.Algorithm()) {
			return nil, fmt.Errorf("%w: descriptor digest %s: algorithm %s is not supported", ErrManifestInvalid, d.Digest, d.Digest.Algorithm())
		}
		if d.Size < 0 {
			return nil, fmt.Errorf("%w: descriptor %s has a negative size", ErrManifestInvalid, d.Digest)
		}
	}
	return p, nil
}

// maxReferrerAnnotations bounds the annotations kept in metadata for the
// referrers API (a DynamoDB item holds at most 400 KB).
const maxReferrerAnnotations = 64 << 10

// referrerAnnotations are the annotations metadata keeps: only manifests
// with a subject are listed by the referrers API, and only when the
// annotations are of a reasonable size.
func (p *parsedManifest) referrerAnnotations() map[string]string {
	if p.subject == "" || len(p.annotations) == 0 {
		return nil
	}
	n := 0
	for k, v := range p.annotations {
		n += len(k) + len(v)
	}
	if n > maxReferrerAnnotations {
		return nil
	}
	return p.annotations
}
