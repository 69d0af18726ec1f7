package config

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// authFiles creates an htpasswd file and a certificate file (contents are
// not checked here) and returns their paths, JSON-quoted.
func authFiles(t *testing.T) (htpasswd, cert string) {
	t.Helper()
	dir := t.TempDir()
	h, c := filepath.Join(dir, "htpasswd"), filepath.Join(dir, "token.crt")
	for _, p := range []string{h, c} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return fmt.Sprintf("%q", h), fmt.Sprintf("%q", c)
}

func TestParseAuth(t *testing.T) {
	t.Parallel()
	h, c := authFiles(t)
	doc := `{"http": {
	  "Auth": {"HTPasswd": {"Path": ` + h + `}, "bearer": {"realm": "https://auth.example/token", "service": "reg", "cert": ` + c + `}, "failDelay": 3},
	  "AccessControl": {
	    "Repositories": {
	      "**": {"Policies": [{"Users": ["a"], "Groups": ["g"], "Actions": ["Read", "CREATE"]}], "DefaultPolicy": ["read"], "AnonymousPolicy": ["read"]},
	      "team/*": {"defaultpolicy": ["update", "delete"]}
	    },
	    "AdminPolicy": {"users": ["root"], "actions": ["read", "create", "update", "delete"]},
	    "Groups": {"g": {"Users": ["b", "c"]}}
	  }}}`
	cfg, warns, err := Parse([]byte(doc), "json")
	if err != nil {
		t.Fatal(err)
	}
	if len(warns) != 0 {
		t.Errorf("warnings: %q", warns)
	}
	a, ac := cfg.HTTP.Auth, cfg.HTTP.AccessControl
	if a == nil || a.HTPasswd == nil || a.HTPasswd.Path == "" || a.Bearer == nil || a.Bearer.Service != "reg" || a.FailDelay != 3 {
		t.Fatalf("auth = %+v", a)
	}
	if ac == nil || len(ac.Repositories) != 2 {
		t.Fatalf("accessControl = %+v", ac)
	}
	all := ac.Repositories["**"]
	if !slices.Equal(all.Policies[0].Actions, []string{"read", "create"}) || !slices.Equal(all.Policies[0].Groups, []string{"g"}) ||
		!slices.Equal(all.DefaultPolicy, []string{"read"}) || !slices.Equal(all.AnonymousPolicy, []string{"read"}) {
		t.Errorf(`repositories["**"] = %+v`, all)
	}
	if !slices.Equal(ac.Repositories["team/*"].DefaultPolicy, []string{"update", "delete"}) {
		t.Errorf(`repositories["team/*"] = %+v`, ac.Repositories["team/*"])
	}
	if !slices.Equal(ac.AdminPolicy.Users, []string{"root"}) || !slices.Equal(ac.Groups["g"].Users, []string{"b", "c"}) {
		t.Errorf("adminPolicy/groups = %+v %+v", ac.AdminPolicy, ac.Groups)
	}
	if !cfg.HTTP.AuthEnabled() || Default().HTTP.AuthEnabled() {
		t.Error("AuthEnabled")
	}
}

