package auth

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/berthreg/berth/pkg/config"
)

// Users of the policy tests, all with password "pw-" + name.
var policyUsers = []string{"alice", "bob", "carol", "dave", "admin", "erin"}

// policyConfig exercises every kind of rule:
//   - "**" gives auditors (dave) read; "team/**" is longer, so it alone
//     applies under team/ and dave reads nothing there;
//   - "team/secret" is exact and beats "team/**": only alice, read-only;
//   - "public/**" lets every authenticated user read and create and
//     anonymous callers read;
//   - admin (a user) and erin (through group ops) are admins.
func policyConfig() *config.AccessControlConfig {
	all := []string{"read", "create", "update", "delete"}
	return &config.AccessControlConfig{
		Repositories: map[string]config.PolicyGroup{
			"**": {Policies: []config.Policy{{Groups: []string{"auditors"}, Actions: []string{"read"}}}},
			"team/**": {Policies: []config.Policy{
				{Users: []string{"alice"}, Actions: all},
				{Groups: []string{"devs"}, Actions: []string{"read", "create"}},
			}},
			"team/secret": {Policies: []config.Policy{{Users: []string{"alice"}, Actions: []string{"read"}}}},
			"public/**":   {DefaultPolicy: []string{"read", "create"}, AnonymousPolicy: []string{"read"}},
		},
		AdminPolicy: config.Policy{Users: []string{"admin"}, Groups: []string{"ops"}, Actions: all},
		Groups: map[string]config.Group{
			"devs":     {Users: []string{"bob"}},
			"auditors": {Users: []string{"dave"}},
			"ops":      {Users: []string{"erin"}},
		},
	}
}

var policyRepos = []string{"team/app", "team/secret", "public/lib", "misc/x"}

// rights is what each caller ("" anonymous) may do on each repository:
// r(ead) c(reate) u(pdate) d(elete).
var rights = map[string]map[string]string{
	"alice": {"team/app": "rcud", "team/secret": "r", "public/lib": "rc"},
	"bob":   {"team/app": "rc", "public/lib": "rc"},
	"carol": {"public/lib": "rc"},
	"dave":  {"public/lib": "rc", "misc/x": "r"},
	"admin": {"team/app": "rcud", "team/secret": "rcud", "public/lib": "rcud", "misc/x": "rcud"},
	"erin":  {"team/app": "rcud", "team/secret": "rcud", "public/lib": "rcud", "misc/x": "rcud"},
	"":      {"public/lib": "r"},
}

// route is one request of the API and the action it needs.
type route struct {
	name   string
	method string
	path   string // {repo}, {manifest}, {layer}, {spare}, {session}
	body   []byte
	header []string
	action string // read, create, update, delete
	ok     int    // status when allowed
}

// repoRoutes covers every repository route and method, ordered so that
// each can run on the same server: reads, then writes, then deletes. Each
// upload route has its own session ({session:NAME}).
func repoRoutes() []route {
	layer := digest.FromBytes(layerData).String()
	newBlob := []byte("pushed by the test")
	nb := digest.FromBytes(newBlob).String()
	mt := []string{"Content-Type", "application/vnd.oci.image.manifest.v1+json"}
	return []route{
		{"tags", "GET", "/v2/{repo}/tags/list", nil, nil, "read", 200},
		{"manifest get", "GET", "/v2/{repo}/manifests/v1", nil, nil, "read", 200},
		{"manifest head", "HEAD", "/v2/{repo}/manifests/v1", nil, nil, "read", 200},
		{"manifest get by digest", "GET", "/v2/{repo}/manifests/" + manifestDigest.String(), nil, nil, "read", 200},
		{"blob get", "GET", "/v2/{repo}/blobs/" + layer, nil, nil, "read", 200},
		{"blob head", "HEAD", "/v2/{repo}/blobs/" + layer, nil, nil, "read", 200},
		{"referrers", "GET", "/v2/{repo}/referrers/" + manifestDigest.String(), nil, nil, "read", 200},
		{"upload status", "GET", "/v2/{repo}/blobs/uploads/{session:get}", nil, nil, "read", 204},
		{"manifest put new tag", "PUT", "/v2/{repo}/manifests/v2", manifestData, mt, "create", 201},
		{"upload start", "POST", "/v2/{repo}/blobs/uploads/", nil, nil, "create", 202},
		{"upload monolithic", "POST", "/v2/{repo}/blobs/uploads/?digest=" + nb, newBlob, []string{"Content-Type", "application/octet-stream"}, "create", 201},
		{"upload patch", "PATCH", "/v2/{repo}/blobs/uploads/{session:patch}", newBlob, []string{"Content-Type", "application/octet-stream"}, "create", 202},
		{"upload put", "PUT", "/v2/{repo}/blobs/uploads/{session:put}?digest=" + nb, newBlob, []string{"Content-Type", "application/octet-stream"}, "create", 201},
		{"upload cancel", "DELETE", "/v2/{repo}/blobs/uploads/{session:cancel}", nil, nil, "create", 204},
		{"manifest put existing tag", "PUT", "/v2/{repo}/manifests/v1", manifestData, mt, "update", 201},
		{"blob delete", "DELETE", "/v2/{repo}/blobs/" + digest.FromBytes(spareData).String(), nil, nil, "delete", 202},
		{"manifest delete", "DELETE", "/v2/{repo}/manifests/" + manifestDigest.String(), nil, nil, "delete", 202},
	}
}

