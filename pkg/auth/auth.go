// Package auth authenticates registry callers (HTTP Basic against an
// htpasswd file, bearer tokens from an external token server) and
// authorises them per repository (zot's http.accessControl). Its Authorizer
// is what pkg/api calls on every request, on the member a client reached and
// again on the member that serves the request: the client's Authorization
// header travels with a forwarded request and nothing else is trusted, so a
// hop never carries more rights than the client had.
//
// Passwords and tokens are never logged; user names and outcomes are.
package auth

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/config"
)

// DefaultRealm is the realm of the Basic challenge.
const DefaultRealm = "berth"

// Options configures an Authorizer.
type Options struct {
	// Auth is http.auth; nil means no authentication (every caller is
	// anonymous and only accessControl's anonymousPolicy grants anything).
	Auth *config.AuthConfig
	// AccessControl is http.accessControl; nil with Auth means an
	// authenticated caller may do everything and an anonymous one nothing.
	AccessControl *config.AccessControlConfig
	// Realm is the realm of the Basic challenge (default DefaultRealm).
	Realm string
	// Issuer, when set, is the only "iss" accepted in bearer tokens.
	Issuer string
	// Log receives htpasswd reloads; per-request events go to the request
	// logger (zerolog.Ctx).
	Log zerolog.Logger
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

// Authorizer implements api.Authorizer (pkg/api).
type Authorizer struct {
	basic     *htpasswd      // nil: Basic credentials are not accepted
	bearer    *tokenVerifier // nil: tokens are not accepted
	realm     string         // Bearer: token server URL; else the Basic realm
	service   string
	ac        *accessControl // nil: no accessControl
	authn     bool           // http.auth is configured
	failDelay time.Duration
	now       func() time.Time
}

// New returns an Authorizer for the http.auth and http.accessControl
// configuration. At least one of the two must be set. Files are read now:
// an htpasswd line that is not user:bcrypt, or a bearer certificate without
// a usable key, is an error.
func New(opts Options) (*Authorizer, error) {
	if opts.Auth == nil && opts.AccessControl == nil {
		return nil, errors.New("auth: neither http.auth nor http.accessControl is configured")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Realm == "" {
		opts.Realm = DefaultRealm
	}
	a := &Authorizer{realm: opts.Realm, ac: newAccessControl(opts.AccessControl), now: opts.Now}
	if c := opts.Auth; c != nil {
		a.authn = true
		a.failDelay = time.Duration(c.FailDelay) * time.Second
		if c.HTPasswd != nil && c.HTPasswd.Path != "" {
			h, err := newHTPasswd(c.HTPasswd.Path, opts.Log, opts.Now)
			if err != nil {
				return nil, fmt.Errorf("http.auth.htpasswd.path: %w", err)
			}
			a.basic = h
		}
		if b := c.Bearer; b != nil {
			keys, err := loadVerificationKeys(b.Cert)
			if err != nil {
				return nil, fmt.Errorf("http.auth.bearer.cert: %w", err)
			}
			a.bearer = &tokenVerifier{keys: keys, service: b.Service, issuer: opts.Issuer}
			a.realm, a.service = b.Realm, b.Service
		}
		if a.basic == nil && a.bearer == nil {
			return nil, errors.New("http.auth: needs htpasswd.path or bearer")
		}
	}
	return a, nil
}

// identity is who a request comes from.
type identity struct {
	user   string       // "" anonymous; the token's subject for bearer
	claims *tokenClaims // set for bearer tokens
}

func (id identity) anonymous() bool { return id.user == "" && id.claims == nil }

// outcome of authentication.
type outcome int

const (
	authOK      outcome = iota // identified, or anonymous
	authFailed                 // wrong credentials: 401 after failDelay
	authBadHead                // oversized or repeated header: 400
)

// authenticate identifies the caller of r. reason explains a failure and
// never holds a secret.
func (a *Authorizer) authenticate(r *http.Request) (identity, outcome, string) {
	vals := r.Header.Values("Authorization")
	if len(vals) == 0 {
		return identity{}, authOK, ""
	}
	if len(vals) > 1 {
		return identity{}, authBadHead, "more than one Authorization header"
	}
	if len(vals[0]) > MaxHeaderBytes {
		return identity{}, authBadHead, "Authorization header too large"
	}
	if !a.authn {
		return identity{}, authOK, "" // no authentication configured: credentials are ignored
	}
	cr, err := parseAuthorization(vals[0])
	if err != nil {
		return identity{}, authFailed, err.Error()
	}
	switch {
	case cr.scheme == schemeNone:
		return identity{}, authOK, ""
	case cr.scheme == schemeBasic && cr.user == "" && cr.password == "":
		return identity{}, authOK, "" // "Basic Og==": no credentials
	case cr.scheme == schemeBasic && a.basic != nil:
		if cr.user == "" || !a.basic.check(cr.user, cr.password) {
			return identity{user: cr.user}, authFailed, "wrong user name or password"
		}
		return identity{user: cr.user}, authOK, ""
	case cr.scheme == schemeBearer && a.bearer != nil:
		c, err := a.bearer.verify(cr.token, a.now())
		if err != nil {
			return identity{}, authFailed, err.Error()
		}
		user := c.Subject
		if user == "" {
			user = "(token)"
		}
		return identity{user: user, claims: c}, authOK, ""
	}
	return identity{}, authFailed, fmt.Sprintf("%.16q credentials not accepted", cr.scheme)
}

// Authorize implements api.Authorizer.
func (a *Authorizer) Authorize(w http.ResponseWriter, r *http.Request, repo, action string) bool {
	log := zerolog.Ctx(r.Context())
	id, res, reason := a.authenticate(r)
	if res == authOK && id.user != "" && log != zerolog.DefaultContextLogger {
		// The request's access log line names the user.
		user := truncate(id.user, 128)
		log.UpdateContext(func(c zerolog.Context) zerolog.Context { return c.Str("user", user) })
	}
	switch res {
	case authBadHead:
		log.Warn().Str("reason", reason).Msg("authentication refused")
		a.writeError(w, r, http.StatusBadRequest, errcode.ErrorCodeUnauthorized, reason, "")
		return false
	case authFailed:
		ev := log.Warn().Str("reason", reason)
		if id.user != "" {
			ev = ev.Str("user", truncate(id.user, 128))
		}
		ev.Msg("authentication failed")
		a.delay(r)
		tokenErr := ""
		if v := r.Header.Get("Authorization"); len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
			tokenErr = "invalid_token"
		}
		a.challenge(w, r, repo, action, tokenErr, "authentication failed")
		return false
	}
	if a.allowed(id, repo, action) {
		return true
	}
	switch {
	case id.anonymous() && a.authn:
		log.Debug().Str("action", action).Msg("authentication required")
		a.challenge(w, r, repo, action, "", "authentication required")
	case id.claims != nil:
		log.Info().Str("action", action).Msg("token does not grant the access")
		a.challenge(w, r, repo, action, "insufficient_scope", "token does not grant "+action+" access")
	default:
		log.Info().Str("action", action).Msg("access denied")
		msg := "access denied"
		if repo != "" {
			msg = fmt.Sprintf("%s access to %s denied", action, repo)
		}
		a.writeError(w, r, http.StatusForbidden, errcode.ErrorCodeDenied, msg, "")
	}
	return false
}

// allowed decides for an identified caller. repo "" is /v2/ or the catalog:
// any authenticated caller may reach them, an anonymous one when no
// authentication is configured or some repository has an anonymousPolicy.
func (a *Authorizer) allowed(id identity, repo, action string) bool {
	if repo == "" {
		return !id.anonymous() || !a.authn || (a.ac != nil && a.ac.anonymous)
	}
	if !slices.Contains(config.Actions, action) {
		return false
	}
	if id.claims != nil {
		return id.claims.grants(repo, action)
	}
	if a.ac == nil {
		return !id.anonymous()
	}
	return a.ac.allowed(id.user, repo, action)
}

// FilterRepos implements api.Authorizer: it keeps the repositories the
// caller of r may read. A token with registry:catalog:* sees them all.
func (a *Authorizer) FilterRepos(r *http.Request, repos []string) []string {
	id, res, _ := a.authenticate(r)
	if res != authOK {
		return nil
	}
	if id.claims != nil && id.claims.catalog() {
		return repos
	}
	var out []string
	for _, repo := range repos {
		if a.allowed(id, repo, actionRead) {
			out = append(out, repo)
		}
	}
	return out
}

// delay waits failDelay, or until the client goes away. Each request has
// its own timer: a slow answer to one never holds up another.
func (a *Authorizer) delay(r *http.Request) {
	if a.failDelay <= 0 {
		return
	}
	t := time.NewTimer(a.failDelay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	}
}

// challenge answers 401 UNAUTHORIZED with the WWW-Authenticate header
// clients expect: Basic with the realm, or, with a token server, Bearer
// with realm, service and the scope the request needs (and the error, for
// a token that was refused or falls short).
func (a *Authorizer) challenge(w http.ResponseWriter, r *http.Request, repo, action, tokenErr, msg string) {
	var ch string
	if a.bearer != nil {
		ch = "Bearer realm=" + quoted(a.realm) + ",service=" + quoted(a.service)
		if s := scope(r, repo, action); s != "" {
			ch += ",scope=" + quoted(s)
		}
		if tokenErr != "" {
			ch += ",error=" + quoted(tokenErr)
		}
	} else {
		ch = "Basic realm=" + quoted(a.realm)
	}
	a.writeError(w, r, http.StatusUnauthorized, errcode.ErrorCodeUnauthorized, msg, ch)
}

// quoted is s as an RFC 9110 quoted-string.
func quoted(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}

// scope is the token scope a request needs, as distribution names it.
func scope(r *http.Request, repo, action string) string {
	if repo == "" {
		if strings.HasSuffix(strings.TrimSuffix(r.URL.Path, "/"), "/_catalog") {
			return "registry:catalog:*"
		}
		return ""
	}
	switch action {
	case actionRead:
		return "repository:" + repo + ":pull"
	case actionCreate, actionUpdate:
		return "repository:" + repo + ":pull,push"
	case actionDelete:
		return "repository:" + repo + ":delete"
	}
	return ""
}

// writeError answers with the spec's JSON error body (none for HEAD).
func (a *Authorizer) writeError(w http.ResponseWriter, r *http.Request, status int, code errcode.ErrorCode, msg, challenge string) {
	body, _ := json.Marshal(errcode.Errors{errcode.Error{Code: code, Message: msg}})
	h := w.Header()
	if challenge != "" {
		h.Set("WWW-Authenticate", challenge)
	}
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}
