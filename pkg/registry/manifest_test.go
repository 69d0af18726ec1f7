package registry

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestParseManifest(t *testing.T) {
	t.Parallel()
	cfg := v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: digest.FromString("cfg"), Size: 3}
	l1 := v1.Descriptor{MediaType: v1.MediaTypeImageLayerGzip, Digest: digest.FromString("l1"), Size: 2}
	foreignOCI := v1.Descriptor{MediaType: "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", Digest: digest.FromString("f1"), Size: 2}
	foreignDocker := v1.Descriptor{MediaType: "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Digest: digest.FromString("f2"), Size: 2}
	child := v1.Descriptor{MediaType: MediaTypeOCIManifest, Digest: digest.FromString("child"), Size: 100}
	subject := &v1.Descriptor{MediaType: MediaTypeOCIManifest, Digest: digest.FromString("subject"), Size: 7}
	empty := v1.Descriptor{MediaType: mediaTypeOCIEmptyConfig, Digest: digest.FromString("{}"), Size: 2}
	bad := func(d v1.Descriptor, dg digest.Digest) v1.Descriptor { d.Digest = dg; return d }
	neg := l1
	neg.Size = -1
	dockerImage := `{"schemaVersion":2,"mediaType":"` + MediaTypeDockerManifest + `","config":` + string(mustJSON(cfg)) +
		`,"layers":[` + string(mustJSON(l1)) + `,` + string(mustJSON(foreignDocker)) + `]}`

	tests := []struct {
		name         string
		contentType  string
		body         string
		wantErr      error // nil: valid
		mediaType    string
		artifactType string
		subject      digest.Digest
		blobs        []v1.Descriptor
		children     []v1.Descriptor
	}{
		{name: "OCI manifest", contentType: MediaTypeOCIManifest,
			body:      string(manifestJSON(MediaTypeOCIManifest, cfg, []v1.Descriptor{l1}, nil, "")),
			mediaType: MediaTypeOCIManifest, artifactType: v1.MediaTypeImageConfig, blobs: []v1.Descriptor{cfg, l1}},
		{name: "OCI manifest without mediaType field", contentType: MediaTypeOCIManifest,
			body:      string(manifestJSON("", cfg, []v1.Descriptor{l1}, nil, "")),
			mediaType: MediaTypeOCIManifest, artifactType: v1.MediaTypeImageConfig, blobs: []v1.Descriptor{cfg, l1}},
		{name: "OCI manifest without Content-Type", contentType: "",
			body:      string(manifestJSON(MediaTypeOCIManifest, cfg, nil, nil, "")),
			mediaType: MediaTypeOCIManifest, artifactType: v1.MediaTypeImageConfig, blobs: []v1.Descriptor{cfg}},
		{name: "neither Content-Type nor mediaType", contentType: "",
			body:      string(manifestJSON("", cfg, nil, nil, "")),
			mediaType: MediaTypeOCIManifest, artifactType: v1.MediaTypeImageConfig, blobs: []v1.Descriptor{cfg}},
		{name: "Content-Type parameters", contentType: MediaTypeOCIManifest + "; charset=utf-8",
			body:      string(manifestJSON(MediaTypeOCIManifest, cfg, nil, nil, "")),
			mediaType: MediaTypeOCIManifest, artifactType: v1.MediaTypeImageConfig, blobs: []v1.Descriptor{cfg}},
		{name: "artifact with explicit artifactType", contentType: MediaTypeOCIManifest,
			body:      string(manifestJSON(MediaTypeOCIManifest, empty, []v1.Descriptor{l1}, subject, "application/vnd.example")),
			mediaType: MediaTypeOCIManifest, artifactType: "application/vnd.example", subject: subject.Digest, blobs: []v1.Descriptor{empty, l1}},
		{name: "artifact with empty config and no artifactType", contentType: MediaTypeOCIManifest,
			body:      string(manifestJSON(MediaTypeOCIManifest, empty, nil, nil, "")),
			mediaType: MediaTypeOCIManifest, artifactType: "", blobs: []v1.Descriptor{empty}},
		{name: "non-distributable layers skipped", contentType: MediaTypeOCIManifest,
			body:      string(manifestJSON(MediaTypeOCIManifest, cfg, []v1.Descriptor{foreignOCI, l1, foreignDocker}, nil, "")),
			mediaType: MediaTypeOCIManifest, artifactType: v1.MediaTypeImageConfig, blobs: []v1.Descriptor{cfg, l1}},
		{name: "Docker manifest", contentType: MediaTypeDockerManifest, body: dockerImage,
			mediaType: MediaTypeDockerManifest, artifactType: v1.MediaTypeImageConfig, blobs: []v1.Descriptor{cfg, l1}},
		{name: "Docker manifest by mediaType field", contentType: "", body: dockerImage,
			mediaType: MediaTypeDockerManifest, artifactType: v1.MediaTypeImageConfig, blobs: []v1.Descriptor{cfg, l1}},
		{name: "OCI index", contentType: MediaTypeOCIIndex, body: string(indexJSON(MediaTypeOCIIndex, child)),
			mediaType: MediaTypeOCIIndex, children: []v1.Descriptor{child}},
		{name: "OCI index with subject", contentType: MediaTypeOCIIndex,
			body:      `{"schemaVersion":2,"mediaType":"` + MediaTypeOCIIndex + `","manifests":[],"subject":` + string(mustJSON(subject)) + `}`,
			mediaType: MediaTypeOCIIndex, subject: subject.Digest, children: []v1.Descriptor{}},
		{name: "index guessed from manifests", contentType: "", body: `{"schemaVersion":2,"manifests":[` + string(mustJSON(child)) + `]}`,
			mediaType: MediaTypeOCIIndex, children: []v1.Descriptor{child}},
		{name: "Docker manifest list", contentType: MediaTypeDockerList, body: string(indexJSON(MediaTypeDockerList, child)),
			mediaType: MediaTypeDockerList, children: []v1.Descriptor{child}},
		{name: "unknown media type", contentType: "application/vnd.example.thing+json", body: `{"anything":[1,2,3]}`,
			wantErr: ErrManifestInvalid},
		{name: "octet-stream", contentType: "application/octet-stream",
			body: string(manifestJSON("", cfg, []v1.Descriptor{l1}, nil, "")), wantErr: ErrManifestInvalid},
		{name: "config media type", contentType: v1.MediaTypeImageConfig, body: `{"architecture":"amd64","os":"linux"}`,
			wantErr: ErrManifestInvalid},
		{name: "unknown mediaType field without Content-Type", contentType: "",
			body: `{"schemaVersion":2,"mediaType":"application/vnd.example.thing+json"}`, wantErr: ErrManifestInvalid},
		{name: "blank Content-Type", contentType: " ", body: `{}`, wantErr: ErrManifestInvalid},

		{name: "schema 1 signed", contentType: mediaTypeDockerSigned, body: `{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[]}`,
			wantErr: ErrManifestInvalid},
		{name: "schema 1", contentType: mediaTypeDockerSchema1, body: `{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[]}`,
			wantErr: ErrManifestInvalid},
		{name: "schema 1 by mediaType field", contentType: "",
			body: `{"schemaVersion":1,"mediaType":"` + mediaTypeDockerSigned + `","fsLayers":[]}`, wantErr: ErrManifestInvalid},
		{name: "schema 1 without any media type", contentType: "", body: `{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[]}`,
			wantErr: ErrManifestInvalid},
		{name: "mediaType mismatch", contentType: MediaTypeDockerManifest,
			body: string(manifestJSON(MediaTypeOCIManifest, cfg, nil, nil, "")), wantErr: ErrManifestInvalid},
		{name: "index sent as manifest", contentType: MediaTypeOCIManifest,
			body: string(indexJSON(MediaTypeOCIIndex, child)), wantErr: ErrManifestInvalid},
		{name: "not JSON", contentType: MediaTypeOCIManifest, body: `{"schemaVersion":`, wantErr: ErrManifestInvalid},
		{name: "empty", contentType: MediaTypeOCIManifest, body: ``, wantErr: ErrManifestInvalid},
		{name: "JSON array", contentType: MediaTypeOCIManifest, body: `[]`, wantErr: ErrManifestInvalid},
		{name: "missing schemaVersion", contentType: MediaTypeOCIManifest,
			body: `{"mediaType":"` + MediaTypeOCIManifest + `","config":` + string(mustJSON(cfg)) + `}`, wantErr: ErrManifestInvalid},
		{name: "index schemaVersion 3", contentType: MediaTypeOCIIndex,
			body: `{"schemaVersion":3,"mediaType":"` + MediaTypeOCIIndex + `","manifests":[]}`, wantErr: ErrManifestInvalid},
		{name: "missing config", contentType: MediaTypeOCIManifest,
			body: `{"schemaVersion":2,"mediaType":"` + MediaTypeOCIManifest + `","layers":[]}`, wantErr: ErrManifestInvalid},
		{name: "bad config digest", contentType: MediaTypeOCIManifest,
			body: string(manifestJSON(MediaTypeOCIManifest, bad(cfg, "sha256:abc"), nil, nil, "")), wantErr: ErrManifestInvalid},
		{name: "missing config digest", contentType: MediaTypeOCIManifest,
			body: string(manifestJSON(MediaTypeOCIManifest, bad(cfg, ""), nil, nil, "")), wantErr: ErrManifestInvalid},
		{name: "bad layer digest", contentType: MediaTypeOCIManifest,
			body: string(manifestJSON(MediaTypeOCIManifest, cfg, []v1.Descriptor{bad(l1, digest.Digest("sha256:"+strings.Repeat("g", 64)))}, nil, "")), wantErr: ErrManifestInvalid},
		{name: "unknown layer digest algorithm", contentType: MediaTypeOCIManifest,
			body: string(manifestJSON(MediaTypeOCIManifest, cfg, []v1.Descriptor{bad(l1, digest.Digest("md5:"+strings.Repeat("0", 32)))}, nil, "")), wantErr: ErrManifestInvalid},
		{name: "sha384 layer digest", contentType: MediaTypeOCIManifest,
			body: string(manifestJSON(MediaTypeOCIManifest, cfg, []v1.Descriptor{bad(l1, digest.SHA384.FromString("l1"))}, nil, "")), wantErr: ErrManifestInvalid},
		{name: "sha384 config digest", contentType: MediaTypeDockerManifest,
			body: string(manifestJSON(MediaTypeDockerManifest, bad(cfg, digest.SHA384.FromString("cfg")), nil, nil, "")), wantErr: ErrManifestInvalid},
		{name: "sha384 child digest", contentType: MediaTypeOCIIndex,
			body: string(indexJSON(MediaTypeOCIIndex, bad(child, digest.SHA384.FromString("child")))), wantErr: ErrManifestInvalid},
		{name: "sha512 layer digest", contentType: MediaTypeOCIManifest,
			body:      string(manifestJSON(MediaTypeOCIManifest, cfg, []v1.Descriptor{bad(l1, digest.SHA512.FromString("l1"))}, nil, "")),
			mediaType: MediaTypeOCIManifest, artifactType: v1.MediaTypeImageConfig, blobs: []v1.Descriptor{cfg, bad(l1, digest.SHA512.FromString("l1"))}},
		{name: "negative layer size", contentType: MediaTypeOCIManifest,
			body: string(manifestJSON(MediaTypeOCIManifest, cfg, []v1.Descriptor{neg}, nil, "")), wantErr: ErrManifestInvalid},
		{name: "bad child digest", contentType: MediaTypeOCIIndex,
			body: string(indexJSON(MediaTypeOCIIndex, bad(child, "sha256:nope"))), wantErr: ErrManifestInvalid},
		{name: "bad subject digest", contentType: MediaTypeOCIManifest,
			body:    string(manifestJSON(MediaTypeOCIManifest, cfg, nil, &v1.Descriptor{MediaType: MediaTypeOCIManifest, Digest: "sha256:x", Size: 1}, "")),
			wantErr: ErrManifestInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := parseManifest(tt.contentType, []byte(tt.body))
			if err == nil {
				err = p.pushable()
			}
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("parseManifest: %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseManifest: %v", err)
			}
			if p.mediaType != tt.mediaType || p.artifactType != tt.artifactType || p.subject != tt.subject {
				t.Errorf("got mediaType %q artifactType %q subject %q; want %q %q %q",
					p.mediaType, p.artifactType, p.subject, tt.mediaType, tt.artifactType, tt.subject)
			}
			if !slices.EqualFunc(p.blobs, tt.blobs, sameDesc) {
				t.Errorf("blobs %v, want %v", p.blobs, tt.blobs)
			}
			if !slices.EqualFunc(p.children, tt.children, sameDesc) {
				t.Errorf("children %v, want %v", p.children, tt.children)
			}
		})
	}
}

