package e2e

import (
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// authBin is the binary the auth tests run: $BERTH_BIN when set (a build
// with changes not yet in this tree), else the one TestMain built.
func authBin() string {
	if b := os.Getenv("BERTH_BIN"); b != "" {
		return b
	}
	return registryBin
}

// authReg is a registry process serving HTTPS with authentication; Host
// is 127.0.0.1:PORT and URL https://127.0.0.1:PORT.
type authReg struct {
	*reg
	PKI    *testPKI
	client *http.Client // trusts the test CA
}

// writeHTPasswdFile writes user:bcrypt(password) lines.
func writeHTPasswdFile(t *testing.T, path string, users map[string]string) {
	t.Helper()
	var b strings.Builder
	for _, u := range slices.Sorted(maps.Keys(users)) {
		h, err := bcrypt.GenerateFromPassword([]byte(users[u]), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:%s\n", u, h)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// startAuthRegistry starts the binary over TLS with an htpasswd file of
// users and the given http.accessControl (nil for none); it is killed when
// the test ends.
func startAuthRegistry(t *testing.T, users map[string]string, accessControl map[string]any) *authReg {
	t.Helper()
	pki := newTestPKI(t)
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	writeHTPasswdFile(t, htpasswd, users)
	port := freePort(t)
	extra := map[string]any{"http": httpsConfig("127.0.0.1", port, pki.ServerCert, pki.ServerKey, htpasswd, accessControl)}
	r := &authReg{reg: newHTTPSRegistry(t, regOpts{Port: port, Extra: extra}, pki.Pool), PKI: pki, client: tlsClient(pki.Pool)}
	r.bin = authBin()
	r.start()
	return r
}

// get sends a request with optional Basic credentials (user "" none).
func (r *authReg) get(t *testing.T, method, path, user, pass string) (int, http.Header, []byte) {
	t.Helper()
	res, err := send(r.client, method, r.URL+path, user, pass, nil, nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return res.Status, res.Header, res.Body
}

// env is the test's client environment with the test CA trusted
// by Go clients (crane, regctl, oras) through SSL_CERT_FILE.
func (r *authReg) env(t *testing.T) []string {
	return append(slices.Clone(clientEnv(t)), "SSL_CERT_FILE="+r.PKI.CA)
}

// must runs a client command that must succeed and returns its stdout.
func (r *authReg) must(t *testing.T, args ...string) string {
	t.Helper()
	return runEnv(t, r.env(t), "", args...).Stdout
}

// mustFail runs a client command that must fail and returns its output.
func (r *authReg) mustFail(t *testing.T, args ...string) string {
	t.Helper()
	return runFailEnv(t, r.env(t), args...)
}

// writeAuthLayer writes a small tar layer holding one file.
func writeAuthLayer(t *testing.T, path, content string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "file.txt"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("tar", "-C", dir, "-cf", path, "file.txt").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
}
