package gc

import (
	"maps"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/berthreg/berth/pkg/config"
)

// retentionNow is the fixed "now" of the retention table.
var retentionNow = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

func ago(d time.Duration) time.Time { return retentionNow.Add(-d) }

const day = 24 * time.Hour

// retentionTags is the repository the table judges. latest and v2.0 name
// the same manifest (same push time); v1.1 and dev-abc were never pulled.
var retentionTags = []TagInfo{
	{Tag: "dev-abc", Digest: "sha256:d1", PushedAt: ago(5 * time.Minute)},
	{Tag: "dev-old", Digest: "sha256:d0", PushedAt: ago(40 * day), PulledAt: ago(10 * time.Minute)},
	{Tag: "latest", Digest: "sha256:20", PushedAt: ago(time.Hour), PulledAt: ago(3 * day)},
	{Tag: "v1.0", Digest: "sha256:10", PushedAt: ago(30 * day), PulledAt: ago(time.Hour)},
	{Tag: "v1.1", Digest: "sha256:11", PushedAt: ago(10 * day)},
	{Tag: "v1.2", Digest: "sha256:12", PushedAt: ago(2 * day), PulledAt: ago(20 * day)},
	{Tag: "v2.0", Digest: "sha256:20", PushedAt: ago(time.Hour), PulledAt: ago(3 * day)},
}

// withoutPulls is retentionTags as seen when pulls are not recorded.
func withoutPulls() []TagInfo {
	out := slices.Clone(retentionTags)
	for i := range out {
		out[i].PulledAt = time.Time{}
	}
	return out
}

func dur(d time.Duration) *config.Duration { c := config.Duration(d); return &c }

var allTags = []string{"dev-abc", "dev-old", "latest", "v1.0", "v1.1", "v1.2", "v2.0"}

