package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

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

// testPKI is a CA and a server certificate for 127.0.0.1 and localhost,
// written as PEM files.
type testPKI struct {
	CA      string // CA certificate file
	CertDir string // directory holding only ca.crt (skopeo --cert-dir)
	Cert    string // server certificate
	Key     string // server key
	pool    *x509.CertPool
}

// newTestPKI generates the CA and the server certificate.
func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "berth e2e test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{
		CA:      filepath.Join(dir, "ca.crt"),
		CertDir: filepath.Join(dir, "certs.d"),
		Cert:    filepath.Join(dir, "server.crt"),
		Key:     filepath.Join(dir, "server.key"),
		pool:    x509.NewCertPool(),
	}
	p.pool.AddCert(caCert)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	if err := os.Mkdir(p.CertDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for path, data := range map[string][]byte{
		p.CA:                               caPEM,
		filepath.Join(p.CertDir, "ca.crt"): caPEM,
		p.Cert:                             pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		p.Key:                              pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// authReg is a registry process serving HTTPS with authentication.
type authReg struct {
	Host    string // 127.0.0.1:PORT
	URL     string // https://127.0.0.1:PORT
	PKI     *testPKI
	LogPath string
	client  *http.Client // trusts the test CA
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
	dir := t.TempDir()
	pki := newTestPKI(t)
	htpasswd := filepath.Join(dir, "htpasswd")
	writeHTPasswdFile(t, htpasswd, users)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	r := &authReg{
		Host:    fmt.Sprintf("127.0.0.1:%d", port),
		PKI:     pki,
		LogPath: filepath.Join(dir, "registry.log"),
		client: &http.Client{Timeout: time.Minute, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pki.pool, MinVersion: tls.VersionTLS12},
		}},
	}
	r.URL = "https://" + r.Host
	httpCfg := map[string]any{
		"address": "127.0.0.1", "port": fmt.Sprint(port),
		"tls":  map[string]any{"cert": pki.Cert, "key": pki.Key},
		"auth": map[string]any{"htpasswd": map[string]any{"path": htpasswd}},
	}
	if accessControl != nil {
		httpCfg["accessControl"] = accessControl
	}
	cfg := map[string]any{
		"http":    httpCfg,
		"storage": map[string]any{"rootDirectory": filepath.Join(dir, "data")},
		"log":     map[string]any{"level": "debug", "output": r.LogPath},
	}
	js, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfgPath, js, 0o600); err != nil {
		t.Fatal(err)
	}
	stderr, err := os.Create(filepath.Join(dir, "stderr.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(authBin(), "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); stderr.Close(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
		if t.Failed() {
			t.Logf("registry log tail (%s):\n%s", r.LogPath, tailFile(r.LogPath, 40))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-done:
			t.Fatalf("registry exited during startup:\n%s\n%s", tailFile(stderr.Name(), 20), tailFile(r.LogPath, 20))
		default:
		}
		resp, err := r.client.Get(r.URL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry not ready on %s: %v", r.URL, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// get sends a request with optional Basic credentials (user "" none).
func (r *authReg) get(t *testing.T, method, path, user, pass string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, r.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, body
}

// env is the test's client environment with the test CA trusted
// by Go clients (crane, regctl, oras) through SSL_CERT_FILE.
func (r *authReg) env(t *testing.T) []string {
	return append(slices.Clone(clientEnv(t)), "SSL_CERT_FILE="+r.PKI.CA)
}

// must runs a client command that must succeed and returns its stdout.
func (r *authReg) must(t *testing.T, args ...string) string {
	t.Helper()
	res := execCmd(context.Background(), r.env(t), "", cmdTimeout, args...)
	if res.Err != nil {
		t.Fatalf("command failed: %s\nerror: %v\noutput:\n%s", strings.Join(redact(args), " "), res.Err, res.Combined)
	}
	return res.Stdout
}

// mustFail runs a client command that must fail and returns its output.
func (r *authReg) mustFail(t *testing.T, args ...string) string {
	t.Helper()
	res := execCmd(context.Background(), r.env(t), "", cmdTimeout, args...)
	if res.Err == nil {
		t.Fatalf("command succeeded but should have failed: %s\noutput:\n%s", strings.Join(redact(args), " "), res.Combined)
	}
	return res.Combined
}

// redact hides passwords in a command line shown in a failure.
func redact(args []string) []string {
	out := slices.Clone(args)
	for i, a := range out {
		switch {
		case i > 0 && (out[i-1] == "-p" || out[i-1] == "--password" || out[i-1] == "--pass"):
			out[i] = "***"
		case strings.HasPrefix(a, "--creds=") || strings.HasPrefix(a, "--src-creds=") || strings.HasPrefix(a, "--dest-creds="):
			k, _, _ := strings.Cut(a, "=")
			out[i] = k + "=***"
		}
	}
	return out
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
