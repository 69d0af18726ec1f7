package auth

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"github.com/berthreg/berth/pkg/api"
	"github.com/berthreg/berth/pkg/config"
	"github.com/berthreg/berth/pkg/meta/bolt"
	"github.com/berthreg/berth/pkg/registry"
	"github.com/berthreg/berth/pkg/storage/fs"
)

var _ api.Authorizer = (*Authorizer)(nil)

// Fixture content seeded into every repository of a test server.
var (
	layerData    = []byte("auth test layer")
	configData   = []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	spareData    = []byte("a blob no manifest references")
	manifestData = func() []byte {
		m := v1.Manifest{
			MediaType: v1.MediaTypeImageManifest,
			Config:    v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: digest.FromBytes(configData), Size: int64(len(configData))},
			Layers:    []v1.Descriptor{{MediaType: v1.MediaTypeImageLayerGzip, Digest: digest.FromBytes(layerData), Size: int64(len(layerData))}},
		}
		m.SchemaVersion = 2
		b, _ := json.Marshal(m)
		return b
	}()
	manifestDigest = digest.FromBytes(manifestData)
)

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// server is an in-process registry with an Authorizer in front.
type server struct {
	*httptest.Server
	reg *registry.Registry
}

// newServer starts a registry over fresh fs storage and bolt metadata,
// authorised by az, with repos seeded: each holds the layer, the config, a
// spare blob and the manifest tagged v1. Logs go to logs when set.
func newServer(t *testing.T, az *Authorizer, logs io.Writer, repos ...string) *server {
	t.Helper()
	dir := t.TempDir()
	store, err := fs.New(filepath.Join(dir, "data"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	md, err := bolt.Open(filepath.Join(dir, "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	reg := registry.New(store, md, zerolog.Nop())
	log := zerolog.Nop()
	if logs != nil {
		log = zerolog.New(logs).Level(zerolog.DebugLevel)
	}
	opts := api.Options{Log: log}
	if az != nil {
		opts.Auth = az
	}
	srv := api.New(reg, opts)
	s := &server{Server: httptest.NewServer(srv), reg: reg}
	t.Cleanup(func() {
		s.Close()
		_ = md.Close()
	})
	for _, repo := range repos {
		for _, b := range [][]byte{layerData, configData, spareData} {
			s.seedBlob(t, repo, b)
		}
		if _, err := reg.PutManifest(t.Context(), repo, "v1", v1.MediaTypeImageManifest, manifestData, nil); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// seedBlob stores content in repo, bypassing the API.
func (s *server) seedBlob(t *testing.T, repo string, content []byte) {
	t.Helper()
	ctx := t.Context()
	up, err := s.reg.Store().NewUpload(ctx, repo)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	if _, err := up.Append(ctx, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	if _, err := up.Commit(ctx, digest.FromBytes(content)); err != nil {
		t.Fatal(err)
	}
	s.reg.NoteBlob(ctx, repo, digest.FromBytes(content))
}

// session opens an upload session in repo, bypassing the API, and returns
// its id.
func (s *server) session(t *testing.T, repo string) string {
	t.Helper()
	up, err := s.reg.Store().NewUpload(t.Context(), repo)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	return up.ID()
}

// response is a fully read answer.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) String() string { return fmt.Sprintf("%d %s", r.status, r.body) }

// do sends a request with an Authorization header value (auth "" none).
func (s *server) do(t *testing.T, method, path, auth string, body []byte, hdr ...string) response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, s.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// basic is the Authorization value of HTTP Basic credentials.
func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// errorCode returns the code of an OCI error body, "" if none.
func errorCode(body []byte) string {
	var e struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &e) != nil || len(e.Errors) == 0 {
		return ""
	}
	return e.Errors[0].Code
}

// writeHTPasswd writes user:bcrypt(password) lines (cost 4: tests only).
func writeHTPasswd(t *testing.T, path string, users map[string]string) {
	t.Helper()
	var b strings.Builder
	for u, p := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:%s\n", u, h)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// htpasswdFile writes users to a new file and returns its path.
func htpasswdFile(t *testing.T, users map[string]string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "htpasswd")
	writeHTPasswd(t, p, users)
	return p
}

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// signer makes tokens as a token server would.
type signer struct {
	alg string
	key crypto.Signer
}

// newRSASigner, newECSigner return a signer and the PEM file of a
// self-signed certificate for its key.
func newRSASigner(t testing.TB) (*signer, string) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return &signer{alg: "RS256", key: k}, certFile(t, k)
}

func newECSigner(t testing.TB) (*signer, string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &signer{alg: "ES256", key: k}, certFile(t, k)
}

// certFile writes a self-signed certificate for k.
func certFile(t testing.TB, k crypto.Signer) string {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "token signer"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "token.crt")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// claims of a test token.
type claims map[string]any

// validClaims are claims accepted by a verifier for service "registry.test"
// granting access.
func validClaims(access ...accessEntry) claims {
	now := time.Now()
	return claims{
		"iss": "test-issuer", "sub": "tokenuser", "aud": "registry.test",
		"exp": now.Add(5 * time.Minute).Unix(), "nbf": now.Add(-time.Minute).Unix(), "iat": now.Unix(),
		"access": access,
	}
}

// token signs c with s (header alg overridable).
func (s *signer) token(t testing.TB, c claims) string {
	t.Helper()
	return s.tokenAlg(t, s.alg, c)
}

func (s *signer) tokenAlg(t testing.TB, alg string, c claims) string {
	t.Helper()
	h, _ := json.Marshal(map[string]any{"alg": alg, "typ": "JWT"})
	b, _ := json.Marshal(c)
	in := enc(h) + "." + enc(b)
	var sig []byte
	switch k := s.key.(type) {
	case *rsa.PrivateKey:
		d := sha256.Sum256([]byte(in))
		var err error
		if sig, err = rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, d[:]); err != nil {
			t.Fatal(err)
		}
	case *ecdsa.PrivateKey:
		d := sha256.Sum256([]byte(in))
		r, ss, err := ecdsa.Sign(rand.Reader, k, d[:])
		if err != nil {
			t.Fatal(err)
		}
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		ss.FillBytes(sig[32:])
	case ed25519.PrivateKey:
		sig = ed25519.Sign(k, []byte(in))
	}
	return in + "." + enc(sig)
}

// hmacToken forges an HS256 token keyed with key (the key-confusion attack).
func hmacToken(key []byte, c claims) string {
	h, _ := json.Marshal(map[string]any{"alg": "HS256", "typ": "JWT"})
	b, _ := json.Marshal(c)
	in := enc(h) + "." + enc(b)
	m := hmac.New(sha256.New, key)
	m.Write([]byte(in))
	return in + "." + enc(m.Sum(nil))
}

// noneToken is an unsigned token (alg none).
func noneToken(c claims) string {
	h, _ := json.Marshal(map[string]any{"alg": "none", "typ": "JWT"})
	b, _ := json.Marshal(c)
	return enc(h) + "." + enc(b) + "."
}

func enc(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// pull, push... are access entries.
func access(repo string, actions ...string) accessEntry {
	return accessEntry{Type: "repository", Name: repo, Actions: actions}
}

// bearerOpts are Options for a token-authenticated authorizer.
func bearerOpts(cert string) Options {
	return Options{Auth: &config.AuthConfig{Bearer: &config.BearerConfig{
		Realm: "https://auth.example/token", Service: "registry.test", Cert: cert,
	}}}
}