func TestRetentionKeep(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		keep      []config.KeepTagsPolicy
		havePulls bool
		want      []string
	}{
		{
			name: "empty keepTags keeps all", keep: nil, havePulls: true,
			want: allTags,
		},
		{
			name: "keep last 2 pushed (tie broken by name)", havePulls: true,
			keep: []config.KeepTagsPolicy{{MostRecentlyPushedCount: 2}},
			want: []string{"dev-abc", "latest"},
		},
		{
			name: "keep last 3 pushed", havePulls: true,
			keep: []config.KeepTagsPolicy{{MostRecentlyPushedCount: 3}},
			want: []string{"dev-abc", "latest", "v2.0"},
		},
		{
			name: "keep last 2 pushed among matching tags", havePulls: true,
			keep: []config.KeepTagsPolicy{{Patterns: []string{`v1\..*`}, MostRecentlyPushedCount: 2}},
			want: []string{"v1.1", "v1.2"},
		},
		{
			name: "keep last N pushed with N above the tag count", havePulls: true,
			keep: []config.KeepTagsPolicy{{MostRecentlyPushedCount: 100}},
			want: allTags,
		},
		{
			name: "patterns only keep every match", havePulls: true,
			keep: []config.KeepTagsPolicy{{Patterns: []string{`v1\..*`, "latest"}}},
			want: []string{"latest", "v1.0", "v1.1", "v1.2"},
		},
		{
			name: "patterns are anchored", havePulls: true,
			keep: []config.KeepTagsPolicy{{Patterns: []string{"v1", "dev"}}},
			want: nil,
		},
		{
			name: "pushedWithin", havePulls: true,
			keep: []config.KeepTagsPolicy{{PushedWithin: dur(day)}},
			want: []string{"dev-abc", "latest", "v2.0"},
		},
		{
			name: "pulledWithin with pull data", havePulls: true,
			keep: []config.KeepTagsPolicy{{PulledWithin: dur(day)}},
			want: []string{"dev-old", "v1.0"},
		},
		{
			name: "pulledWithin without pull data keeps what it covers", havePulls: false,
			keep: []config.KeepTagsPolicy{{PulledWithin: dur(day)}},
			want: allTags,
		},
		{
			name: "pulledWithin without pull data keeps only its matches", havePulls: false,
			keep: []config.KeepTagsPolicy{{Patterns: []string{"dev-.*"}, PulledWithin: dur(time.Minute)}},
			want: []string{"dev-abc", "dev-old"},
		},
		{
			name: "mostRecentlyPulledCount with pull data", havePulls: true,
			keep: []config.KeepTagsPolicy{{MostRecentlyPulledCount: 2}},
			want: []string{"dev-old", "v1.0"},
		},
		{
			name: "mostRecentlyPulledCount never counts unpulled tags", havePulls: true,
			keep: []config.KeepTagsPolicy{{MostRecentlyPulledCount: 100}},
			want: []string{"dev-old", "latest", "v1.0", "v1.2", "v2.0"},
		},
		{
			name: "mostRecentlyPulledCount without pull data keeps all it covers", havePulls: false,
			keep: []config.KeepTagsPolicy{{Patterns: []string{"v.*"}, MostRecentlyPulledCount: 1}},
			want: []string{"v1.0", "v1.1", "v1.2", "v2.0"},
		},
		{
			name: "criteria of one rule are alternatives", havePulls: true,
			keep: []config.KeepTagsPolicy{{Patterns: []string{"v.*"}, PushedWithin: dur(3 * day), PulledWithin: dur(2 * time.Hour)}},
			want: []string{"v1.0", "v1.2", "v2.0"},
		},
		{
			name: "several rules keep the union", havePulls: true,
			keep: []config.KeepTagsPolicy{
				{Patterns: []string{"v.*"}, MostRecentlyPushedCount: 1},
				{Patterns: []string{"latest"}},
				{Patterns: []string{"dev-.*"}, PushedWithin: dur(time.Hour)},
			},
			want: []string{"dev-abc", "latest", "v2.0"},
		},
		{
			// A tag one rule would drop is kept when a later rule whose
			// patterns also match keeps it.
			name: "union across overlapping rules", havePulls: true,
			keep: []config.KeepTagsPolicy{
				{Patterns: []string{"v.*"}, PushedWithin: dur(day)},
				{PulledWithin: dur(2 * time.Hour)},
			},
			want: []string{"dev-old", "v1.0", "v2.0"},
		},
		{
			name: "union of push and pull counts", havePulls: true,
			keep: []config.KeepTagsPolicy{{MostRecentlyPushedCount: 1}, {MostRecentlyPulledCount: 1}},
			want: []string{"dev-abc", "dev-old"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			pols := Compile(&config.RetentionConfig{Policies: []config.RetentionPolicy{{Repositories: []string{"**"}, KeepTags: c.keep}}})
			p := For(pols, "lib/app")
			if p == nil {
				t.Fatal("For(**) matched nothing")
			}
			tags := retentionTags
			if !c.havePulls {
				tags = withoutPulls()
			}
			got := slices.Sorted(maps.Keys(trueKeys(p.Keep(tags, retentionNow, c.havePulls))))
			want := slices.Clone(c.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("kept %q, want %q", got, want)
			}
		})
	}
}

// trueKeys drops the false entries of a keep map.
func trueKeys(m map[string]bool) map[string]bool {
	out := map[string]bool{}
	for k, v := range m {
		if v {
			out[k] = true
		}
	}
	return out
}

func TestRetentionNoPolicyKeepsAll(t *testing.T) {
	t.Parallel()
	var p *Policy
	if got := trueKeys(p.Keep(retentionTags, retentionNow, true)); len(got) != len(allTags) {
		t.Errorf("nil policy kept %v, want all", got)
	}
	pols := Compile(&config.RetentionConfig{Policies: []config.RetentionPolicy{
		{Repositories: []string{"infra/*"}, KeepTags: []config.KeepTagsPolicy{{MostRecentlyPushedCount: 1}}},
	}})
	if p := For(pols, "lib/app"); p != nil {
		t.Fatalf("For(lib/app) = %+v, want nil (no policy matches)", p)
	}
	if got := trueKeys(For(pols, "lib/app").Keep(retentionTags, retentionNow, true)); len(got) != len(allTags) {
		t.Errorf("no matching policy kept %v, want all", got)
	}
}