func TestParseAuthErrors(t *testing.T) {
	t.Parallel()
	h, c := authFiles(t)
	bearer := func(realm, service, cert string) string {
		return fmt.Sprintf(`{"http": {"auth": {"bearer": {"realm": %q, "service": %q, "cert": %s}}}}`, realm, service, cert)
	}
	tests := []struct {
		name, doc string
		want      []string
	}{
		{"empty auth", `{"http": {"auth": {}}}`, []string{"http.auth: needs htpasswd.path or bearer"}},
		{"only failDelay", `{"http": {"auth": {"failDelay": 1}}}`, []string{"http.auth: needs htpasswd.path or bearer"}},
		{"ldap only", `{"http": {"auth": {"ldap": {"address": "x"}}}}`, []string{"http.auth: needs htpasswd.path or bearer"}},
		{"htpasswd missing", `{"http": {"auth": {"htpasswd": {"path": "/nonexistent/htpasswd"}}}}`,
			[]string{`http.auth.htpasswd.path: file "/nonexistent/htpasswd" does not exist`}},
		{"failDelay negative", `{"http": {"auth": {"htpasswd": {"path": ` + h + `}, "failDelay": -1}}}`,
			[]string{"http.auth.failDelay: must be 0..60 seconds, got -1"}},
		{"failDelay too long", `{"http": {"auth": {"htpasswd": {"path": ` + h + `}, "failDelay": 600}}}`,
			[]string{"http.auth.failDelay: must be 0..60"}},
		{"failDelay not a number", `{"http": {"auth": {"htpasswd": {"path": ` + h + `}, "failDelay": "2s"}}}`,
			[]string{"http.auth.failDelay: must be an integer"}},
		{"bearer empty", `{"http": {"auth": {"bearer": {}}}}`,
			[]string{"http.auth.bearer.realm: must be set", "http.auth.bearer.service: must be set", "http.auth.bearer.cert: must be set"}},
		{"bearer realm not a URL", bearer("auth.example", "s", c), []string{"http.auth.bearer.realm: must be an http:// or https:// URL"}},
		{"bearer realm quote", bearer(`https://a/"t`, "s", c), []string{"http.auth.bearer.realm: must not contain quotes"}},
		{"bearer service quote", bearer("https://a/t", `s"x`, c), []string{"http.auth.bearer.service: must not contain quotes"}},
		{"bearer cert missing", bearer("https://a/t", "s", `"/nonexistent/c"`), []string{"http.auth.bearer.cert: file"}},
		{"unknown auth key", `{"http": {"auth": {"htpasswd": {"path": ` + h + `}, "htpassword": {}}}}`,
			[]string{`http.auth.htpassword: unknown key (did you mean "htpasswd"?)`}},
		{"bad action", `{"http": {"accessControl": {"repositories": {"**": {"defaultPolicy": ["read", "push"]}}}}}`,
			[]string{`http.accessControl.repositories["**"].defaultPolicy[1]: must be one of read, create, update, delete, got "push"`}},
		{"bad policy action", `{"http": {"accessControl": {"repositories": {"a/**": {"policies": [{"users": ["u"], "actions": ["pull"]}]}}}}}`,
			[]string{`http.accessControl.repositories["a/**"].policies[0].actions[0]: must be one of`}},
		{"bad anonymous action", `{"http": {"accessControl": {"repositories": {"a": {"anonymousPolicy": ["*"]}}}}}`,
			[]string{`http.accessControl.repositories["a"].anonymousPolicy[0]: must be one of`}},
		{"bad admin action", `{"http": {"accessControl": {"adminPolicy": {"users": ["u"], "actions": ["all"]}}}}`,
			[]string{`http.accessControl.adminPolicy.actions[0]: must be one of`}},
		{"bad glob", `{"http": {"accessControl": {"repositories": {"a/[": {"defaultPolicy": ["read"]}}}}}`,
			[]string{`http.accessControl.repositories["a/["]: invalid glob`}},
		{"empty user", `{"http": {"accessControl": {"repositories": {"a": {"policies": [{"users": [""], "actions": ["read"]}]}}}}}`,
			[]string{`http.accessControl.repositories["a"].policies[0].users[0]: must not be empty`}},
		{"unknown key in a repository", `{"http": {"accessControl": {"repositories": {"a/**": {"defaultPolicies": ["read"]}}}}}`,
			[]string{`http.accessControl.repositories["a/**"].defaultPolicies: unknown key (did you mean "defaultPolicy"?)`}},
		{"repository not an object", `{"http": {"accessControl": {"repositories": {"a/**": ["read"]}}}}`,
			[]string{`http.accessControl.repositories["a/**"]: must be an object, got list`}},
		{"repositories not an object", `{"http": {"accessControl": {"repositories": ["a"]}}}`,
			[]string{`http.accessControl.repositories: must be an object, got list`}},
		{"old zot layout", `{"http": {"accessControl": {"**": {"defaultPolicy": ["read"]}}}}`,
			[]string{`http.accessControl.**: unknown key`}},
		{"group users not a list", `{"http": {"accessControl": {"groups": {"g": {"users": "u"}}}}}`,
			[]string{`http.accessControl.groups["g"].users: must be a list`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, _, err := Parse([]byte(tt.doc), "json")
			if c != nil {
				t.Error("config returned with an error")
			}
			wantErrContaining(t, err, tt.want...)
		})
	}
}

// TestParseAuthYAML reads the shape zot's documentation shows, in YAML.
func TestParseAuthYAML(t *testing.T) {
	t.Parallel()
	h, _ := authFiles(t)
	doc := `
http:
  auth:
    htpasswd:
      path: ` + h + `
    failDelay: 1
  accessControl:
    repositories:
      "**":
        policies:
          - users: [charlie]
            actions: [read, create, update]
        defaultPolicy: [read, create]
      "tmp/**":
        anonymousPolicy: [read]
    adminPolicy:
      users: [admin]
      actions: [read, create, update, delete]
`
	cfg, warns, err := Parse([]byte(doc), "yaml")
	if err != nil || len(warns) > 0 {
		t.Fatalf("Parse: %v %q", err, warns)
	}
	if got := cfg.HTTP.AccessControl.Repositories["tmp/**"].AnonymousPolicy; !slices.Equal(got, []string{"read"}) {
		t.Errorf("tmp/** anonymousPolicy = %q", got)
	}
	if !strings.HasSuffix(cfg.HTTP.Auth.HTPasswd.Path, "htpasswd") {
		t.Errorf("htpasswd path %q", cfg.HTTP.Auth.HTPasswd.Path)
	}
}
