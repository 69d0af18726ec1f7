package auth

import (
	"encoding/base64"
	"errors"
	"strings"
)

// MaxHeaderBytes caps the Authorization header; a longer one is answered
// 400 before any parsing.
const MaxHeaderBytes = 16 << 10

// Authentication schemes.
const (
	schemeNone   = ""
	schemeBasic  = "basic"
	schemeBearer = "bearer"
)

// errMalformed is a header that cannot be credentials of any scheme.
var errMalformed = errors.New("malformed Authorization header")

// credentials are what an Authorization header carries. They hold a secret
// (password or token): never log them.
type credentials struct {
	scheme   string // schemeNone, schemeBasic, schemeBearer, or the lower-cased unknown scheme
	user     string // Basic
	password string // Basic
	token    string // Bearer
}

// parseAuthorization reads one Authorization header value. An empty value
// is no credentials. Basic credentials may have an empty user (clients
// without credentials send "Basic Og==" after a Basic challenge). A scheme
// other than Basic and Bearer is returned with its name and no error; the
// caller decides.
func parseAuthorization(v string) (credentials, error) {
	v = strings.Trim(v, " \t")
	if v == "" {
		return credentials{}, nil
	}
	if len(v) > MaxHeaderBytes {
		return credentials{}, errMalformed
	}
	name, rest, _ := strings.Cut(v, " ")
	if !isToken(name) {
		return credentials{}, errMalformed
	}
	rest = strings.Trim(rest, " \t")
	switch scheme := strings.ToLower(name); scheme {
	case schemeBasic:
		if !isToken68(rest) {
			return credentials{}, errMalformed
		}
		raw, err := base64.StdEncoding.DecodeString(rest)
		if err != nil {
			return credentials{}, errMalformed
		}
		user, pass, ok := strings.Cut(string(raw), ":")
		if !ok || hasControl(user) {
			return credentials{}, errMalformed
		}
		return credentials{scheme: schemeBasic, user: user, password: pass}, nil
	case schemeBearer:
		if !isToken68(rest) {
			return credentials{}, errMalformed
		}
		return credentials{scheme: schemeBearer, token: rest}, nil
	default:
		return credentials{scheme: scheme}, nil
	}
}

// isToken reports whether s is a non-empty RFC 9110 token (a scheme name).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// isToken68 reports whether s is a non-empty RFC 9110 token68: the
// characters of base64 and base64url, then optional "=" padding.
func isToken68(s string) bool {
	body := strings.TrimRight(s, "=")
	if body == "" {
		return false
	}
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-', c == '.', c == '_', c == '~', c == '+', c == '/':
		default:
			return false
		}
	}
	return true
}

// hasControl reports whether s holds an ASCII control character.
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}