// TestPolicies runs every repository route as every caller on every
// repository and checks the answer against the rights table: the success
// status when allowed, 401 with a challenge for anonymous callers, 403
// DENIED for authenticated ones.
func TestPolicies(t *testing.T) {
	t.Parallel()
	pw := map[string]string{}
	for _, u := range policyUsers {
		pw[u] = "pw-" + u
	}
	az, err := New(Options{
		Auth:          &config.AuthConfig{HTPasswd: &config.HTPasswdConfig{Path: htpasswdFile(t, pw)}},
		AccessControl: policyConfig(),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, user := range append(slices.Clone(policyUsers), "") {
		name := user
		if name == "" {
			name = "anonymous"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			auth := ""
			if user != "" {
				auth = basic(user, pw[user])
			}
			for _, repo := range policyRepos {
				t.Run(repo, func(t *testing.T) {
					s := newServer(t, az, nil, policyRepos...)
					for _, rt := range repoRoutes() {
						path := strings.ReplaceAll(rt.path, "{repo}", repo)
						for _, k := range []string{"get", "patch", "put", "cancel"} {
							if strings.Contains(path, "{session:"+k+"}") {
								path = strings.ReplaceAll(path, "{session:"+k+"}", s.session(t, repo))
							}
						}
						res := s.do(t, rt.method, path, auth, rt.body, rt.header...)
						want := rt.ok
						allowed := strings.Contains(rights[user][repo], rt.action[:1])
						if !allowed {
							want = http.StatusForbidden
							if user == "" {
								want = http.StatusUnauthorized
							}
						}
						if res.status != want {
							t.Errorf("%s (%s %s): status %d, want %d (allowed=%v): %s", rt.name, rt.method, path, res.status, want, allowed, res.body)
							continue
						}
						if allowed {
							continue
						}
						if rt.method != http.MethodHead {
							wantCode := map[int]string{401: "UNAUTHORIZED", 403: "DENIED"}[want]
							if got := errorCode(res.body); got != wantCode {
								t.Errorf("%s: error code %q, want %q (%s)", rt.name, got, wantCode, res.body)
							}
						}
						if ch := res.header.Get("WWW-Authenticate"); (want == 401) != (ch != "") {
							t.Errorf("%s: status %d with WWW-Authenticate %q", rt.name, want, ch)
						}
						if ct := res.header.Get("Content-Type"); ct != "application/json" {
							t.Errorf("%s: Content-Type %q", rt.name, ct)
						}
					}
				})
			}
		})
	}
}

// TestPoliciesBaseAndCatalog checks /v2/ and the catalog, filtered by read
// rights, for every caller.
func TestPoliciesBaseAndCatalog(t *testing.T) {
	t.Parallel()
	pw := map[string]string{}
	for _, u := range policyUsers {
		pw[u] = "pw-" + u
	}
	az, err := New(Options{
		Auth:          &config.AuthConfig{HTPasswd: &config.HTPasswdConfig{Path: htpasswdFile(t, pw)}},
		AccessControl: policyConfig(),
	})
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, az, nil, policyRepos...)
	// Empty Basic credentials are anonymous: public/lib is readable.
	if res := s.do(t, "GET", "/v2/public/lib/manifests/v1", "Basic Og==", nil); res.status != 200 {
		t.Errorf(`"Basic Og==" on public/lib: %s`, res)
	}
	for _, user := range append(slices.Clone(policyUsers), "") {
		auth := ""
		if user != "" {
			auth = basic(user, pw[user])
		}
		for _, m := range []string{"GET", "HEAD"} {
			if res := s.do(t, m, "/v2/", auth, nil); res.status != 200 {
				t.Errorf("%q %s /v2/: %s", user, m, res)
			}
		}
		res := s.do(t, "GET", "/v2/_catalog", auth, nil)
		if res.status != 200 {
			t.Errorf("%q catalog: %s", user, res)
			continue
		}
		var cat struct{ Repositories []string }
		if err := json.Unmarshal(res.body, &cat); err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, repo := range policyRepos {
			if strings.Contains(rights[user][repo], "r") {
				want = append(want, repo)
			}
		}
		slices.Sort(want)
		if !slices.Equal(cat.Repositories, want) {
			t.Errorf("%q catalog = %q, want %q", user, cat.Repositories, want)
		}
		// Paging keeps filtering.
		res = s.do(t, "GET", "/v2/_catalog?n=1", auth, nil)
		if err := json.Unmarshal(res.body, &cat); err != nil || len(want) > 0 && !slices.Equal(cat.Repositories, want[:1]) {
			t.Errorf("%q catalog?n=1 = %s, want %q", user, res.body, want[:1])
		}
	}
}

