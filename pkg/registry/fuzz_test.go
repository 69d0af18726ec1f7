package registry

import (
	"encoding/json"
	"errors"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berthreg/berth/pkg/storage"
)

// validNameByHand is the distribution-spec name grammar written out without
// a regular expression: components of [a-z0-9] runs joined by ".", "_",
// "__" or one or more "-", separated by single slashes.
func validNameByHand(name string) bool {
	if name == "" || len(name) > MaxNameLength {
		return false
	}
	alnum := func(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }
	for _, comp := range strings.Split(name, "/") {
		if comp == "" || !alnum(comp[0]) || !alnum(comp[len(comp)-1]) {
			return false
		}
		for i := 0; i < len(comp); {
			if alnum(comp[i]) {
				i++
				continue
			}
			j := i
			for j < len(comp) && !alnum(comp[j]) {
				j++
			}
			switch sep := comp[i:j]; {
			case sep == ".", sep == "_", sep == "__":
			case strings.Trim(sep, "-") == "":
			default:
				return false
			}
			i = j
		}
	}
	return true
}

// FuzzValidName: ValidName agrees with the grammar written by hand, and a
// valid name is a clean relative path that cannot leave the storage root.
func FuzzValidName(f *testing.F) {
	for _, s := range []string{
		"", "a", "library/alpine", "a/b/c", "a.b_c__d-e---f", "a/../b", "..", ".", "a//b", "/a", "a/",
		"Upper/case", "a_", "_a", "a___b", "a..b", "a-", "a\\b", "a\x00b", "%2e%2e/x", "a/\xff",
		"a/" + strings.Repeat("b", 254), strings.Repeat("a/", 127) + "a", "ß", "a.-b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		got := ValidName(name)
		if want := validNameByHand(name); got != want {
			t.Fatalf("ValidName(%q) = %v, the grammar says %v", name, got, want)
		}
		if !got {
			return
		}
		if path.Clean(name) != name || !filepath.IsLocal(name) || strings.ContainsAny(name, "\\%:\x00 ") {
			t.Fatalf("ValidName(%q) = true, but it is not a clean local path", name)
		}
		for _, el := range strings.Split(name, "/") {
			if el == "." || el == ".." {
				t.Fatalf("ValidName(%q) = true with a dot segment", name)
			}
		}
	})
}

// FuzzParseReference: a reference is a valid tag, a valid digest of a
// supported algorithm, or an error that says which.
func FuzzParseReference(f *testing.F) {
	for _, s := range []string{
		"", "latest", "v1.0", "_x", "-x", ".x", strings.Repeat("a", 128), strings.Repeat("a", 129),
		"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		"sha512:" + strings.Repeat("ab", 64), "sha256:E3B0", "sha256:abc", "md5:d41d8cd98f00b204e9800998ecf8427e",
		"sha384:" + strings.Repeat("0", 96), "a:b", "tag with space", "\xff", "..", "a/b", "sha256+b64:abcd",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		d, tag, err := ParseReference(ref)
		if err != nil {
			if d != "" || tag != "" {
				t.Fatalf("ParseReference(%q) = %q, %q with error %v", ref, d, tag, err)
			}
			if !errors.Is(err, ErrTagInvalid) && !errors.Is(err, ErrDigestInvalid) {
				t.Fatalf("ParseReference(%q): error %v is neither ErrTagInvalid nor ErrDigestInvalid", ref, err)
			}
			return
		}
		switch {
		case tag != "" && d == "":
			if tag != ref || !ValidTag(tag) || len(tag) > 128 || strings.Contains(tag, ":") {
				t.Fatalf("ParseReference(%q) = tag %q", ref, tag)
			}
		case d != "" && tag == "":
			if d.String() != ref || d.Validate() != nil || !storage.SupportedAlgorithm(d.Algorithm()) {
				t.Fatalf("ParseReference(%q) = digest %q", ref, d)
			}
			if storage.ValidateDigest(d) != nil {
				t.Fatalf("ParseReference(%q) = digest %q that storage refuses", ref, d)
			}
		default:
			t.Fatalf("ParseReference(%q) = digest %q and tag %q", ref, d, tag)
		}
	})
}

