package config

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Actions of an access-control policy (zot's names).
const (
	ActionRead   = "read"
	ActionCreate = "create"
	ActionUpdate = "update"
	ActionDelete = "delete"
)

// Actions lists every action a policy may grant.
var Actions = []string{ActionRead, ActionCreate, ActionUpdate, ActionDelete}

// MaxFailDelay bounds http.auth.failDelay (seconds).
const MaxFailDelay = 60

// AuthConfig is http.auth: how callers prove who they are. At least one of
// HTPasswd and Bearer must be set; zot's ldap, openid and apikey methods are
// not implemented (dropped with a warning), and an auth block left with no
// method is an error rather than an open registry.
type AuthConfig struct {
	// HTPasswd authenticates HTTP Basic credentials against a file of
	// bcrypt entries.
	HTPasswd *HTPasswdConfig `json:"htpasswd,omitempty"`
	// Bearer accepts tokens signed by an external token server.
	Bearer *BearerConfig `json:"bearer,omitempty"`
	// FailDelay is how many seconds a failed authentication waits before it
	// is answered, 0..60. Default 0.
	FailDelay int `json:"failDelay,omitempty"`
}

// HTPasswdConfig is http.auth.htpasswd.
type HTPasswdConfig struct {
	// Path is the htpasswd file: "user:bcrypt-hash" lines (htpasswd -B).
	// It is reread when it changes. Empty means no htpasswd (as in zot).
	Path string `json:"path"`
}

// BearerConfig is http.auth.bearer: the docker/distribution token flow.
type BearerConfig struct {
	// Realm is the token server URL clients are sent to.
	Realm string `json:"realm"`
	// Service names this registry to the token server; tokens must carry it
	// as their audience.
	Service string `json:"service"`
	// Cert is a PEM file with the certificate (or public key) whose key
	// signs the tokens; several certificates are all accepted.
	Cert string `json:"cert"`
}

// AccessControlConfig is http.accessControl: who may do what where.
type AccessControlConfig struct {
	// Repositories maps a repository glob to its policies. The policies
	// of the most specific glob matching a repository apply (see
	// docs/config.md).
	Repositories map[string]PolicyGroup `json:"repositories,omitempty"`
	// AdminPolicy grants its actions on every repository.
	AdminPolicy Policy `json:"adminPolicy"`
	// Groups maps a group name to its members.
	Groups map[string]Group `json:"groups,omitempty"`
}

// PolicyGroup is the access to the repositories of one glob.
type PolicyGroup struct {
	// Policies grant actions to users and groups.
	Policies []Policy `json:"policies,omitempty"`
	// DefaultPolicy is what every authenticated user may do.
	DefaultPolicy []string `json:"defaultPolicy,omitempty"`
	// AnonymousPolicy is what a caller without credentials may do.
	AnonymousPolicy []string `json:"anonymousPolicy,omitempty"`
}

// Policy grants actions to users and to the members of groups.
type Policy struct {
	Users   []string `json:"users,omitempty"`
	Groups  []string `json:"groups,omitempty"`
	Actions []string `json:"actions,omitempty"`
}

// Group is one entry of http.accessControl.groups.
type Group struct {
	Users []string `json:"users,omitempty"`
}

// setDefaults lower-cases the actions, which zot compares exactly.
func (a *AccessControlConfig) setDefaults() {
	lower := func(s []string) {
		for i := range s {
			s[i] = strings.ToLower(s[i])
		}
	}
	for _, pg := range a.Repositories {
		lower(pg.DefaultPolicy)
		lower(pg.AnonymousPolicy)
		for _, p := range pg.Policies {
			lower(p.Actions)
		}
	}
	lower(a.AdminPolicy.Actions)
}

// check validates http.auth.
func (a *AuthConfig) check(p *problems) {
	if (a.HTPasswd == nil || a.HTPasswd.Path == "") && a.Bearer == nil {
		p.add("http.auth", "needs htpasswd.path or bearer (ldap, openid and apikey are not supported); "+
			"remove the block to serve without authentication")
	}
	if a.HTPasswd != nil {
		checkFile(p, "http.auth.htpasswd.path", a.HTPasswd.Path)
	}
	if b := a.Bearer; b != nil {
		if b.Realm == "" {
			p.add("http.auth.bearer.realm", "must be set (the token server URL)")
		} else {
			checkHTTPURL(p, "http.auth.bearer.realm", b.Realm)
			checkQuotable(p, "http.auth.bearer.realm", b.Realm)
		}
		if b.Service == "" {
			p.add("http.auth.bearer.service", "must be set")
		} else {
			checkQuotable(p, "http.auth.bearer.service", b.Service)
		}
		if b.Cert == "" {
			p.add("http.auth.bearer.cert", "must be set (the token signing certificate)")
		}
		checkFile(p, "http.auth.bearer.cert", b.Cert)
	}
	if a.FailDelay < 0 || a.FailDelay > MaxFailDelay {
		p.add("http.auth.failDelay", "must be 0..%d seconds, got %d", MaxFailDelay, a.FailDelay)
	}
}

// check validates http.accessControl.
func (a *AccessControlConfig) check(p *problems) {
	globs := make([]string, 0, len(a.Repositories))
	for g := range a.Repositories {
		globs = append(globs, g)
	}
	sort.Strings(globs)
	for _, g := range globs {
		field := fmt.Sprintf("http.accessControl.repositories[%q]", g)
		checkGlob(p, field, g)
		pg := a.Repositories[g]
		for i, pol := range pg.Policies {
			pol.check(p, fmt.Sprintf("%s.policies[%d]", field, i))
		}
		checkActions(p, field+".defaultPolicy", pg.DefaultPolicy)
		checkActions(p, field+".anonymousPolicy", pg.AnonymousPolicy)
	}
	a.AdminPolicy.check(p, "http.accessControl.adminPolicy")
	for name := range a.Groups {
		if name == "" {
			p.add("http.accessControl.groups", "a group name must not be empty")
		}
	}
}

// check validates one policy.
func (pol Policy) check(p *problems, field string) {
	checkActions(p, field+".actions", pol.Actions)
	for i, u := range pol.Users {
		if u == "" {
			p.add(fmt.Sprintf("%s.users[%d]", field, i), "must not be empty")
		}
	}
	for i, g := range pol.Groups {
		if g == "" {
			p.add(fmt.Sprintf("%s.groups[%d]", field, i), "must not be empty")
		}
	}
}

// checkQuotable records a problem when s cannot sit inside a quoted
// WWW-Authenticate parameter as is.
func checkQuotable(p *problems, field, s string) {
	for _, r := range s {
		if r == '"' || r == '\\' || r < 0x20 || r == 0x7f {
			p.add(field, "must not contain quotes, backslashes or control characters, got %q", s)
			return
		}
	}
}

// checkActions records a problem for every action that is not one of
// Actions.
func checkActions(p *problems, field string, actions []string) {
	for i, a := range actions {
		if !slices.Contains(Actions, a) {
			p.add(fmt.Sprintf("%s[%d]", field, i), "must be one of %s, got %q", strings.Join(Actions, ", "), a)
		}
	}
}
