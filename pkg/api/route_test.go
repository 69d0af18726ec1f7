package api

import (
	"strings"
	"testing"
)

func TestParseRoute(t *testing.T) {
	t.Parallel()
	const d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	long := strings.Repeat("a/", 50) + "b"
	tests := []struct {
		path string
		want route
	}{
		// Base and catalog.
		{"/v2", route{Kind: kindBase}},
		{"/v2/", route{Kind: kindBase}},
		{"/v2/_catalog", route{Kind: kindCatalog}},
		{"/v2/_catalog/", route{}},

		// Manifests.
		{"/v2/foo/manifests/latest", route{Kind: kindManifest, Repo: "foo", Ref: "latest"}},
		{"/v2/foo/bar/manifests/v1.0", route{Kind: kindManifest, Repo: "foo/bar", Ref: "v1.0"}},
		{"/v2/a/b/c/d/manifests/" + d, route{Kind: kindManifest, Repo: "a/b/c/d", Ref: d}},
		{"/v2/" + long + "/manifests/x", route{Kind: kindManifest, Repo: long, Ref: "x"}},
		{"/v2/foo/manifests/", route{Kind: kindManifest, Repo: "foo", Ref: ""}},
		// Names containing API words are matched from the tail.
		{"/v2/manifests/manifests/latest", route{Kind: kindManifest, Repo: "manifests", Ref: "latest"}},
		{"/v2/blobs/manifests/latest", route{Kind: kindManifest, Repo: "blobs", Ref: "latest"}},
		{"/v2/foo/blobs/bar/manifests/x", route{Kind: kindManifest, Repo: "foo/blobs/bar", Ref: "x"}},
		{"/v2/foo/tags/manifests/list", route{Kind: kindManifest, Repo: "foo/tags", Ref: "list"}},
		{"/v2/foo/blobs/uploads/manifests/x", route{Kind: kindManifest, Repo: "foo/blobs/uploads", Ref: "x"}},
		{"/v2/referrers/manifests/x", route{Kind: kindManifest, Repo: "referrers", Ref: "x"}},
		{"/v2/manifests/latest", route{}}, // no repository
		{"/v2/foo/manifests", route{}},

		// Blobs.
		{"/v2/foo/blobs/" + d, route{Kind: kindBlob, Repo: "foo", Ref: d}},
		{"/v2/foo/bar/blobs/" + d, route{Kind: kindBlob, Repo: "foo/bar", Ref: d}},
		{"/v2/blobs/blobs/" + d, route{Kind: kindBlob, Repo: "blobs", Ref: d}},
		{"/v2/foo/manifests/blobs/" + d, route{Kind: kindBlob, Repo: "foo/manifests", Ref: d}},
		{"/v2/foo/tags/list/blobs/" + d, route{Kind: kindBlob, Repo: "foo/tags/list", Ref: d}},
		{"/v2/blobs/" + d, route{}},

		// Upload start, with and without the trailing slash.
		{"/v2/foo/blobs/uploads/", route{Kind: kindUploadStart, Repo: "foo"}},
		{"/v2/foo/blobs/uploads", route{Kind: kindUploadStart, Repo: "foo"}},
		{"/v2/a/b/blobs/uploads/", route{Kind: kindUploadStart, Repo: "a/b"}},
		{"/v2/blobs/blobs/uploads/", route{Kind: kindUploadStart, Repo: "blobs"}},
		{"/v2/uploads/blobs/uploads", route{Kind: kindUploadStart, Repo: "uploads"}},
		{"/v2/blobs/uploads/", route{}},
		{"/v2/blobs/uploads", route{}},

		// Upload sessions.
		{"/v2/foo/blobs/uploads/0123abcd", route{Kind: kindUpload, Repo: "foo", Ref: "0123abcd"}},
		{"/v2/a/b/blobs/uploads/0123abcd", route{Kind: kindUpload, Repo: "a/b", Ref: "0123abcd"}},
		{"/v2/blobs/blobs/uploads/x", route{Kind: kindUpload, Repo: "blobs", Ref: "x"}},
		{"/v2/foo/blobs/uploads/x/", route{}},

		// Tags.
		{"/v2/foo/tags/list", route{Kind: kindTags, Repo: "foo"}},
		{"/v2/a/b/c/tags/list", route{Kind: kindTags, Repo: "a/b/c"}},
		{"/v2/tags/tags/list", route{Kind: kindTags, Repo: "tags"}},
		{"/v2/foo/list/tags/list", route{Kind: kindTags, Repo: "foo/list"}},
		{"/v2/tags/list", route{}},
		{"/v2/foo/tags/list/", route{}},
		{"/v2/foo/tags", route{}},
		{"/v2/foo/tags/other", route{}},

		// Referrers.
		{"/v2/foo/referrers/" + d, route{Kind: kindReferrers, Repo: "foo", Ref: d}},
		{"/v2/a/b/referrers/" + d, route{Kind: kindReferrers, Repo: "a/b", Ref: d}},
		{"/v2/referrers/referrers/" + d, route{Kind: kindReferrers, Repo: "referrers", Ref: d}},

		// Outside the API.
		{"", route{}},
		{"/", route{}},
		{"/v1/foo/manifests/latest", route{}},
		{"/v2foo/manifests/latest", route{}},
		{"/metrics", route{}},
		{"/livez", route{}},
		{"/v2/foo", route{}},
		{"/v2/foo/bar", route{}},
		{"/v2/foo/bar/baz", route{}},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			t.Parallel()
			if got := parseRoute(tt.path); got != tt.want {
				t.Errorf("parseRoute(%q) = %+v, want %+v", tt.path, got, tt.want)
			}
		})
	}
}