func sameDesc(a, b v1.Descriptor) bool {
	return a.Digest == b.Digest && a.MediaType == b.MediaType && a.Size == b.Size
}

func TestParseManifestAnnotations(t *testing.T) {
	t.Parallel()
	body := `{"schemaVersion":2,"mediaType":"` + MediaTypeOCIIndex + `","manifests":[],"annotations":{"a":"b"}}`
	p, err := parseManifest("", []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if p.annotations["a"] != "b" {
		t.Errorf("annotations %v", p.annotations)
	}
}

func TestNames(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]bool{
		"a": true, "a/b": true, "a.b_c__d-e--f/g": true, "0/1/2": true, "library/ubuntu": true,
		strings.Repeat("a", MaxNameLength):   true,
		"":                                   false,
		strings.Repeat("a", MaxNameLength+1): false,
		"A":                                  false, "a/B": false, "a//b": false, "/a": false, "a/": false, "a/../b": false, "a/./b": false,
		"..": false, "a..b": false, "a___b": false, "-a": false, "a-": false, "_a": false, "a.": false, "a b": false, "a:b": false,
	} {
		if got := ValidName(name); got != want {
			t.Errorf("ValidName(%q) = %v, want %v", name, got, want)
		}
	}
	for tag, want := range map[string]bool{
		"latest": true, "v1.0": true, "_x": true, "A-b_c.d": true, "a" + strings.Repeat("b", 127): true,
		"": false, "-x": false, ".x": false, "a" + strings.Repeat("b", 128): false, "a/b": false, "a:b": false, "a@b": false,
	} {
		if got := ValidTag(tag); got != want {
			t.Errorf("ValidTag(%q) = %v, want %v", tag, got, want)
		}
	}
}