// TestAuthWithoutAccessControl: any authenticated user may do everything,
// anonymous callers nothing, /v2/ included (zot's behaviour).
func TestAuthWithoutAccessControl(t *testing.T) {
	t.Parallel()
	az, err := New(Options{Auth: &config.AuthConfig{HTPasswd: &config.HTPasswdConfig{
		Path: htpasswdFile(t, map[string]string{"alice": "pw-alice"})}}})
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, az, nil, "any/repo")
	for _, rt := range repoRoutes() {
		path := strings.ReplaceAll(rt.path, "{repo}", "any/repo")
		for _, k := range []string{"get", "patch", "put", "cancel"} {
			path = strings.ReplaceAll(path, "{session:"+k+"}", s.session(t, "any/repo"))
		}
		if res := s.do(t, rt.method, path, "", rt.body, rt.header...); res.status != 401 {
			t.Errorf("anonymous %s: %s, want 401", rt.name, res)
		}
		if res := s.do(t, rt.method, path, basic("alice", "pw-alice"), rt.body, rt.header...); res.status != rt.ok {
			t.Errorf("alice %s: %s, want %d", rt.name, res, rt.ok)
		}
	}
	for _, p := range []string{"/v2/", "/v2/_catalog"} {
		res := s.do(t, "GET", p, "", nil)
		if res.status != 401 || res.header.Get("WWW-Authenticate") != `Basic realm="berth"` || errorCode(res.body) != "UNAUTHORIZED" {
			t.Errorf("anonymous %s: %s %v", p, res, res.header)
		}
		if res := s.do(t, "GET", p, basic("alice", "pw-alice"), nil); res.status != 200 {
			t.Errorf("alice %s: %s", p, res)
		}
	}
	res := s.do(t, "GET", "/v2/_catalog", basic("alice", "pw-alice"), nil)
	if !strings.Contains(string(res.body), `"any/repo"`) {
		t.Errorf("catalog: %s", res.body)
	}
}