// FuzzParseManifest: parseManifest never panics, never accepts what
// encoding/json rejects, and what it accepts has the media type it was
// sent with and well-formed descriptors.
func FuzzParseManifest(f *testing.F) {
	cfg := v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: digest.FromString("cfg"), Size: 3}
	layer := v1.Descriptor{MediaType: v1.MediaTypeImageLayerGzip, Digest: digest.FromString("l1"), Size: 2}
	foreign := v1.Descriptor{MediaType: "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Digest: digest.FromString("f"), Size: 2}
	child := v1.Descriptor{MediaType: MediaTypeOCIManifest, Digest: digest.FromString("child"), Size: 100}
	subject := &v1.Descriptor{MediaType: MediaTypeOCIManifest, Digest: digest.FromString("subject"), Size: 7}
	image := string(manifestJSON(MediaTypeOCIManifest, cfg, []v1.Descriptor{layer, foreign}, subject, ""))
	index := string(indexJSON(MediaTypeOCIIndex, child))
	for _, s := range []struct{ ct, body string }{
		{MediaTypeOCIManifest, image},
		{"", image},
		{MediaTypeOCIManifest + "; charset=utf-8", image},
		{MediaTypeOCIIndex, image}, // image body, index type
		{MediaTypeOCIIndex, index},
		{"", index},
		{MediaTypeOCIManifest, index},
		{MediaTypeDockerManifest, string(manifestJSON(MediaTypeDockerManifest, cfg, []v1.Descriptor{layer}, nil, ""))},
		{MediaTypeDockerList, string(indexJSON(MediaTypeDockerList, child))},
		{"application/octet-stream", image},
		{"application/vnd.example+json", `{"anything":[1,2,3]}`},
		{mediaTypeDockerSigned, `{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[]}`},
		{MediaTypeOCIManifest, `{"schemaVersion":2,"config":{"digest":"sha256:nope","size":2},"layers":[]}`},
		{MediaTypeOCIManifest, `{"schemaVersion":2,"config":{"digest":"` + cfg.Digest.String() + `","size":-1}}`},
		{MediaTypeOCIIndex, `{"schemaVersion":2,"manifests":[{"digest":"md5:00"}]}`},
		{MediaTypeOCIManifest, `{"schemaVersion":"2"}`},
		{MediaTypeOCIManifest, `{"schemaVersion":2,`},
		{MediaTypeOCIManifest, `null`},
		{MediaTypeOCIManifest, `[]`},
		{MediaTypeOCIManifest, "{\"schemaVersion\":2,\"annotations\":{\"\xff\":\"\xfe\"}}"},
		{MediaTypeOCIManifest, `{"schemaVersion":2} {}`},
		{";", `{}`},
		{" ", `{}`},
	} {
		f.Add(s.ct, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		p, err := parseManifest(contentType, body)
		if err != nil {
			if p != nil {
				t.Fatalf("parseManifest returned a manifest with error %v", err)
			}
			if !errors.Is(err, ErrManifestInvalid) {
				t.Fatalf("parseManifest error %v is not ErrManifestInvalid", err)
			}
			return
		}
		if !json.Valid(body) {
			t.Fatalf("parseManifest accepted invalid JSON %q", body)
		}
		var doc manifestDoc
		if err := json.Unmarshal(body, &doc); err != nil {
			t.Fatalf("parseManifest accepted %q, which json.Unmarshal refuses: %v", body, err)
		}
		mt := p.mediaType
		if mt == "" || mt == mediaTypeDockerSchema1 || mt == mediaTypeDockerSigned {
			t.Fatalf("parseManifest(%q, %q) accepted media type %q", contentType, body, mt)
		}
		if doc.MediaType != "" && mt != doc.MediaType {
			t.Fatalf("parseManifest(%q, %q): media type %q, but the body says %q", contentType, body, mt, doc.MediaType)
		}
		if contentType != "" && !strings.Contains(contentType, ";") && mt != contentType {
			t.Fatalf("parseManifest(%q, %q): media type %q, not the Content-Type", contentType, body, mt)
		}
		if isImage(mt) || isIndex(mt) {
			if doc.SchemaVersion == nil || *doc.SchemaVersion != 2 {
				t.Fatalf("parseManifest(%q, %q) accepted schemaVersion %v", contentType, body, doc.SchemaVersion)
			}
		}
		if isImage(mt) && (len(p.blobs) == 0 || doc.Config == nil || p.blobs[0].Digest != doc.Config.Digest) {
			t.Fatalf("parseManifest(%q, %q): image without its config among the blobs", contentType, body)
		}
		if !isImage(mt) && len(p.blobs) != 0 || !isIndex(mt) && len(p.children) != 0 {
			t.Fatalf("parseManifest(%q, %q): %s with blobs %v and children %v", contentType, body, mt, p.blobs, p.children)
		}
		for _, d := range append(append([]v1.Descriptor{}, p.blobs...), p.children...) {
			if d.Digest.Validate() != nil || d.Size < 0 {
				t.Fatalf("parseManifest(%q, %q) accepted descriptor %+v", contentType, body, d)
			}
		}
		if len(p.blobs) > 1 {
			for _, l := range p.blobs[1:] {
				if nonDistributable(l.MediaType) {
					t.Fatalf("parseManifest(%q, %q) requires non-distributable layer %s", contentType, body, l.Digest)
				}
			}
		}
		if p.subject != "" && p.subject.Validate() != nil {
			t.Fatalf("parseManifest(%q, %q) accepted subject %q", contentType, body, p.subject)
		}
		if a := p.referrerAnnotations(); a != nil && p.subject == "" {
			t.Fatalf("parseManifest(%q, %q): referrer annotations without a subject", contentType, body)
		}
	})
}
