package auth

import (
	"slices"
	"sort"
	"strings"

	"github.com/berthreg/berth/pkg/config"
	"github.com/berthreg/berth/pkg/glob"
)

// Actions, as pkg/api names them.
const (
	actionRead   = config.ActionRead
	actionCreate = config.ActionCreate
	actionUpdate = config.ActionUpdate
	actionDelete = config.ActionDelete
)

// accessControl evaluates http.accessControl.
//
// The rule: a repository takes the policies of the pattern equal to its
// name when there is one; otherwise of the longest pattern (in bytes) that
// matches it, ties going to the pattern that sorts first. zot picks the
// longest matching pattern too, but leaves ties and literal patterns to map
// order. A repository no pattern matches gets nothing but adminPolicy.
//
// On that pattern a caller may do an action when a policy lists the action
// and the user or one of the user's groups, when the caller is
// authenticated and defaultPolicy lists it, or when anonymousPolicy lists
// it (authenticated callers keep what anonymous ones may do; zot does not
// give it to them). adminPolicy's actions are granted to its users and
// groups on every repository.
type accessControl struct {
	exact    map[string]config.PolicyGroup
	patterns []pattern // globs, most specific first
	admin    config.Policy
	groups   map[string][]string // user -> groups
	// anonymous is true when some pattern has an anonymousPolicy: then
	// anonymous callers may reach /v2/ and the (filtered) catalog.
	anonymous bool
}

type pattern struct {
	glob string
	pg   config.PolicyGroup
}

// newAccessControl prepares ac for lookups; nil ac yields nil.
func newAccessControl(ac *config.AccessControlConfig) *accessControl {
	if ac == nil {
		return nil
	}
	a := &accessControl{exact: map[string]config.PolicyGroup{}, admin: ac.AdminPolicy, groups: map[string][]string{}}
	for g, pg := range ac.Repositories {
		if len(pg.AnonymousPolicy) > 0 {
			a.anonymous = true
		}
		if !strings.ContainsAny(g, `*?[\`) {
			a.exact[g] = pg
			continue
		}
		a.patterns = append(a.patterns, pattern{glob: g, pg: pg})
	}
	sort.Slice(a.patterns, func(i, j int) bool {
		pi, pj := a.patterns[i].glob, a.patterns[j].glob
		if len(pi) != len(pj) {
			return len(pi) > len(pj)
		}
		return pi < pj
	})
	names := make([]string, 0, len(ac.Groups))
	for name := range ac.Groups {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		for _, u := range ac.Groups[name].Users {
			if !slices.Contains(a.groups[u], name) {
				a.groups[u] = append(a.groups[u], name)
			}
		}
	}
	return a
}

// policyGroup returns the policies that apply to repo.
func (a *accessControl) policyGroup(repo string) (config.PolicyGroup, bool) {
	if pg, ok := a.exact[repo]; ok {
		return pg, true
	}
	for _, p := range a.patterns {
		if glob.Match(p.glob, repo) {
			return p.pg, true
		}
	}
	return config.PolicyGroup{}, false
}

// allowed reports whether user ("" anonymous) may do action on repo.
func (a *accessControl) allowed(user, repo, action string) bool {
	groups := a.groups[user]
	if user == "" {
		groups = nil
	}
	if pg, ok := a.policyGroup(repo); ok {
		if slices.Contains(pg.AnonymousPolicy, action) {
			return true
		}
		if user != "" {
			if slices.Contains(pg.DefaultPolicy, action) {
				return true
			}
			for _, p := range pg.Policies {
				if grantsPolicy(p, user, groups, action) {
					return true
				}
			}
		}
	}
	return user != "" && grantsPolicy(a.admin, user, groups, action)
}

// grantsPolicy reports whether a policy gives action to user or one of groups.
func grantsPolicy(p config.Policy, user string, groups []string, action string) bool {
	if !slices.Contains(p.Actions, action) {
		return false
	}
	if slices.Contains(p.Users, user) {
		return true
	}
	for _, g := range groups {
		if slices.Contains(p.Groups, g) {
			return true
		}
	}
	return false
}