func TestRetentionFor(t *testing.T) {
	t.Parallel()
	pols := []Policy{
		{Repositories: []string{"library/*"}, DeleteReferrers: true},
		{Repositories: []string{"team/**", "exact"}, DeleteUntagged: true},
		{Repositories: nil}, // matches nothing
		{Repositories: []string{"**"}},
	}
	cases := []struct {
		repo string
		want int // index into pols, -1 for none
	}{
		{"library/alpine", 0},
		{"library/a/b", 3},
		{"team", 1},
		{"team/a/b/c", 1},
		{"exact", 1},
		{"exact/more", 3},
		{"x", 3},
		{"a/b/c/d", 3},
	}
	for _, c := range cases {
		got := For(pols, c.repo)
		switch {
		case c.want < 0 && got != nil:
			t.Errorf("For(%s) = %+v, want nil", c.repo, *got)
		case c.want >= 0 && got != &pols[c.want]:
			t.Errorf("For(%s) = %v, want policy %d", c.repo, got, c.want)
		}
	}
	if got := For(pols[:3], "x"); got != nil {
		t.Errorf("For(x) without a ** policy = %+v, want nil", *got)
	}
	if got := For(nil, "x"); got != nil {
		t.Errorf("For(nil policies) = %+v, want nil", *got)
	}
}

func TestCompile(t *testing.T) {
	t.Parallel()
	if Compile(nil) != nil {
		t.Error("Compile(nil) != nil")
	}
	no := false
	rc := &config.RetentionConfig{
		DryRun: true,
		Delay:  config.Duration(time.Hour),
		Policies: []config.RetentionPolicy{
			{
				Repositories: []string{"library/**"}, DeleteReferrers: true, DeleteUntagged: &no,
				KeepTags: []config.KeepTagsPolicy{
					{Patterns: []string{"v[0-9]+", "latest", "("}, PulledWithin: dur(48 * time.Hour), MostRecentlyPulledCount: 3},
					{PushedWithin: dur(time.Hour), MostRecentlyPushedCount: 5},
				},
			},
			{Repositories: []string{"**"}},
		},
	}
	pols := Compile(rc)
	if len(pols) != 2 {
		t.Fatalf("Compile gave %d policies, want 2", len(pols))
	}
	p := pols[0]
	if !slices.Equal(p.Repositories, []string{"library/**"}) || !p.DeleteReferrers || p.DeleteUntagged {
		t.Errorf("policy 0 = %+v; want library/**, deleteReferrers, !deleteUntagged", p)
	}
	if len(p.KeepTags) != 2 {
		t.Fatalf("policy 0 has %d keep rules, want 2", len(p.KeepTags))
	}
	r := p.KeepTags[0]
	if r.PulledWithin != 48*time.Hour || r.MostRecentlyPulledCount != 3 || r.PushedWithin != 0 || r.MostRecentlyPushedCount != 0 {
		t.Errorf("rule 0 = %+v", r)
	}
	// The malformed "(" is skipped (validation rejects it at load); the
	// others are anchored.
	if got := patterns(r.Patterns); !slices.Equal(got, []string{"^(?:v[0-9]+)$", "^(?:latest)$"}) {
		t.Errorf("rule 0 patterns = %q", got)
	}
	for tag, want := range map[string]bool{"v1": true, "v12": true, "v1.0": false, "xv1": false, "latest": true, "latest2": false} {
		if got := r.matches(tag); got != want {
			t.Errorf("rule 0 matches(%q) = %v, want %v", tag, got, want)
		}
	}
	r = p.KeepTags[1]
	if r.PushedWithin != time.Hour || r.MostRecentlyPushedCount != 5 || len(r.Patterns) != 0 || !r.matches("anything") {
		t.Errorf("rule 1 = %+v", r)
	}
	if q := pols[1]; !q.DeleteUntagged || q.DeleteReferrers || len(q.KeepTags) != 0 {
		t.Errorf("policy 1 = %+v; want deleteUntagged by default, no keep rules", q)
	}
	if got := For(pols, "library/a/b"); got != &pols[0] {
		t.Errorf("For(library/a/b) = %v, want policy 0", got)
	}
	if got := For(pols, "other"); got != &pols[1] {
		t.Errorf("For(other) = %v, want policy 1", got)
	}
}

func patterns(res []*regexp.Regexp) []string {
	out := make([]string, len(res))
	for i, re := range res {
		out[i] = re.String()
	}
	return out
}
