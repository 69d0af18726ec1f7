package sync

import (
	"strings"
	"testing"

	"github.com/berthreg/berth/pkg/config"
)

func ptr[T any](v T) *T { return &v }

func TestRuleMapping(t *testing.T) {
	type mapping struct{ upstream, local string }
	tests := []struct {
		name    string
		content config.SyncContent
		maps    []mapping // upstream <-> local, both ways
		skip    []string  // upstream names not selected
		noLocal []string  // local names no upstream maps to
	}{
		{
			name:    "literal",
			content: config.SyncContent{Prefix: "alpine"},
			maps:    []mapping{{"alpine", "alpine"}},
			skip:    []string{"alpine/x", "library/alpine", "alpine2"},
			noLocal: []string{"busybox", "alpine/x"},
		},
		{
			name:    "leading slash",
			content: config.SyncContent{Prefix: "/library/alpine"},
			maps:    []mapping{{"library/alpine", "library/alpine"}},
		},
		{
			name:    "double star",
			content: config.SyncContent{Prefix: "library/**"},
			maps:    []mapping{{"library/alpine", "library/alpine"}, {"library/a/b/c", "library/a/b/c"}},
			skip:    []string{"libraryx/alpine", "other/library/alpine"},
			noLocal: []string{"alpine"},
		},
		{
			name:    "single star is one segment",
			content: config.SyncContent{Prefix: "tools/*"},
			maps:    []mapping{{"tools/a", "tools/a"}},
			skip:    []string{"tools/a/b", "tools"},
		},
		{
			name:    "star within a segment",
			content: config.SyncContent{Prefix: "team-*/app?"},
			maps:    []mapping{{"team-x/app1", "team-x/app1"}},
			skip:    []string{"team-x/app12", "teamx/app1"},
		},
		{
			name:    "everything",
			content: config.SyncContent{Prefix: "**"},
			maps:    []mapping{{"a", "a"}, {"a/b/c", "a/b/c"}},
		},
		{
			name:    "double star in the middle",
			content: config.SyncContent{Prefix: "org/**/app"},
			maps:    []mapping{{"org/app", "org/app"}, {"org/x/y/app", "org/x/y/app"}},
			skip:    []string{"org/x/app2"},
		},
		{
			name:    "destination",
			content: config.SyncContent{Prefix: "library/**", Destination: "/mirror/"},
			maps:    []mapping{{"library/alpine", "mirror/library/alpine"}},
			noLocal: []string{"library/alpine", "mirror", "mirrorx/library/alpine", "mirror/other/alpine"},
		},
		{
			name:    "strip prefix",
			content: config.SyncContent{Prefix: "library/**", StripPrefix: true},
			maps:    []mapping{{"library/alpine", "alpine"}, {"library/a/b", "a/b"}},
			skip:    []string{"other/alpine"},
		},
		{
			name:    "strip prefix with destination",
			content: config.SyncContent{Prefix: "/example/tools/*", Destination: "/tools", StripPrefix: true},
			maps:    []mapping{{"example/tools/lint", "tools/lint"}},
			skip:    []string{"example/tools/a/b", "example/other"},
			noLocal: []string{"tools", "tools/a/b", "lint"},
		},
		{
			name:    "strip a literal prefix into a destination",
			content: config.SyncContent{Prefix: "library/alpine", Destination: "base/alpine", StripPrefix: true},
			maps:    []mapping{{"library/alpine", "base/alpine"}},
			noLocal: []string{"base/alpine/x", "alpine"},
		},
		{
			name:    "strip a literal prefix to nothing",
			content: config.SyncContent{Prefix: "alpine", StripPrefix: true},
			skip:    []string{"alpine"}, // local name would be empty
			noLocal: []string{"alpine", ""},
		},
		{
			name:    "glob in the first segment keeps nothing to strip",
			content: config.SyncContent{Prefix: "*/alpine", Destination: "m", StripPrefix: true},
			maps:    []mapping{{"library/alpine", "m/library/alpine"}},
		},
		{
			name:    "invalid local names are not produced",
			content: config.SyncContent{Prefix: "**", Destination: "Upper"},
			skip:    []string{"alpine"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewRule(tc.content)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range tc.maps {
				if got, ok := r.Local(m.upstream); !ok || got != m.local {
					t.Errorf("Local(%q) = %q, %v; want %q", m.upstream, got, ok, m.local)
				}
				if got, ok := r.Upstream(m.local); !ok || got != m.upstream {
					t.Errorf("Upstream(%q) = %q, %v; want %q", m.local, got, ok, m.upstream)
				}
			}
			for _, up := range tc.skip {
				if got, ok := r.Local(up); ok {
					t.Errorf("Local(%q) = %q, want no mapping", up, got)
				}
			}
			for _, l := range tc.noLocal {
				if got, ok := r.Upstream(l); ok {
					t.Errorf("Upstream(%q) = %q, want no mapping", l, got)
				}
			}
		})
	}
}