func TestKindString(t *testing.T) {
	t.Parallel()
	for k := kindNone; k <= kindReferrers; k++ {
		if s := k.String(); s == "" || strings.Contains(s, "%") {
			t.Errorf("kind %d has name %q", int(k), s)
		}
	}
}

func TestParseContentRange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in         string
		start, end int64
		ok         bool
	}{
		{"0-9", 0, 9, true},
		{"bytes 0-9", 0, 9, true},
		{"bytes=10-19", 10, 19, true},
		{"bytes 10-19/20", 10, 19, true},
		{"bytes 10-19/*", 10, 19, true},
		{" 5-5 ", 5, 5, true},
		{"", 0, 0, false},
		{"5", 0, 0, false},
		{"9-0", 0, 0, false},
		{"-1-3", 0, 0, false},
		{"a-b", 0, 0, false},
		{"0-", 0, 0, false},
		{"+0-+9", 0, 0, false},
		{"0- 9", 0, 0, false},
		{"0-0x9", 0, 0, false},
		{"0-99999999999999999999", 0, 0, false},
	}
	for _, tt := range tests {
		start, end, err := parseContentRange(tt.in)
		if (err == nil) != tt.ok || (tt.ok && (start != tt.start || end != tt.end)) {
			t.Errorf("parseContentRange(%q) = %d, %d, %v; want %d, %d, ok=%v", tt.in, start, end, err, tt.start, tt.end, tt.ok)
		}
	}
}

func TestUploadRange(t *testing.T) {
	t.Parallel()
	for size, want := range map[int64]string{0: "0-0", 1: "0-0", 2: "0-1", 1 << 20: "0-1048575"} {
		if got := uploadRange(size); got != want {
			t.Errorf("uploadRange(%d) = %q, want %q", size, got, want)
		}
	}
}

func TestAccepts(t *testing.T) {
	t.Parallel()
	const (
		oci    = "application/vnd.oci.image.manifest.v1+json"
		index  = "application/vnd.oci.image.index.v1+json"
		docker = "application/vnd.docker.distribution.manifest.v2+json"
	)
	tests := []struct {
		name   string
		accept []string
		mt     string
		want   bool
	}{
		{"no header", nil, oci, true},
		{"exact", []string{oci}, oci, true},
		{"other manifest type", []string{index}, oci, false},
		{"list", []string{index + ", " + docker + ";q=0.5"}, docker, true},
		{"several headers", []string{index, docker}, docker, true},
		{"wildcard", []string{"*/*"}, oci, true},
		{"application wildcard", []string{"application/*"}, oci, true},
		{"wildcard with others", []string{index + ", */*;q=0.1"}, oci, true},
		{"json only", []string{"application/json"}, oci, true},
		{"garbage", []string{";;;"}, oci, true},
	}
	for _, tt := range tests {
		if got := accepts(tt.accept, tt.mt); got != tt.want {
			t.Errorf("%s: accepts(%q, %s) = %v, want %v", tt.name, tt.accept, tt.mt, got, tt.want)
		}
	}
}

// TestRangeEnd checks which Range headers end short of a blob's end.
func TestRangeEnd(t *testing.T) {
	for _, c := range []struct {
		h    string
		end  int64
		want bool
	}{
		{"bytes=10-19", 19, true},
		{"bytes=0-0", 0, true},
		{"bytes=0-98", 98, true},
		{"bytes=0-99", 0, false}, // the blob's last byte
		{"bytes=0-500", 0, false},
		{"bytes=10-", 0, false},
		{"bytes=-10", 0, false},
		{"bytes=19-10", 0, false},
		{"bytes=0-1,5-6", 0, false},
		{"items=0-1", 0, false},
		{"", 0, false},
	} {
		end, ok := rangeEnd(c.h, 100)
		if ok != c.want || end != c.end {
			t.Errorf("rangeEnd(%q, 100) = %d, %v; want %d, %v", c.h, end, ok, c.end, c.want)
		}
	}
}
