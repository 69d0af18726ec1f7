package auth

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/config"
)

func htpasswdOpts(path string) Options {
	return Options{Auth: &config.AuthConfig{HTPasswd: &config.HTPasswdConfig{Path: path}}}
}

// TestBasic covers good and bad Basic credentials.
func TestBasic(t *testing.T) {
	t.Parallel()
	az, err := New(htpasswdOpts(htpasswdFile(t, map[string]string{"alice": "s3cret", "bob": "other"})))
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, az, nil, "r/a")
	cases := []struct {
		name, auth string
		want       int
	}{
		{"good", basic("alice", "s3cret"), 200},
		{"good again (cached)", basic("alice", "s3cret"), 200},
		{"scheme case", "bAsIc " + strings.TrimPrefix(basic("alice", "s3cret"), "Basic "), 200},
		{"wrong password", basic("alice", "S3cret"), 401},
		{"other user's password", basic("alice", "other"), 401},
		{"unknown user", basic("mallory", "s3cret"), 401},
		{"empty password", basic("alice", ""), 401},
		{"empty user", basic("", "s3cret"), 401},
		{"empty credentials (anonymous)", "Basic Og==", 401},
		{"no colon", "Basic " + base64.StdEncoding.EncodeToString([]byte("alice")), 401},
		{"bad base64", "Basic !!!", 401},
		{"empty basic", "Basic", 401},
		{"bearer to a basic registry", "Bearer abc.def.ghi", 401},
		{"unknown scheme", "Digest username=alice", 401},
	}
	for _, c := range cases {
		res := s.do(t, "GET", "/v2/r/a/manifests/v1", c.auth, nil)
		if res.status != c.want {
			t.Errorf("%s: %s, want %d", c.name, res, c.want)
		}
		if c.want == 401 {
			if ch := res.header.Get("WWW-Authenticate"); ch != `Basic realm="berth"` {
				t.Errorf("%s: challenge %q", c.name, ch)
			}
			if errorCode(res.body) != "UNAUTHORIZED" {
				t.Errorf("%s: body %s", c.name, res.body)
			}
		}
	}
}

// TestChallenges pins the WWW-Authenticate headers clients parse.
func TestChallenges(t *testing.T) {
	t.Parallel()
	_, cert := newRSASigner(t)
	bz, err := New(bearerOpts(cert))
	if err != nil {
		t.Fatal(err)
	}
	bs := newServer(t, bz, nil, "team/app")
	realm := `Bearer realm="https://auth.example/token",service="registry.test"`
	cases := []struct {
		method, path, want string
	}{
		{"GET", "/v2/", realm},
		{"HEAD", "/v2/", realm},
		{"GET", "/v2/_catalog", realm + `,scope="registry:catalog:*"`},
		{"GET", "/v2/team/app/manifests/v1", realm + `,scope="repository:team/app:pull"`},
		{"HEAD", "/v2/team/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000", realm + `,scope="repository:team/app:pull"`},
		{"POST", "/v2/team/app/blobs/uploads/", realm + `,scope="repository:team/app:pull,push"`},
		{"PUT", "/v2/team/app/manifests/v2", realm + `,scope="repository:team/app:pull,push"`},
		{"DELETE", "/v2/team/app/manifests/v1", realm + `,scope="repository:team/app:delete"`},
	}
	for _, c := range cases {
		res := bs.do(t, c.method, c.path, "", nil)
		if res.status != 401 || res.header.Get("WWW-Authenticate") != c.want {
			t.Errorf("%s %s: %d %q, want 401 %q", c.method, c.path, res.status, res.header.Get("WWW-Authenticate"), c.want)
		}
		if c.method == "HEAD" && len(res.body) != 0 {
			t.Errorf("HEAD with a body")
		}
		if c.method != "HEAD" && errorCode(res.body) != "UNAUTHORIZED" {
			t.Errorf("%s %s: body %s", c.method, c.path, res.body)
		}
		if res.header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
			t.Errorf("%s %s: no Docker-Distribution-API-Version", c.method, c.path)
		}
	}
	// A refused token says so.
	res := bs.do(t, "GET", "/v2/team/app/manifests/v1", "Bearer not.a.token", nil)
	if want := realm + `,scope="repository:team/app:pull",error="invalid_token"`; res.header.Get("WWW-Authenticate") != want {
		t.Errorf("invalid token: %q, want %q", res.header.Get("WWW-Authenticate"), want)
	}

	hz, err := New(Options{Auth: &config.AuthConfig{HTPasswd: &config.HTPasswdConfig{
		Path: htpasswdFile(t, map[string]string{"u": "p"})}}, Realm: "My Registry"})
	if err != nil {
		t.Fatal(err)
	}
	hs := newServer(t, hz, nil, "team/app")
	for _, p := range []string{"/v2/", "/v2/_catalog", "/v2/team/app/tags/list"} {
		res := hs.do(t, "GET", p, "", nil)
		if res.status != 401 || res.header.Get("WWW-Authenticate") != `Basic realm="My Registry"` {
			t.Errorf("GET %s: %d %q", p, res.status, res.header.Get("WWW-Authenticate"))
		}
	}
}