func TestParseReference(t *testing.T) {
	t.Parallel()
	sha := digest.FromString("x")
	sha512 := digest.SHA512.FromString("x")
	tests := []struct {
		ref     string
		dgst    digest.Digest
		tag     string
		wantErr error
	}{
		{"latest", "", "latest", nil},
		{sha.String(), sha, "", nil},
		{sha512.String(), sha512, "", nil},
		{digest.SHA384.FromString("x").String(), "", "", ErrDigestInvalid},
		{"sha256:abc", "", "", ErrTagInvalid},
		{"-bad", "", "", ErrTagInvalid},
		{"", "", "", ErrTagInvalid},
	}
	for _, tt := range tests {
		d, tag, err := ParseReference(tt.ref)
		if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) || d != tt.dgst || tag != tt.tag {
			t.Errorf("ParseReference(%q) = %q, %q, %v; want %q, %q, %v", tt.ref, d, tag, err, tt.dgst, tt.tag, tt.wantErr)
		}
	}
}

// An image manifest body sent with an index media type must not be stored
// as an empty index (its blobs would go unchecked).
func TestParseImageAsIndex(t *testing.T) {
	body := []byte(`{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`)
	for _, mt := range []string{MediaTypeOCIIndex, MediaTypeDockerList} {
		if _, err := parseManifest(mt, body); !errors.Is(err, ErrManifestInvalid) {
			t.Errorf("image manifest sent as %s: err = %v, want ErrManifestInvalid", mt, err)
		}
	}
}

