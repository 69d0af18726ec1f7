package api

import (
	"strconv"
	"strings"
	"testing"
)

// renderRoute is the canonical path of a route.
func renderRoute(rt route) string {
	switch rt.Kind {
	case kindBase:
		return "/v2/"
	case kindCatalog:
		return "/v2/_catalog"
	case kindTags:
		return "/v2/" + rt.Repo + "/tags/list"
	case kindManifest:
		return "/v2/" + rt.Repo + "/manifests/" + rt.Ref
	case kindBlob:
		return "/v2/" + rt.Repo + "/blobs/" + rt.Ref
	case kindUploadStart:
		return "/v2/" + rt.Repo + "/blobs/uploads/"
	case kindUpload:
		return "/v2/" + rt.Repo + "/blobs/uploads/" + rt.Ref
	case kindReferrers:
		return "/v2/" + rt.Repo + "/referrers/" + rt.Ref
	}
	return ""
}

// FuzzParseRoute: every path parses without panicking; an API route
// re-renders to the path it came from (up to the two spellings of the base
// and of an upload start) and parses back to itself.
func FuzzParseRoute(f *testing.F) {
	const d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	for _, s := range []string{
		"", "/", "/v2", "/v2/", "/v2/_catalog", "/v2/_catalog/", "/v2//",
		"/v2/foo/manifests/latest", "/v2/a/b/c/manifests/" + d, "/v2/foo/blobs/" + d,
		"/v2/foo/blobs/uploads/", "/v2/foo/blobs/uploads", "/v2/foo/blobs/uploads/0123abcd",
		"/v2/foo/tags/list", "/v2/foo/referrers/" + d, "/v2/blobs/uploads/",
		"/v2/../x/manifests/a", "/v2/a/..\\b/tags/list", "/v2/a\x00b/tags/list", "/v2/\xff/manifests/\xfe",
		"/v2//blobs/uploads/", "/v2/foo/manifests/", "/v2/manifests/manifests/manifests",
		"/v2/foo/blobs/uploads/x/", "/v2/tags/tags/list", "/v3/foo/tags/list",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		rt := parseRoute(path)
		if rt.Kind == kindNone {
			if rt != (route{}) {
				t.Fatalf("parseRoute(%q) = %+v: no kind but fields set", path, rt)
			}
			return
		}
		if path != "/v2" && !strings.HasPrefix(path, "/v2/") {
			t.Fatalf("parseRoute(%q) = %+v outside /v2/", path, rt)
		}
		if strings.Contains(rt.Ref, "/") {
			t.Fatalf("parseRoute(%q): reference %q holds a slash", path, rt.Ref)
		}
		if (rt.Kind == kindBase || rt.Kind == kindCatalog) && (rt.Repo != "" || rt.Ref != "") {
			t.Fatalf("parseRoute(%q) = %+v: %s with a name", path, rt, rt.Kind)
		}
		out := renderRoute(rt)
		alias := (rt.Kind == kindBase && path == "/v2") ||
			(rt.Kind == kindUploadStart && path+"/" == out)
		if out != path && !alias {
			t.Fatalf("parseRoute(%q) = %+v renders as %q", path, rt, out)
		}
		if again := parseRoute(out); again != rt {
			t.Fatalf("parseRoute(%q) = %+v, but its rendering %q parses as %+v", path, rt, out, again)
		}
	})
}

// FuzzParseContentRange: any header value parses or fails without
// panicking; a parsed range is 0 <= start <= end and survives rendering.
func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{
		"0-9", "bytes 0-9", "bytes=10-19", "bytes 10-19/20", "bytes 10-19/*", " 5-5 ", "", "5", "9-0",
		"-1-3", "a-b", "0-", "+0-+9", "0-9223372036854775807", "9223372036854775807-9223372036854775808",
		"bytes  0-0", "bytes=0-0/0", "0--1", "0x1-0x2", "١-٢", "0-9\x00",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		start, end, err := parseContentRange(s)
		if err != nil {
			if start != 0 || end != 0 {
				t.Fatalf("parseContentRange(%q) = %d, %d with error %v", s, start, end, err)
			}
			return
		}
		if start < 0 || end < start {
			t.Fatalf("parseContentRange(%q) = %d, %d", s, start, end)
		}
		for _, form := range []string{"%d-%d", "bytes %d-%d", "bytes %d-%d/*"} {
			r := strings.Replace(strings.Replace(form, "%d", strconv.FormatInt(start, 10), 1), "%d", strconv.FormatInt(end, 10), 1)
			s2, e2, err := parseContentRange(r)
			if err != nil || s2 != start || e2 != end {
				t.Fatalf("parseContentRange(%q) = %d, %d; its rendering %q gives %d, %d, %v", s, start, end, r, s2, e2, err)
			}
		}
	})
}