// TestBearer covers token verification end to end.
func TestBearer(t *testing.T) {
	t.Parallel()
	rsaS, rsaCert := newRSASigner(t)
	ecS, ecCert := newECSigner(t)
	other, _ := newRSASigner(t)
	for _, tc := range []struct {
		name string
		s    *signer
		cert string
	}{{"RS256", rsaS, rsaCert}, {"ES256", ecS, ecCert}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			az, err := New(bearerOpts(tc.cert))
			if err != nil {
				t.Fatal(err)
			}
			s := newServer(t, az, nil, "team/app", "team/other")
			pull := tc.s.token(t, validClaims(access("team/app", "pull")))
			all := tc.s.token(t, validClaims(access("team/app", "*")))
			bearer := func(tok string) string { return "Bearer " + tok }
			exp := validClaims(access("team/app", "pull"))
			exp["exp"] = time.Now().Add(-2 * time.Minute).Unix()
			nbf := validClaims(access("team/app", "pull"))
			nbf["nbf"] = time.Now().Add(5 * time.Minute).Unix()
			noExp := validClaims(access("team/app", "pull"))
			delete(noExp, "exp")
			aud := validClaims(access("team/app", "pull"))
			aud["aud"] = "someone-else"
			audList := validClaims(access("team/app", "pull"))
			audList["aud"] = []string{"x", "registry.test"}
			pem, _ := os.ReadFile(tc.cert)
			cases := []struct {
				name, method, path, auth string
				want                     int
				challengeErr             string
			}{
				{"pull", "GET", "/v2/team/app/manifests/v1", bearer(pull), 200, ""},
				{"pull head", "HEAD", "/v2/team/app/manifests/v1", bearer(pull), 200, ""},
				{"base", "GET", "/v2/", bearer(pull), 200, ""},
				{"aud list", "GET", "/v2/team/app/manifests/v1", bearer(tc.s.token(t, audList)), 200, ""},
				{"scheme case", "GET", "/v2/team/app/manifests/v1", "bearer " + pull, 200, ""},
				{"push with pull only", "POST", "/v2/team/app/blobs/uploads/", bearer(pull), 401, "insufficient_scope"},
				{"delete with pull only", "DELETE", "/v2/team/app/manifests/v1", bearer(pull), 401, "insufficient_scope"},
				{"other repo", "GET", "/v2/team/other/manifests/v1", bearer(pull), 401, "insufficient_scope"},
				{"star", "POST", "/v2/team/app/blobs/uploads/", bearer(all), 202, ""},
				{"expired", "GET", "/v2/team/app/manifests/v1", bearer(tc.s.token(t, exp)), 401, "invalid_token"},
				{"not yet valid", "GET", "/v2/team/app/manifests/v1", bearer(tc.s.token(t, nbf)), 401, "invalid_token"},
				{"no exp", "GET", "/v2/team/app/manifests/v1", bearer(tc.s.token(t, noExp)), 401, "invalid_token"},
				{"wrong audience", "GET", "/v2/team/app/manifests/v1", bearer(tc.s.token(t, aud)), 401, "invalid_token"},
				{"wrong key", "GET", "/v2/team/app/manifests/v1", bearer(other.token(t, validClaims(access("team/app", "pull")))), 401, "invalid_token"},
				{"alg none", "GET", "/v2/team/app/manifests/v1", bearer(noneToken(validClaims(access("team/app", "pull")))), 401, "invalid_token"},
				{"alg HS256 keyed with the cert", "GET", "/v2/team/app/manifests/v1", bearer(hmacToken(pem, validClaims(access("team/app", "pull")))), 401, "invalid_token"},
				{"alg swapped", "GET", "/v2/team/app/manifests/v1", bearer(tc.s.tokenAlg(t, map[string]string{"RS256": "ES256", "ES256": "RS256"}[tc.name], validClaims(access("team/app", "pull")))), 401, "invalid_token"},
				{"tampered claims", "GET", "/v2/team/other/manifests/v1", bearer(tamper(pull, "team/app", "team/other")), 401, "invalid_token"},
				{"basic to a token registry", "GET", "/v2/team/app/manifests/v1", basic("u", "p"), 401, ""},
			}
			for _, c := range cases {
				res := s.do(t, c.method, c.path, c.auth, nil)
				if res.status != c.want {
					t.Errorf("%s: %s, want %d", c.name, res, c.want)
					continue
				}
				ch := res.header.Get("WWW-Authenticate")
				if c.want == 401 {
					if !strings.HasPrefix(ch, `Bearer realm="https://auth.example/token",service="registry.test"`) {
						t.Errorf("%s: challenge %q", c.name, ch)
					}
					if hasErr := strings.Contains(ch, `error="`+c.challengeErr+`"`); c.challengeErr != "" && !hasErr {
						t.Errorf("%s: challenge %q lacks error %q", c.name, ch, c.challengeErr)
					}
				}
			}

			// The catalog lists what the token may pull; registry:catalog:*
			// lists everything.
			res := s.do(t, "GET", "/v2/_catalog", bearer(pull), nil)
			if res.status != 200 || !strings.Contains(string(res.body), `["team/app"]`) {
				t.Errorf("catalog with pull on team/app: %s", res)
			}
			cat := tc.s.token(t, validClaims(accessEntry{Type: "registry", Name: "catalog", Actions: []string{"*"}}))
			res = s.do(t, "GET", "/v2/_catalog", bearer(cat), nil)
			if res.status != 200 || !strings.Contains(string(res.body), `["team/app","team/other"]`) {
				t.Errorf("catalog with registry:catalog:*: %s", res)
			}
		})
	}
}

