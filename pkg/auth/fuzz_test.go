package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzParseAuthorization: any header value parses or fails without
// panicking, and what parses is consistent.
func FuzzParseAuthorization(f *testing.F) {
	for _, s := range []string{
		"", "Basic", "Basic ", basic("alice", "pw"), basic("a", ""), basic("a", "p:with:colons"),
		"basic YWxpY2U6cHc=", "Basic YWxpY2U6cHc", "Basic !!", "Bearer abc.def.ghi", "bearer x==",
		"Bearer", "Bearer a b", "Digest username=\"x\"", " \tBasic YTpi \t", "Basic\tYTpi",
		"Basic " + strings.Repeat("A", 100), "Négociate x", "Basic OmI=", "Basic YQpiOmM=",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		cr, err := parseAuthorization(v)
		if err != nil {
			if cr != (credentials{}) {
				t.Fatalf("error with credentials %+v", cr)
			}
			return
		}
		switch cr.scheme {
		case schemeBasic:
			if strings.Contains(cr.user, ":") || hasControl(cr.user) {
				t.Fatalf("bad user %q", cr.user)
			}
			again, err := parseAuthorization(basic(cr.user, cr.password))
			if err != nil || again != cr {
				t.Fatalf("round trip: %+v, %v; want %+v", again, err, cr)
			}
		case schemeBearer:
			if !isToken68(cr.token) {
				t.Fatalf("bad token %q", cr.token)
			}
		case schemeNone:
			if strings.Trim(v, " \t") != "" {
				t.Fatalf("no scheme from %q", v)
			}
		default:
			if cr.scheme != strings.ToLower(cr.scheme) || !isToken(cr.scheme) {
				t.Fatalf("scheme %q", cr.scheme)
			}
		}
	})
}

// fuzzSeed derives the Ed25519 key of the committed FuzzVerifyToken corpus:
// its valid seeds were signed with it (exp in 2100, aud "registry.test").
var fuzzSeed = []byte("berth auth fuzz key, tests only!")

// fuzzNow is the verification time of FuzzVerifyToken.
var fuzzNow = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// FuzzVerifyToken: no token makes the verifier panic, and only tokens the
// key really signed are accepted.
func FuzzVerifyToken(f *testing.F) {
	edKey := ed25519.NewKeyFromSeed(fuzzSeed)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		f.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	v := &tokenVerifier{keys: []crypto.PublicKey{edKey.Public(), &rsaKey.PublicKey, &ecKey.PublicKey}, service: "registry.test"}
	ed := &signer{alg: "EdDSA", key: edKey}
	good := claims{"sub": "u", "aud": "registry.test", "exp": 4102444800, "access": []accessEntry{access("a/b", "pull", "push")}}
	expired := claims{"sub": "u", "aud": "registry.test", "exp": 1000}
	// Signing inputs of the seeds signed by this run's RSA and EC keys.
	known := map[string]bool{}
	for _, tok := range []string{
		(&signer{alg: "RS256", key: rsaKey}).token(f, good),
		(&signer{alg: "ES256", key: ecKey}).token(f, good),
	} {
		f.Add(tok)
		known[tok[:strings.LastIndexByte(tok, '.')]] = true
	}
	f.Add(ed.token(f, good))
	f.Add(ed.token(f, expired))
	f.Add(noneToken(good))
	f.Add(hmacToken([]byte("k"), good))
	for _, s := range []string{"", ".", "..", "a.b.c", "eyJhbGciOiJSUzI1NiJ9..", "eyJhbGciOiJub25lIn0.e30.", "eyJ9.e30.AA"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := v.verify(tok, fuzzNow)
		if err != nil {
			if c != nil {
				t.Fatal("claims with an error")
			}
			return
		}
		if c == nil {
			t.Fatal("no claims and no error")
		}
		// Accepted: the Ed25519 key signed it, or it is (up to the
		// signature's encoding) a seed signed by this run's RSA or EC key.
		parts := strings.Split(tok, ".")
		sig, _ := b64(parts[2])
		signed := parts[0] + "." + parts[1]
		if !ed25519.Verify(edKey.Public().(ed25519.PublicKey), []byte(signed), sig) && !known[signed] {
			t.Fatalf("accepted a token no key signed: %q", tok)
		}
		_ = c.grants("a/b", actionRead)
		_ = c.catalog()
	})
}

// TestFuzzCorpus checks that the committed FuzzVerifyToken corpus still
// reaches the accepting path: some of its tokens verify.
func TestFuzzCorpus(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("testdata/fuzz/FuzzVerifyToken/*")
	if err != nil || len(files) == 0 {
		t.Fatalf("no corpus: %v", err)
	}
	v := &tokenVerifier{keys: []crypto.PublicKey{ed25519.NewKeyFromSeed(fuzzSeed).Public()}, service: "registry.test"}
	ok := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		_, lit, found := strings.Cut(strings.TrimSpace(string(b)), "\nstring(")
		if !found {
			t.Fatalf("%s: not a string corpus entry", f)
		}
		tok, err := strconv.Unquote(strings.TrimSuffix(lit, ")"))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if _, err := v.verify(tok, fuzzNow); err == nil {
			ok++
		}
	}
	if ok < 2 {
		t.Errorf("%d corpus tokens verify, want at least 2", ok)
	}
}
