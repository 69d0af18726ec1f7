package gc

import (
	"regexp"
	"sort"
	"time"

	"github.com/berthreg/berth/pkg/config"
	"github.com/berthreg/berth/pkg/glob"
)

// Policy is a compiled retention policy.
type Policy struct {
	Repositories    []string
	DeleteReferrers bool
	DeleteUntagged  bool
	KeepTags        []KeepRule
}

// KeepRule keeps the tags matching Patterns: all of them when no criterion
// is set, else those meeting at least one.
type KeepRule struct {
	Patterns                []*regexp.Regexp
	PulledWithin            time.Duration // 0: not a criterion
	PushedWithin            time.Duration
	MostRecentlyPushedCount int
	MostRecentlyPulledCount int
}

// TagInfo is what retention knows of one tag.
type TagInfo struct {
	Tag      string
	Digest   string
	PushedAt time.Time
	PulledAt time.Time // zero: never pulled (or pulls not recorded)
}

// Compile turns retention configuration into policies. Configuration was
// validated at load, so a pattern that fails to compile is skipped.
func Compile(rc *config.RetentionConfig) []Policy {
	if rc == nil {
		return nil
	}
	var out []Policy
	for _, p := range rc.Policies {
		pol := Policy{Repositories: p.Repositories, DeleteReferrers: p.DeleteReferrers, DeleteUntagged: p.DeleteUntagged == nil || *p.DeleteUntagged}
		for _, k := range p.KeepTags {
			r := KeepRule{MostRecentlyPushedCount: k.MostRecentlyPushedCount, MostRecentlyPulledCount: k.MostRecentlyPulledCount}
			if k.PulledWithin != nil {
				r.PulledWithin = k.PulledWithin.Std()
			}
			if k.PushedWithin != nil {
				r.PushedWithin = k.PushedWithin.Std()
			}
			for _, pat := range k.Patterns {
				if re, err := regexp.Compile("^(?:" + pat + ")$"); err == nil {
					r.Patterns = append(r.Patterns, re)
				}
			}
			pol.KeepTags = append(pol.KeepTags, r)
		}
		out = append(out, pol)
	}
	return out
}

// For returns the first policy whose globs match repo, or nil.
func For(policies []Policy, repo string) *Policy {
	for i := range policies {
		for _, g := range policies[i].Repositories {
			if glob.Match(g, repo) {
				return &policies[i]
			}
		}
	}
	return nil
}

// Keep returns the tags the policy keeps. Without keepTags rules every tag
// is kept; otherwise a tag is kept when any rule keeps it. havePulls is
// false when pull times are not recorded: pull-based criteria then keep
// every tag they cover rather than delete on missing data.
func (p *Policy) Keep(tags []TagInfo, now time.Time, havePulls bool) map[string]bool {
	keep := map[string]bool{}
	if p == nil || len(p.KeepTags) == 0 {
		for _, t := range tags {
			keep[t.Tag] = true
		}
		return keep
	}
	for _, r := range p.KeepTags {
		var matched []TagInfo
		for _, t := range tags {
			if r.matches(t.Tag) {
				matched = append(matched, t)
			}
		}
		noCriteria := r.PulledWithin == 0 && r.PushedWithin == 0 && r.MostRecentlyPushedCount == 0 && r.MostRecentlyPulledCount == 0
		for _, t := range matched {
			switch {
			case noCriteria,
				r.PushedWithin > 0 && now.Sub(t.PushedAt) <= r.PushedWithin,
				r.PulledWithin > 0 && (!havePulls || (!t.PulledAt.IsZero() && now.Sub(t.PulledAt) <= r.PulledWithin)):
				keep[t.Tag] = true
			}
		}
		for _, t := range mostRecent(matched, r.MostRecentlyPushedCount, func(t TagInfo) time.Time { return t.PushedAt }) {
			keep[t] = true
		}
		if r.MostRecentlyPulledCount > 0 && !havePulls {
			for _, t := range matched {
				keep[t.Tag] = true
			}
		}
		for _, t := range mostRecent(matched, r.MostRecentlyPulledCount, func(t TagInfo) time.Time { return t.PulledAt }) {
			keep[t] = true
		}
	}
	return keep
}

func (r KeepRule) matches(tag string) bool {
	if len(r.Patterns) == 0 {
		return true
	}
	for _, re := range r.Patterns {
		if re.MatchString(tag) {
			return true
		}
	}
	return false
}

// mostRecent returns the n tags with the latest times (ties by name);
// tags with a zero time never count as recent.
func mostRecent(tags []TagInfo, n int, at func(TagInfo) time.Time) []string {
	if n <= 0 {
		return nil
	}
	c := make([]TagInfo, 0, len(tags))
	for _, t := range tags {
		if !at(t).IsZero() {
			c = append(c, t)
		}
	}
	sort.Slice(c, func(i, j int) bool {
		if a, b := at(c[i]), at(c[j]); !a.Equal(b) {
			return a.After(b)
		}
		return c[i].Tag < c[j].Tag
	})
	var out []string
	for i := 0; i < len(c) && i < n; i++ {
		out = append(out, c[i].Tag)
	}
	return out
}