// tamper swaps a claim value of a signed token without re-signing it.
func tamper(tok, from, to string) string {
	parts := strings.Split(tok, ".")
	body, _ := base64.RawURLEncoding.DecodeString(parts[1])
	parts[1] = base64.RawURLEncoding.EncodeToString([]byte(strings.ReplaceAll(string(body), from, to)))
	return strings.Join(parts, ".")
}

// TestBearerKeys covers the certificate file.
func TestBearerKeys(t *testing.T) {
	t.Parallel()
	rsaS, rsaCert := newRSASigner(t)
	ecS, ecCert := newECSigner(t)
	// A bundle: both keys verify.
	a, _ := os.ReadFile(rsaCert)
	b, _ := os.ReadFile(ecCert)
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(bundle, append(a, b...), 0o600); err != nil {
		t.Fatal(err)
	}
	az, err := New(bearerOpts(bundle))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*signer{rsaS, ecS} {
		if _, err := az.bearer.verify(s.token(t, validClaims()), time.Now()); err != nil {
			t.Errorf("%s in a bundle: %v", s.alg, err)
		}
	}
	// A PUBLIC KEY block works too.
	blk, _ := pem.Decode(a)
	crt, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(crt.PublicKey)
	pub := filepath.Join(t.TempDir(), "pub.pem")
	_ = os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600)
	if az, err := New(bearerOpts(pub)); err != nil {
		t.Errorf("PUBLIC KEY: %v", err)
	} else if _, err := az.bearer.verify(rsaS.token(t, validClaims()), time.Now()); err != nil {
		t.Errorf("PUBLIC KEY verify: %v", err)
	}
	// Issuer, when required.
	opts := bearerOpts(rsaCert)
	opts.Issuer = "the-issuer"
	iz, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := iz.bearer.verify(rsaS.token(t, validClaims()), time.Now()); err == nil {
		t.Error("token of another issuer accepted")
	}
	c := validClaims()
	c["iss"] = "the-issuer"
	if _, err := iz.bearer.verify(rsaS.token(t, c), time.Now()); err != nil {
		t.Errorf("token of the issuer: %v", err)
	}
	// Unusable files.
	junk := filepath.Join(t.TempDir(), "junk.pem")
	_ = os.WriteFile(junk, []byte("not pem"), 0o600)
	for _, p := range []string{junk, filepath.Join(t.TempDir(), "missing.pem")} {
		if _, err := New(bearerOpts(p)); err == nil {
			t.Errorf("New with cert %s: no error", p)
		}
	}
}

