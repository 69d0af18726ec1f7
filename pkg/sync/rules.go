package sync

import (
	"fmt"
	"path"
	"regexp"
	"strings"

	"github.com/berthreg/berth/pkg/config"
	"github.com/berthreg/berth/pkg/registry"
)

// Rule is one compiled content entry of an upstream registry: which
// upstream repositories and tags to sync, and under which local name.
//
// Names map as zot maps them. The prefix is a glob over the whole upstream
// name ("library/**", "tools/*", "alpine"); its base is the run of leading
// segments without glob characters ("library", "tools", "alpine"). Then
//
//	local = destination / (stripPrefix ? upstream minus base : upstream)
//
// and Upstream inverts it.
type Rule struct {
	pattern     []string // prefix split on "/"
	base        string   // leading segments of the prefix without glob characters
	destination string   // local namespace, no leading or trailing "/"
	stripPrefix bool
	include     *regexp.Regexp
	exclude     *regexp.Regexp
	semver      bool
}

// NewRule compiles a content entry. Config validation has already checked
// the glob and the regular expressions; errors here name the field anyway.
func NewRule(c config.SyncContent) (*Rule, error) {
	prefix := strings.Trim(c.Prefix, "/")
	if prefix == "" {
		return nil, fmt.Errorf("prefix: must not be empty")
	}
	r := &Rule{
		pattern:     strings.Split(prefix, "/"),
		destination: strings.Trim(c.Destination, "/"),
		stripPrefix: c.StripPrefix,
	}
	var base []string
	for _, seg := range r.pattern {
		if _, err := path.Match(strings.ReplaceAll(seg, "**", "*"), ""); err != nil {
			return nil, fmt.Errorf("prefix: invalid glob %q: %v", c.Prefix, err)
		}
		if strings.ContainsAny(seg, `*?[\`) {
			break
		}
		base = append(base, seg)
	}
	r.base = strings.Join(base, "/")
	if t := c.Tags; t != nil {
		var err error
		if t.Regex != nil {
			if r.include, err = regexp.Compile(*t.Regex); err != nil {
				return nil, fmt.Errorf("tags.regex: %v", err)
			}
		}
		if t.ExcludeRegex != nil {
			if r.exclude, err = regexp.Compile(*t.ExcludeRegex); err != nil {
				return nil, fmt.Errorf("tags.excludeRegex: %v", err)
			}
		}
		r.semver = t.Semver != nil && *t.Semver
	}
	return r, nil
}

// Literal reports whether the prefix has no glob characters: it names one
// upstream repository, which can be synced without listing the catalog.
func (r *Rule) Literal() bool { return r.base == strings.Join(r.pattern, "/") }

// Matches reports whether the upstream repository name is selected.
func (r *Rule) Matches(upstream string) bool {
	return matchSegments(r.pattern, strings.Split(upstream, "/"))
}

// Local maps a selected upstream repository to its local name; ok is false
// when the rule does not select it or the result is not a valid name.
func (r *Rule) Local(upstream string) (string, bool) {
	if !r.Matches(upstream) {
		return "", false
	}
	rest := upstream
	if r.stripPrefix {
		rest = trimSegments(upstream, r.base)
	}
	local := joinName(r.destination, rest)
	return local, registry.ValidName(local)
}

// Upstream maps a local repository name back to the upstream one; ok is
// false when no upstream name this rule selects maps to local.
func (r *Rule) Upstream(local string) (string, bool) {
	rest := local
	if r.destination != "" {
		if local != r.destination && !strings.HasPrefix(local, r.destination+"/") {
			return "", false
		}
		rest = trimSegments(local, r.destination)
	}
	up := rest
	if r.stripPrefix {
		up = joinName(r.base, rest)
	}
	if up == "" {
		return "", false
	}
	if back, ok := r.Local(up); !ok || back != local {
		return "", false
	}
	return up, true
}

// Tag reports whether the tag passes the tag filters.
func (r *Rule) Tag(tag string) bool {
	if r.include != nil && !r.include.MatchString(tag) {
		return false
	}
	if r.exclude != nil && r.exclude.MatchString(tag) {
		return false
	}
	return !r.semver || semverRE.MatchString(tag)
}

// semverRE accepts what zot's semver filter (Masterminds semver v1)
// accepts: an optional "v", one to three numeric parts, an optional
// pre-release and build metadata ("1", "v1.2", "1.2.3-rc.1+build.5").
var semverRE = regexp.MustCompile(`^v?[0-9]+(\.[0-9]+){0,2}` +
	`(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$`)

// matchSegments matches name segments against pattern segments: a "**"
// segment matches any number of segments (zero included), any other
// segment matches one name segment with path.Match.
func matchSegments(pattern, name []string) bool {
	for len(pattern) > 0 {
		if pattern[0] == "**" {
			rest := pattern[1:]
			for i := 0; i <= len(name); i++ {
				if matchSegments(rest, name[i:]) {
					return true
				}
			}
			return false
		}
		if len(name) == 0 {
			return false
		}
		ok, err := path.Match(strings.ReplaceAll(pattern[0], "**", "*"), name[0])
		if err != nil || !ok {
			return false
		}
		pattern, name = pattern[1:], name[1:]
	}
	return len(name) == 0
}

// trimSegments removes the leading path prefix (whole segments) from name.
func trimSegments(name, prefix string) string {
	switch {
	case prefix == "":
		return name
	case name == prefix:
		return ""
	case strings.HasPrefix(name, prefix+"/"):
		return name[len(prefix)+1:]
	}
	return name
}

// joinName joins non-empty name parts with "/".
func joinName(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "/" + b
}