// TestAccessControlWithoutAuth: everyone is anonymous; anonymousPolicy
// decides, denials are 403 (no credentials could help), credentials are
// ignored.
func TestAccessControlWithoutAuth(t *testing.T) {
	t.Parallel()
	az, err := New(Options{AccessControl: &config.AccessControlConfig{Repositories: map[string]config.PolicyGroup{
		"open/**": {AnonymousPolicy: []string{"read", "create"}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, az, nil, "open/a", "closed/b")
	cases := []struct {
		method, path, auth string
		want               int
	}{
		{"GET", "/v2/", "", 200},
		{"GET", "/v2/open/a/manifests/v1", "", 200},
		{"GET", "/v2/open/a/manifests/v1", basic("x", "y"), 200},
		{"GET", "/v2/open/a/manifests/v1", "Basic Og==", 200},
		{"POST", "/v2/open/a/blobs/uploads/", "", 202},
		{"DELETE", "/v2/open/a/manifests/v1", "", 403},
		{"GET", "/v2/closed/b/manifests/v1", "", 403},
		{"GET", "/v2/closed/b/manifests/v1", basic("x", "y"), 403},
	}
	for _, c := range cases {
		res := s.do(t, c.method, c.path, c.auth, nil)
		if res.status != c.want {
			t.Errorf("%s %s: %s, want %d", c.method, c.path, res, c.want)
		}
		if res.header.Get("WWW-Authenticate") != "" {
			t.Errorf("%s %s: a challenge without authentication configured", c.method, c.path)
		}
	}
	res := s.do(t, "GET", "/v2/_catalog", "", nil)
	if string(res.body) != `{"repositories":["open/a"]}`+"\n" && string(res.body) != `{"repositories":["open/a"]}` {
		t.Errorf("catalog: %s", res.body)
	}
}

// TestPatternPrecedence pins the choice of pattern: the exact name, else
// the longest matching glob, ties to the first in byte order.
func TestPatternPrecedence(t *testing.T) {
	t.Parallel()
	ac := newAccessControl(&config.AccessControlConfig{Repositories: map[string]config.PolicyGroup{
		"**":     {DefaultPolicy: []string{"p:**"}},
		"a/**":   {DefaultPolicy: []string{"p:a/**"}},
		"a/*":    {DefaultPolicy: []string{"p:a/*"}},
		"a/b":    {DefaultPolicy: []string{"p:a/b"}},
		"a/*/c":  {DefaultPolicy: []string{"p:a/*/c"}},
		"x/[ab]": {DefaultPolicy: []string{"p:x/[ab]"}},
		"x/?":    {DefaultPolicy: []string{"p:x/?"}},
		"y/?":    {DefaultPolicy: []string{"p:y/?"}},
		"y/*":    {DefaultPolicy: []string{"p:y/*"}},
	}})
	cases := []struct{ repo, want string }{
		{"a/b", "a/b"},     // exact beats every glob
		{"a/z", "a/**"},    // a/** (4 bytes) is longer than a/* (3)
		{"a/z/c", "a/*/c"}, // the longest match
		{"a/z/y", "a/**"},  // the only a/ glob that matches
		{"q", "**"},        // the catch-all
		{"x/a", "x/[ab]"},  // longer than x/?
		{"x/c", "x/?"},     // x/[ab] does not match
		{"y/a", "y/*"},     // same length: "y/*" sorts before "y/?"
		{"a", "a/**"},      // ** matches zero segments too
	}
	for _, c := range cases {
		pg, ok := ac.policyGroup(c.repo)
		if !ok || !slices.Equal(pg.DefaultPolicy, []string{"p:" + c.want}) {
			t.Errorf("%s: got %v, want %s", c.repo, pg.DefaultPolicy, c.want)
		}
	}
	none := newAccessControl(&config.AccessControlConfig{Repositories: map[string]config.PolicyGroup{"a/*": {DefaultPolicy: []string{"read"}}}})
	if _, ok := none.policyGroup("b"); ok {
		t.Error("b matched a/*")
	}
	if none.allowed("someone", "b", "read") {
		t.Error("a repository no pattern matches is allowed")
	}
}

// TestMountNeedsRead: a cross-repository mount must not hand a caller a
// blob from a repository they may not read. bob may create in team/app but
// not read team/secret.
func TestMountNeedsRead(t *testing.T) {
	t.Parallel()
	pw := map[string]string{"bob": "pw-bob", "alice": "pw-alice"}
	az, err := New(Options{
		Auth:          &config.AuthConfig{HTPasswd: &config.HTPasswdConfig{Path: htpasswdFile(t, pw)}},
		AccessControl: policyConfig(),
	})
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, az, nil, "team/app")
	secret := []byte("only team/secret holds this")
	s.seedBlob(t, "team/secret", secret)
	d := digest.FromBytes(secret).String()
	for _, q := range []string{"?mount=" + d + "&from=team/secret", "?mount=" + d} {
		res := s.do(t, "POST", "/v2/team/app/blobs/uploads/"+q, basic("bob", pw["bob"]), nil)
		if res.status == http.StatusCreated {
			t.Errorf("bob mounted %s: %s", q, res)
		}
		if res := s.do(t, "GET", "/v2/team/app/blobs/"+d, basic("bob", pw["bob"]), nil); res.status == 200 {
			t.Errorf("bob reads team/secret's blob through team/app after mount %s", q)
		}
	}
	// alice may read team/secret: her mount works.
	if res := s.do(t, "POST", "/v2/team/app/blobs/uploads/?mount="+d+"&from=team/secret", basic("alice", pw["alice"]), nil); res.status != http.StatusCreated {
		t.Errorf("alice's mount: %s", res)
	}
}
