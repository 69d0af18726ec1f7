package auth

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"math/big"
	"os"
	"strings"
	"time"

	_ "crypto/sha256" // hash implementations for crypto.Hash
	_ "crypto/sha512"
)

// tokenLeeway is the clock skew tolerated on exp and nbf, as distribution.
const tokenLeeway = 60 * time.Second

// minRSABits is the smallest RSA signing key accepted.
const minRSABits = 2048

// Token verification errors. Their text may be logged: none holds the token.
var (
	errTokenMalformed = errors.New("malformed token")
	errTokenAlg       = errors.New("token algorithm not accepted")
	errTokenSignature = errors.New("token signature invalid")
	errTokenExpired   = errors.New("token expired")
	errTokenNotYet    = errors.New("token not valid yet")
	errTokenAudience  = errors.New("token audience is not this service")
	errTokenIssuer    = errors.New("token issuer not accepted")
)

// accessEntry is one element of a token's "access" claim.
type accessEntry struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// tokenClaims are the verified claims Berth uses.
type tokenClaims struct {
	Subject string
	Access  []accessEntry
}

// tokenVerifier verifies JWS-compact tokens issued by a distribution-style
// token server.
type tokenVerifier struct {
	keys    []crypto.PublicKey
	service string // required audience
	issuer  string // "" accepts any issuer
}

// loadVerificationKeys reads every certificate (or PUBLIC KEY block) of a
// PEM file.
func loadVerificationKeys(path string) ([]crypto.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var keys []crypto.PublicKey
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		var k any
		switch b.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			k = c.PublicKey
		case "PUBLIC KEY":
			if k, err = x509.ParsePKIXPublicKey(b.Bytes); err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
		default:
			continue
		}
		switch pk := k.(type) {
		case *rsa.PublicKey:
			if pk.N.BitLen() < minRSABits {
				return nil, fmt.Errorf("%s: RSA key of %d bits, want at least %d", path, pk.N.BitLen(), minRSABits)
			}
		case *ecdsa.PublicKey, ed25519.PublicKey:
		default:
			return nil, fmt.Errorf("%s: unsupported key type %T", path, k)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no CERTIFICATE or PUBLIC KEY in PEM", path)
	}
	return keys, nil
}

// algorithm describes a JWS "alg".
type algorithm struct {
	hash  crypto.Hash
	kind  string // "rsa", "pss", "ec", "ed"
	curve elliptic.Curve
}

var algorithms = map[string]algorithm{
	"RS256": {crypto.SHA256, "rsa", nil},
	"RS384": {crypto.SHA384, "rsa", nil},
	"RS512": {crypto.SHA512, "rsa", nil},
	"PS256": {crypto.SHA256, "pss", nil},
	"PS384": {crypto.SHA384, "pss", nil},
	"PS512": {crypto.SHA512, "pss", nil},
	"ES256": {crypto.SHA256, "ec", elliptic.P256()},
	"ES384": {crypto.SHA384, "ec", elliptic.P384()},
	"ES512": {crypto.SHA512, "ec", elliptic.P521()},
	"EdDSA": {0, "ed", nil},
}

// verify checks tok's signature with one of the keys, then its audience,
// issuer and validity window at now, and returns its claims.
func (v *tokenVerifier) verify(tok string, now time.Time) (*tokenClaims, error) {
	if len(tok) > MaxHeaderBytes {
		return nil, errTokenMalformed
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, errTokenMalformed
	}
	hdrJSON, err := b64(parts[0])
	if err != nil {
		return nil, errTokenMalformed
	}
	var hdr struct {
		Alg  string          `json:"alg"`
		Crit json.RawMessage `json:"crit"`
	}
	if err := json.Unmarshal(hdrJSON, &hdr); err != nil {
		return nil, errTokenMalformed
	}
	if hdr.Crit != nil {
		return nil, fmt.Errorf("%w: critical header extensions", errTokenMalformed)
	}
	alg, ok := algorithms[hdr.Alg]
	if !ok {
		return nil, fmt.Errorf("%w: %q", errTokenAlg, truncate(hdr.Alg, 16))
	}
	sig, err := b64(parts[2])
	if err != nil {
		return nil, errTokenMalformed
	}
	signed := []byte(tok[:len(parts[0])+1+len(parts[1])])
	if !v.checkSignature(alg, signed, sig) {
		return nil, errTokenSignature
	}
	body, err := b64(parts[1])
	if err != nil {
		return nil, errTokenMalformed
	}
	return v.checkClaims(body, now)
}

