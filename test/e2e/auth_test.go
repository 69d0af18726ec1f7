package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Users of the auth tests and their passwords.
var authUsers = map[string]string{
	"alice":  "alice-Pw-7c1e",  // read, create, update, delete under auth/
	"reader": "reader-Pw-44b2", // read under auth/
	"admin":  "admin-Pw-90fa",  // adminPolicy: everything everywhere
}

func authAccessControl() map[string]any {
	all := []string{"read", "create", "update", "delete"}
	return map[string]any{
		"repositories": map[string]any{
			"auth/**": map[string]any{"policies": []any{
				map[string]any{"users": []string{"alice"}, "actions": all},
				map[string]any{"users": []string{"reader"}, "actions": []string{"read"}},
			}},
		},
		"adminPolicy": map[string]any{"users": []string{"admin"}, "actions": all},
	}
}

// TestAuthClients runs the registry over TLS with htpasswd authentication
// and access control, and drives it with crane, skopeo, oras and regctl
// logging in as a read-write user, a read-only user and nobody.
func TestAuthClients(t *testing.T) {
	r := startAuthRegistry(t, authUsers, authAccessControl())
	crane, skopeo, oras, regctl := tool(t, "crane"), tool(t, "skopeo"), tool(t, "oras"), tool(t, "regctl")
	alice, reader, admin := "alice", "reader", "admin"
	pw := authUsers
	work := t.TempDir()
	layer := filepath.Join(work, "layer.tar")
	writeAuthLayer(t, layer, "pushed with credentials")
	layout := filepath.Join(work, "layout") // OCI layout of auth/crane:v1
	var digest string

	t.Run("probe", func(t *testing.T) {
		st, h, body := r.get(t, "GET", "/v2/", "", "")
		if st != http.StatusUnauthorized || h.Get("WWW-Authenticate") != `Basic realm="berth"` || !strings.Contains(string(body), `"UNAUTHORIZED"`) {
			t.Errorf("anonymous /v2/: %d %q %s", st, h.Get("WWW-Authenticate"), body)
		}
		if st, _, body := r.get(t, "GET", "/v2/", alice, pw[alice]); st != http.StatusOK {
			t.Errorf("alice /v2/: %d %s", st, body)
		}
		if st, _, _ := r.get(t, "GET", "/v2/", alice, "wrong"); st != http.StatusUnauthorized {
			t.Errorf("alice with a wrong password /v2/: %d", st)
		}
	})

	t.Run("crane", func(t *testing.T) {
		r.must(t, crane, "auth", "login", r.Host, "-u", alice, "-p", pw[alice])
		img := r.Host + "/auth/crane:v1"
		r.must(t, crane, "append", "--oci-empty-base", "-f", layer, "-t", img)
		digest = strings.TrimSpace(r.must(t, crane, "digest", img))
		if !strings.HasPrefix(digest, "sha256:") {
			t.Fatalf("crane digest: %q", digest)
		}
		r.must(t, crane, "pull", "--format", "oci", img, layout)
		r.must(t, crane, "tag", img, "v2")
		if tags := lines(r.must(t, crane, "ls", r.Host+"/auth/crane")); !slices.Equal(tags, []string{"v1", "v2"}) {
			t.Errorf("crane ls: %q", tags)
		}
	})
	if digest == "" {
		t.Fatal("no image pushed")
	}

	t.Run("skopeo", func(t *testing.T) {
		sk := []string{skopeo, "--insecure-policy"}
		r.must(t, append(sk, "copy", "--dest-creds", alice+":"+pw[alice], "--dest-cert-dir", r.PKI.CertDir,
			"oci:"+layout, "docker://"+r.Host+"/auth/skopeo:v1")...)
		var insp struct{ Digest string }
		out := r.must(t, append(sk, "inspect", "--creds", alice+":"+pw[alice], "--cert-dir", r.PKI.CertDir,
			"docker://"+r.Host+"/auth/skopeo:v1")...)
		if err := json.Unmarshal([]byte(out), &insp); err != nil || insp.Digest != digest {
			t.Errorf("skopeo inspect: %v %q, want digest %s", err, out, digest)
		}
		r.must(t, append(sk, "copy", "--src-creds", alice+":"+pw[alice], "--src-cert-dir", r.PKI.CertDir,
			"docker://"+r.Host+"/auth/skopeo:v1", "oci:"+filepath.Join(t.TempDir(), "out")+":v1")...)
	})

	t.Run("oras", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "artifact.txt"), []byte("oras artifact"), 0o644); err != nil {
			t.Fatal(err)
		}
		ref := r.Host + "/auth/oras:v1"
		res := execCmd(context.Background(), r.env(t), dir, cmdTimeout,
			oras, "push", "--ca-file", r.PKI.CA, "-u", alice, "-p", pw[alice], ref, "artifact.txt")
		if res.Err != nil {
			t.Fatalf("oras push: %v\n%s", res.Err, res.Combined)
		}
		out := t.TempDir()
		r.must(t, oras, "pull", "--ca-file", r.PKI.CA, "-u", alice, "-p", pw[alice], "-o", out, ref)
		if b, err := os.ReadFile(filepath.Join(out, "artifact.txt")); err != nil || string(b) != "oras artifact" {
			t.Errorf("oras pull: %q %v", b, err)
		}
		// login stores the credentials; later commands use them.
		r.mustFail(t, oras, "login", "--ca-file", r.PKI.CA, "-u", alice, "-p", "wrong", r.Host)
		r.must(t, oras, "login", "--ca-file", r.PKI.CA, "-u", alice, "-p", pw[alice], r.Host)
		if tags := lines(r.must(t, oras, "repo", "tags", "--ca-file", r.PKI.CA, r.Host+"/auth/oras")); !slices.Equal(tags, []string{"v1"}) {
			t.Errorf("oras repo tags: %q", tags)
		}
	})

	t.Run("regctl", func(t *testing.T) {
		ca, err := os.ReadFile(r.PKI.CA)
		if err != nil {
			t.Fatal(err)
		}
		r.must(t, regctl, "registry", "set", "--skip-check", r.Host, "--cacert", string(ca))
		r.must(t, regctl, "registry", "login", r.Host, "-u", alice, "-p", pw[alice])
		r.must(t, regctl, "image", "copy", r.Host+"/auth/crane:v1", r.Host+"/auth/regctl:v1")
		if d := strings.TrimSpace(r.must(t, regctl, "image", "digest", r.Host+"/auth/regctl:v1")); d != digest {
			t.Errorf("regctl image digest: %s, want %s", d, digest)
		}
		r.must(t, regctl, "tag", "delete", r.Host+"/auth/crane:v2")
		if tags := lines(r.must(t, regctl, "tag", "ls", r.Host+"/auth/crane")); !slices.Equal(tags, []string{"v1"}) {
			t.Errorf("regctl tag ls after delete: %q", tags)
		}
	})

	t.Run("read-only user", func(t *testing.T) {
		sk := []string{skopeo, "--insecure-policy"}
		creds := reader + ":" + pw[reader]
		r.must(t, append(sk, "inspect", "--creds", creds, "--cert-dir", r.PKI.CertDir, "docker://"+r.Host+"/auth/crane:v1")...)
		r.must(t, append(sk, "copy", "--src-creds", creds, "--src-cert-dir", r.PKI.CertDir,
			"docker://"+r.Host+"/auth/crane:v1", "oci:"+filepath.Join(t.TempDir(), "out")+":v1")...)
		out := r.mustFail(t, append(sk, "copy", "--dest-creds", creds, "--dest-cert-dir", r.PKI.CertDir,
			"oci:"+layout, "docker://"+r.Host+"/auth/by-reader:v1")...)
		requireDenied(t, "skopeo copy as reader", out)

		r.must(t, crane, "auth", "login", r.Host, "-u", reader, "-p", pw[reader])
		r.must(t, crane, "pull", "--format", "oci", r.Host+"/auth/crane:v1", filepath.Join(t.TempDir(), "pulled"))
		out = r.mustFail(t, crane, "append", "--oci-empty-base", "-f", layer, "-t", r.Host+"/auth/by-reader:v1")
		requireDenied(t, "crane append as reader", out)
		out = r.mustFail(t, crane, "delete", r.Host+"/auth/crane@"+digest)
		requireDenied(t, "crane delete as reader", out)

		o := t.TempDir()
		r.must(t, oras, "pull", "--ca-file", r.PKI.CA, "-u", reader, "-p", pw[reader], "-o", o, r.Host+"/auth/oras:v1")
		dir := t.TempDir()
		_ = os.WriteFile(filepath.Join(dir, "f.txt"), []byte("x"), 0o644)
		res := execCmd(context.Background(), r.env(t), dir, cmdTimeout,
			oras, "push", "--ca-file", r.PKI.CA, "-u", reader, "-p", pw[reader], r.Host+"/auth/by-reader:v1", "f.txt")
		if res.Err == nil {
			t.Errorf("oras push as reader succeeded")
		} else {
			requireDenied(t, "oras push as reader", res.Combined)
		}

		ca, _ := os.ReadFile(r.PKI.CA)
		r.must(t, regctl, "registry", "set", "--skip-check", r.Host, "--cacert", string(ca))
		r.must(t, regctl, "registry", "login", r.Host, "-u", reader, "-p", pw[reader])
		r.must(t, regctl, "manifest", "get", r.Host+"/auth/crane:v1")
		out = r.mustFail(t, regctl, "image", "copy", r.Host+"/auth/crane:v1", r.Host+"/auth/by-reader:v1")
		requireDenied(t, "regctl image copy as reader", out)
	})

	t.Run("anonymous", func(t *testing.T) {
		out := r.mustFail(t, skopeo, "--insecure-policy", "inspect", "--cert-dir", r.PKI.CertDir, "docker://"+r.Host+"/auth/crane:v1")
		requireUnauthorized(t, "skopeo inspect", out)
		out = r.mustFail(t, crane, "manifest", r.Host+"/auth/crane:v1")
		requireUnauthorized(t, "crane manifest", out)
		out = r.mustFail(t, oras, "pull", "--ca-file", r.PKI.CA, "-o", t.TempDir(), r.Host+"/auth/oras:v1")
		requireUnauthorized(t, "oras pull", out)
		ca, _ := os.ReadFile(r.PKI.CA)
		r.must(t, regctl, "registry", "set", "--skip-check", r.Host, "--cacert", string(ca))
		out = r.mustFail(t, regctl, "tag", "ls", r.Host+"/auth/crane")
		requireUnauthorized(t, "regctl tag ls", out)
		for _, p := range []string{"/v2/_catalog", "/v2/auth/crane/tags/list", "/v2/auth/crane/manifests/v1"} {
			if st, h, _ := r.get(t, "GET", p, "", ""); st != http.StatusUnauthorized || h.Get("WWW-Authenticate") == "" {
				t.Errorf("anonymous GET %s: %d %q", p, st, h.Get("WWW-Authenticate"))
			}
		}
	})

	t.Run("catalog", func(t *testing.T) {
		r.must(t, crane, "auth", "login", r.Host, "-u", admin, "-p", pw[admin])
		r.must(t, crane, "copy", r.Host+"/auth/crane:v1", r.Host+"/hidden/x:v1")
		all := lines(r.must(t, crane, "catalog", r.Host))
		mine := []string{"auth/crane", "auth/oras", "auth/regctl", "auth/skopeo"}
		if want := append(slices.Clone(mine), "hidden/x"); !slices.Equal(all, want) {
			t.Errorf("admin's catalog: %q, want %q", all, want)
		}
		for _, u := range []string{alice, reader} {
			r.must(t, crane, "auth", "login", r.Host, "-u", u, "-p", pw[u])
			if got := lines(r.must(t, crane, "catalog", r.Host)); !slices.Equal(got, mine) {
				t.Errorf("%s's catalog: %q, want %q", u, got, mine)
			}
			if st, _, _ := r.get(t, "GET", "/v2/hidden/x/manifests/v1", u, pw[u]); st != http.StatusForbidden {
				t.Errorf("%s GET hidden/x: %d, want 403", u, st)
			}
		}
	})

	t.Run("no secrets in the log", func(t *testing.T) {
		b, err := os.ReadFile(r.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		for u, p := range authUsers {
			if strings.Contains(string(b), p) {
				t.Errorf("the server log holds %s's password", u)
			}
		}
		if !strings.Contains(string(b), `"user":"alice"`) {
			t.Error("the server log does not name the users")
		}
	})
}