// TestHTPasswdFile covers loading, refusing non-bcrypt entries, and reloads.
func TestHTPasswdFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := map[string]string{
		"md5":      "alice:$apr1$abcdefgh$0123456789abcdefghijkl\n",
		"sha":      "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
		"plain":    "alice:password\n",
		"crypt":    "alice:abJnggxhB/yWI\n",
		"no colon": "alice\n",
	}
	for name, content := range bad {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		_ = os.WriteFile(p, []byte(content), 0o600)
		if _, err := New(htpasswdOpts(p)); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("%s: New error %v, want one naming line 1", name, err)
		} else if strings.Contains(err.Error(), "password") && name == "plain" {
			t.Errorf("%s: the error shows the entry: %v", name, err)
		}
	}
	if _, err := New(htpasswdOpts(filepath.Join(dir, "missing"))); err == nil {
		t.Error("missing file: no error")
	}

	p := filepath.Join(dir, "htpasswd")
	writeHTPasswd(t, p, map[string]string{"alice": "one"})
	// Comments, blank lines and CRLF are fine.
	data, _ := os.ReadFile(p)
	_ = os.WriteFile(p, append([]byte("# users\r\n\r\n"), []byte(strings.ReplaceAll(string(data), "\n", "\r\n"))...), 0o600)
	clk := newClock()
	opts := htpasswdOpts(p)
	opts.Now = clk.Now
	az, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, az, nil, "r/a")
	get := func(user, pass string) int {
		return s.do(t, "GET", "/v2/", basic(user, pass), nil).status
	}
	mt := time.Now()
	touch := func() { // a later mtime, and the next check is due
		mt = mt.Add(time.Second)
		_ = os.Chtimes(p, mt, mt)
		clk.Add(2 * time.Second)
	}
	if get("alice", "one") != 200 {
		t.Fatal("alice/one refused")
	}
	// The password changes: the old one stops working (the cache too).
	writeHTPasswd(t, p, map[string]string{"alice": "two", "bob": "b"})
	touch()
	if get("alice", "one") != 401 || get("alice", "two") != 200 || get("bob", "b") != 200 {
		t.Error("the changed file was not reloaded")
	}
	// Not checked more than once a second.
	writeHTPasswd(t, p, map[string]string{"alice": "three"})
	mt = mt.Add(time.Second)
	_ = os.Chtimes(p, mt, mt)
	clk.Add(500 * time.Millisecond)
	if get("alice", "two") != 200 {
		t.Error("reloaded within the second")
	}
	touch()
	if get("alice", "three") != 200 || get("bob", "b") != 401 {
		t.Error("removed user still accepted")
	}
	// A bad line on reload skips that user only.
	h, _ := os.ReadFile(p)
	_ = os.WriteFile(p, append(h, []byte("carol:plaintext\n")...), 0o600)
	touch()
	if get("alice", "three") != 200 || get("carol", "plaintext") != 401 {
		t.Error("a bad line on reload")
	}
	// A vanished file refuses everyone until it is back.
	_ = os.Rename(p, p+".away")
	clk.Add(2 * time.Second)
	if get("alice", "three") != 401 {
		t.Error("accepted with the file gone")
	}
	_ = os.Rename(p+".away", p)
	clk.Add(2 * time.Second)
	if get("alice", "three") != 200 {
		t.Error("refused after the file came back")
	}
}

// TestFailDelay: a failed authentication waits failDelay; success, no
// credentials and other requests do not; concurrent failures wait in
// parallel.
func TestFailDelay(t *testing.T) {
	t.Parallel()
	opts := htpasswdOpts(htpasswdFile(t, map[string]string{"alice": "pw"}))
	// The delay is long next to the bcrypt checks, so the bounds below hold
	// on a slow machine too: an answer without the delay comes in well
	// under it, and serialised delays would take 8 times it.
	const delay = 4 * time.Second
	opts.Auth.FailDelay = int(delay / time.Second)
	az, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, az, nil, "r/a")
	timed := func(auth string) (int, time.Duration) {
		start := time.Now()
		res := s.do(t, "GET", "/v2/", auth, nil)
		return res.status, time.Since(start)
	}
	if st, d := timed(basic("alice", "pw")); st != 200 || d >= delay {
		t.Errorf("good credentials: %d after %s", st, d)
	}
	if st, d := timed(""); st != 401 || d >= delay {
		t.Errorf("no credentials: %d after %s", st, d)
	}
	if st, d := timed("Basic Og=="); st != 401 || d >= delay {
		t.Errorf("empty Basic credentials (anonymous): %d after %s", st, d)
	}
	if st, d := timed(basic("alice", "wrong")); st != 401 || d < delay {
		t.Errorf("wrong password: %d after %s, want 401 after >= %s", st, d, delay)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = timed(basic("alice", "wrong"))
		}()
	}
	// A good request is served meanwhile.
	time.Sleep(200 * time.Millisecond)
	if st, d := timed(basic("alice", "pw")); st != 200 || d >= delay {
		t.Errorf("good credentials during failures: %d after %s", st, d)
	}
	wg.Wait()
	if d := time.Since(start); d > 4*delay {
		t.Errorf("8 concurrent failures took %s: delays are serialised", d)
	}
}