// ManifestMediaType settles the media type of what sync fetches: the one
// given or implied by the document, kept as upstream serves it (other types
// than the four are mirrored as they are).
func TestManifestMediaType(t *testing.T) {
	t.Parallel()
	cfg := v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: digest.FromString("cfg"), Size: 3}
	child := v1.Descriptor{MediaType: MediaTypeOCIManifest, Digest: digest.FromString("child"), Size: 100}
	for _, tt := range []struct {
		contentType, body, want string
	}{
		{MediaTypeOCIManifest, string(manifestJSON(MediaTypeOCIManifest, cfg, nil, nil, "")), MediaTypeOCIManifest},
		{"", string(manifestJSON(MediaTypeOCIManifest, cfg, nil, nil, "")), MediaTypeOCIManifest},
		{"", string(manifestJSON("", cfg, nil, nil, "")), MediaTypeOCIManifest},
		{MediaTypeDockerManifest, string(manifestJSON(MediaTypeDockerManifest, cfg, nil, nil, "")), MediaTypeDockerManifest},
		{"", string(manifestJSON(MediaTypeDockerManifest, cfg, nil, nil, "")), MediaTypeDockerManifest},
		{MediaTypeOCIIndex, string(indexJSON(MediaTypeOCIIndex, child)), MediaTypeOCIIndex},
		{"", string(indexJSON("", child)), MediaTypeOCIIndex},
		{MediaTypeDockerList + "; charset=utf-8", string(indexJSON(MediaTypeDockerList, child)), MediaTypeDockerList},
		{"", string(indexJSON(MediaTypeDockerList, child)), MediaTypeDockerList},
		{"application/vnd.example+json", `{"schemaVersion":2}`, "application/vnd.example+json"},
		{"", `{"schemaVersion":2,"mediaType":"application/vnd.example+json"}`, "application/vnd.example+json"},
		{"", `not json`, ""},
	} {
		got, err := ManifestMediaType(tt.contentType, []byte(tt.body))
		if got != tt.want || (tt.want == "") != errors.Is(err, ErrManifestInvalid) {
			t.Errorf("ManifestMediaType(%q, %.80s) = %q, %v; want %q", tt.contentType, tt.body, got, err, tt.want)
		}
	}
}