// checkSignature reports whether one of the keys of alg's type signed
// signed with sig.
func (v *tokenVerifier) checkSignature(alg algorithm, signed, sig []byte) bool {
	var digest []byte
	if alg.hash != 0 {
		h := alg.hash.New()
		h.Write(signed)
		digest = h.Sum(nil)
	}
	for _, k := range v.keys {
		switch pk := k.(type) {
		case *rsa.PublicKey:
			switch alg.kind {
			case "rsa":
				if rsa.VerifyPKCS1v15(pk, alg.hash, digest, sig) == nil {
					return true
				}
			case "pss":
				if rsa.VerifyPSS(pk, alg.hash, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil {
					return true
				}
			}
		case *ecdsa.PublicKey:
			if alg.kind != "ec" || pk.Curve != alg.curve {
				continue
			}
			size := (pk.Curve.Params().BitSize + 7) / 8
			if len(sig) != 2*size {
				continue
			}
			r := new(big.Int).SetBytes(sig[:size])
			s := new(big.Int).SetBytes(sig[size:])
			if ecdsa.Verify(pk, digest, r, s) {
				return true
			}
		case ed25519.PublicKey:
			if alg.kind == "ed" && len(sig) == ed25519.SignatureSize && ed25519.Verify(pk, signed, sig) {
				return true
			}
		}
	}
	return false
}

// checkClaims decodes the claims of a token whose signature is good.
func (v *tokenVerifier) checkClaims(body []byte, now time.Time) (*tokenClaims, error) {
	var c struct {
		Iss    string          `json:"iss"`
		Sub    string          `json:"sub"`
		Aud    json.RawMessage `json:"aud"`
		Exp    *json.Number    `json:"exp"`
		Nbf    *json.Number    `json:"nbf"`
		Access []accessEntry   `json:"access"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&c); err != nil {
		return nil, errTokenMalformed
	}
	if c.Exp == nil {
		return nil, fmt.Errorf("%w: no exp claim", errTokenMalformed)
	}
	exp, err := numericDate(*c.Exp)
	if err != nil {
		return nil, errTokenMalformed
	}
	if !now.Before(exp.Add(tokenLeeway)) {
		return nil, errTokenExpired
	}
	if c.Nbf != nil {
		nbf, err := numericDate(*c.Nbf)
		if err != nil {
			return nil, errTokenMalformed
		}
		if now.Add(tokenLeeway).Before(nbf) {
			return nil, errTokenNotYet
		}
	}
	var auds []string
	if len(c.Aud) > 0 && c.Aud[0] == '"' {
		var a string
		if json.Unmarshal(c.Aud, &a) != nil {
			return nil, errTokenMalformed
		}
		auds = []string{a}
	} else if len(c.Aud) > 0 && string(c.Aud) != "null" {
		if json.Unmarshal(c.Aud, &auds) != nil {
			return nil, errTokenMalformed
		}
	}
	found := false
	for _, a := range auds {
		found = found || a == v.service
	}
	if !found {
		return nil, errTokenAudience
	}
	if v.issuer != "" && c.Iss != v.issuer {
		return nil, errTokenIssuer
	}
	return &tokenClaims{Subject: c.Sub, Access: c.Access}, nil
}

// numericDate reads a JWT NumericDate (seconds, possibly fractional).
func numericDate(n json.Number) (time.Time, error) {
	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 1<<40 {
		return time.Time{}, errTokenMalformed
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), nil
}

// b64 decodes unpadded base64url (padding tolerated).
func b64(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

// truncate shortens s for a message.
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// grants reports whether claims allow action (read/create/update/delete)
// on repository repo.
func (c *tokenClaims) grants(repo, action string) bool {
	for _, a := range c.Access {
		if a.Type != "repository" || a.Name != repo {
			continue
		}
		for _, act := range a.Actions {
			switch act {
			case "*":
				return true
			case "pull":
				if action == actionRead {
					return true
				}
			case "push":
				if action == actionCreate || action == actionUpdate {
					return true
				}
			case "delete":
				if action == actionDelete {
					return true
				}
			}
		}
	}
	return false
}

// catalog reports whether claims grant the whole catalog
// (registry:catalog:*).
func (c *tokenClaims) catalog() bool {
	for _, a := range c.Access {
		if a.Type == "registry" && a.Name == "catalog" {
			for _, act := range a.Actions {
				if act == "*" {
					return true
				}
			}
		}
	}
	return false
}