func TestRuleLiteral(t *testing.T) {
	for prefix, want := range map[string]bool{
		"alpine": true, "/library/alpine": true, "library/**": false, "a/*/b": false, "a?": false, "[ab]": false,
	} {
		r, err := NewRule(config.SyncContent{Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		if r.Literal() != want {
			t.Errorf("Literal(%q) = %v, want %v", prefix, r.Literal(), want)
		}
	}
}

func TestRuleTags(t *testing.T) {
	tests := []struct {
		name string
		tags *config.SyncTags
		keep string
		drop string
	}{
		{"no filter", nil, "latest 1.0 anything", ""},
		{"regex", &config.SyncTags{Regex: ptr(`^1\.`)}, "1.0 1.2.3", "latest 2.0 v1.0"},
		{"exclude", &config.SyncTags{ExcludeRegex: ptr(`-rc`)}, "1.0 latest", "1.0-rc1 2-rc"},
		{"regex and exclude", &config.SyncTags{Regex: ptr(`^v`), ExcludeRegex: ptr(`-(rc|beta)[0-9]*$`)}, "v1 v1.2.3", "v1-rc1 v2-beta 1.0"},
		{"semver", &config.SyncTags{Semver: ptr(true)}, "1 1.2 1.2.3 v1.2.3 1.2.3-rc.1 1.2.3+build.5 v2.0.0-beta+exp.sha.5114f85",
			"latest 1.2.3.4 v 1.2.3- stable-1.0 1..2"},
		{"semver off", &config.SyncTags{Semver: ptr(false)}, "latest", ""},
		{"all three", &config.SyncTags{Regex: ptr(`^v?1`), ExcludeRegex: ptr(`rc`), Semver: ptr(true)}, "1.0 v1.2.3", "1.0-rc1 2.0 1.0.0.1 v1x"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewRule(config.SyncContent{Prefix: "**", Tags: tc.tags})
			if err != nil {
				t.Fatal(err)
			}
			for _, tag := range strings.Fields(tc.keep) {
				if !r.Tag(tag) {
					t.Errorf("Tag(%q) = false, want true", tag)
				}
			}
			for _, tag := range strings.Fields(tc.drop) {
				if r.Tag(tag) {
					t.Errorf("Tag(%q) = true, want false", tag)
				}
			}
		})
	}
}

func TestNewRuleErrors(t *testing.T) {
	for _, tc := range []struct {
		c    config.SyncContent
		want string
	}{
		{config.SyncContent{Prefix: "/"}, "prefix: must not be empty"},
		{config.SyncContent{Prefix: "a/["}, "prefix: invalid glob"},
		{config.SyncContent{Prefix: "a", Tags: &config.SyncTags{Regex: ptr("(")}}, "tags.regex"},
		{config.SyncContent{Prefix: "a", Tags: &config.SyncTags{ExcludeRegex: ptr("[")}}, "tags.excludeRegex"},
	} {
		if _, err := NewRule(tc.c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewRule(%+v) = %v, want %q", tc.c, err, tc.want)
		}
	}
}

func TestParseChallenge(t *testing.T) {
	ch := parseChallenge(`Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push"`)
	if ch.scheme != "bearer" || ch.params["realm"] != "https://auth.example.com/token" ||
		ch.params["service"] != "registry.example.com" || ch.params["scope"] != "repository:a/b:pull,push" {
		t.Errorf("parseChallenge = %+v", ch)
	}
	ch = parseChallenge(`Basic realm=registry, charset="UTF-8"`)
	if ch.scheme != "basic" || ch.params["realm"] != "registry" || ch.params["charset"] != "UTF-8" {
		t.Errorf("parseChallenge = %+v", ch)
	}
}

func TestNextLink(t *testing.T) {
	for h, want := range map[string]string{
		`</v2/_catalog?last=b&n=2>; rel="next"`:                        "/v2/_catalog?last=b&n=2",
		`<https://r.example.com/v2/a/tags/list?n=1&last=x>; rel=next`:  "https://r.example.com/v2/a/tags/list?n=1&last=x",
		`<https://r.example.com/v2/a/tags/list?n=1&last=x>;rel="next"`: "https://r.example.com/v2/a/tags/list?n=1&last=x",
		`</v2/x>; rel="prev", </v2/y>; rel="next"`:                     "/v2/y",
		``: "",
	} {
		if got := nextLink(h); got != want {
			t.Errorf("nextLink(%q) = %q, want %q", h, got, want)
		}
	}
}