// TestOpaqueManifestMirroredNotPushed: a manifest of a media type clients
// may not push (an early OCI artifact manifest) is still stored when a
// mirror copies it, and still parses once stored, for rebuilds and
// collections.
func TestOpaqueManifestMirroredNotPushed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const mt = "application/vnd.oci.artifact.manifest.v1+json"
	body := []byte(`{"mediaType":"` + mt + `","artifactType":"application/vnd.example.sig"}`)
	if _, err := e.reg.PushManifest(t.Context(), "repo", "pushed", mt, body, nil); !errors.Is(err, ErrManifestInvalid) {
		t.Errorf("a client's push: %v, want ErrManifestInvalid", err)
	}
	if got, err := ManifestMediaType(mt, body); err != nil || got != mt {
		t.Errorf("ManifestMediaType for a mirror = %q, %v", got, err)
	}
	d := e.put(t, "repo", "mirrored", mt, body)
	if _, err := e.reg.RebuildRepo(t.Context(), "repo"); err != nil {
		t.Fatal(err)
	}
	if m, err := e.reg.Resolve(t.Context(), "repo", "mirrored"); err != nil || m.Digest != d.Digest.String() || m.MediaType != mt {
		t.Errorf("mirrored opaque manifest after a rebuild: %+v, %v", m, err)
	}
}