// TestHeaderLimits: an oversized or repeated Authorization header is 400.
func TestHeaderLimits(t *testing.T) {
	t.Parallel()
	az, err := New(htpasswdOpts(htpasswdFile(t, map[string]string{"alice": "pw"})))
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, az, nil, "r/a")
	big := "Basic " + strings.Repeat("A", MaxHeaderBytes)
	if res := s.do(t, "GET", "/v2/", big, nil); res.status != 400 || errorCode(res.body) == "" {
		t.Errorf("oversized header: %s", res)
	}
	req, _ := http.NewRequestWithContext(t.Context(), "GET", s.URL+"/v2/", nil)
	req.Header.Add("Authorization", basic("alice", "pw"))
	req.Header.Add("Authorization", basic("alice", "pw"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("two Authorization headers: %d", resp.StatusCode)
	}
}

// TestNoSecretsInLogs runs successful and failed requests with a password
// and a token and checks that neither (nor their encodings) reaches the
// log, while the user names do.
func TestNoSecretsInLogs(t *testing.T) {
	t.Parallel()
	const password = "Pa55-w0rd-THAT-must-not-leak"
	const wrong = "Wr0ng-pa55-THAT-must-not-leak"
	logs := &syncBuffer{}
	s1, cert := newRSASigner(t)
	opts := Options{
		Auth: &config.AuthConfig{
			HTPasswd: &config.HTPasswdConfig{Path: htpasswdFile(t, map[string]string{"alice": password})},
			Bearer:   &config.BearerConfig{Realm: "https://auth.example/token", Service: "registry.test", Cert: cert},
		},
		AccessControl: &config.AccessControlConfig{Repositories: map[string]config.PolicyGroup{"r/**": {DefaultPolicy: []string{"read"}}}},
		Log:           zerolog.New(logs),
	}
	az, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, az, logs, "r/a")
	good := s1.token(t, validClaims(access("r/a", "pull")))
	expired := validClaims(access("r/a", "pull"))
	expired["exp"] = time.Now().Add(-time.Hour).Unix()
	bad := s1.token(t, expired)
	secrets := []string{password, wrong, good, bad,
		strings.TrimPrefix(basic("alice", password), "Basic "), strings.TrimPrefix(basic("alice", wrong), "Basic "),
		strings.Split(good, ".")[2], strings.Split(bad, ".")[2]}
	for _, c := range []struct {
		method, path, auth string
		want               int
	}{
		{"GET", "/v2/r/a/manifests/v1", basic("alice", password), 200},
		{"GET", "/v2/r/a/manifests/v1", basic("alice", wrong), 401},
		{"POST", "/v2/r/a/blobs/uploads/", basic("alice", password), 403},
		{"GET", "/v2/r/a/manifests/v1", "Bearer " + good, 200},
		{"GET", "/v2/r/a/manifests/v1", "Bearer " + bad, 401},
		{"POST", "/v2/r/a/blobs/uploads/", "Bearer " + good, 401},
		{"GET", "/v2/r/a/manifests/v1", "Basic " + password, 401},
		{"GET", "/v2/r/a/manifests/v1", "Bearer " + password, 401},
	} {
		if res := s.do(t, c.method, c.path, c.auth, nil); res.status != c.want {
			t.Errorf("%s %s: %s, want %d", c.method, c.path, res, c.want)
		}
	}
	out := logs.String()
	for _, sec := range secrets {
		if strings.Contains(out, sec) {
			t.Errorf("the log holds a secret %.12q...:\n%s", sec, out)
		}
	}
	for _, want := range []string{`"user":"alice"`, `"user":"tokenuser"`, "authentication failed", "access denied"} {
		if !strings.Contains(out, want) {
			t.Errorf("the log lacks %s:\n%s", want, out)
		}
	}
}

// TestNewErrors covers configuration New refuses.
func TestNewErrors(t *testing.T) {
	t.Parallel()
	if _, err := New(Options{}); err == nil {
		t.Error("New without configuration: no error")
	}
	if _, err := New(Options{Auth: &config.AuthConfig{}}); err == nil {
		t.Error("New with an empty auth block: no error")
	}
}