// TestAuthNoAccessControl: with authentication but no accessControl, any
// user may push and pull; anonymous callers get 401.
func TestAuthNoAccessControl(t *testing.T) {
	r := startAuthRegistry(t, map[string]string{"bob": "bob-Pw-e1"}, nil)
	crane := tool(t, "crane")
	layer := filepath.Join(t.TempDir(), "l.tar")
	writeAuthLayer(t, layer, "any user may push")
	r.must(t, crane, "auth", "login", r.Host, "-u", "bob", "-p", "bob-Pw-e1")
	r.must(t, crane, "append", "--oci-empty-base", "-f", layer, "-t", r.Host+"/any/where:v1")
	if got := lines(r.must(t, crane, "catalog", r.Host)); !slices.Equal(got, []string{"any/where"}) {
		t.Errorf("catalog: %q", got)
	}
	if st, _, _ := r.get(t, "GET", "/v2/any/where/manifests/v1", "", ""); st != http.StatusUnauthorized {
		t.Errorf("anonymous pull: %d", st)
	}
}

// requireDenied checks a client's output reports a refusal (403 DENIED).
func requireDenied(t *testing.T, what, out string) {
	t.Helper()
	lo := strings.ToLower(out)
	if !strings.Contains(lo, "denied") && !strings.Contains(lo, "403") && !strings.Contains(lo, "forbidden") {
		t.Errorf("%s: output does not report a denial:\n%s", what, out)
	}
}

// requireUnauthorized checks a client's output reports missing
// authentication (401).
func requireUnauthorized(t *testing.T, what, out string) {
	t.Helper()
	lo := strings.ToLower(out)
	// oras words a 401 to a client without credentials as "basic
	// credential not found".
	if !strings.Contains(lo, "unauthorized") && !strings.Contains(lo, "401") && !strings.Contains(lo, "authentication required") &&
		!strings.Contains(lo, "credential not found") {
		t.Errorf("%s: output does not report 401:\n%s", what, out)
	}
}
