package sync

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	gosync "sync"
	"time"
)

// authorizer adds credentials to upstream requests: nothing, Basic, or a
// Bearer token from the realm the registry's challenge names (the Docker
// token flow), cached per scope until it expires.
type authorizer struct {
	client     *http.Client
	user, pass string
	now        func() time.Time

	mu     gosync.Mutex
	basic  bool             // the registry asked for Basic
	bearer *challenge       // the registry's Bearer challenge, once seen
	tokens map[string]token // by scope
}

type token struct {
	value   string
	expires time.Time
}

// challenge is a parsed WWW-Authenticate header.
type challenge struct {
	scheme string // lower case
	params map[string]string
}

// authorize sets the Authorization header for scope from what is known.
func (a *authorizer) authorize(req *http.Request, scope string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if t, ok := a.tokens[scope]; ok && a.now().Before(t.expires) {
		req.Header.Set("Authorization", "Bearer "+t.value)
		return
	}
	if a.basic && a.user != "" {
		req.SetBasicAuth(a.user, a.pass)
	}
}

// answer handles a 401: it learns the challenge and obtains what it asks
// for, reporting whether the request is worth sending again.
func (a *authorizer) answer(ctx context.Context, resp *http.Response, scope string) (bool, error) {
	ch := parseChallenge(resp.Header.Get("WWW-Authenticate"))
	switch ch.scheme {
	case "basic":
		a.mu.Lock()
		retry := !a.basic && a.user != ""
		a.basic = true
		a.mu.Unlock()
		return retry, nil
	case "bearer":
		if ch.params["realm"] == "" {
			return false, nil
		}
		a.mu.Lock()
		a.bearer = &ch
		a.mu.Unlock()
		return true, a.fetchToken(ctx, ch, scope)
	}
	return false, nil
}

// fetchToken gets a token for scope from the challenge's realm.
func (a *authorizer) fetchToken(ctx context.Context, ch challenge, scope string) error {
	u, err := url.Parse(ch.params["realm"])
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") {
		return &upstreamError{Kind: kindAuth, Err: fmt.Errorf("bad token realm %q", ch.params["realm"])}
	}
	q := u.Query()
	if s := ch.params["service"]; s != "" {
		q.Set("service", s)
	}
	if scope != "" {
		q.Set("scope", scope)
	}
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	if a.user != "" {
		req.SetBasicAuth(a.user, a.pass)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return classifyTransportError(ctx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return statusError(resp, "token")
	}
	var body struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&body); err != nil {
		return &upstreamError{Kind: kindProtocol, Err: fmt.Errorf("token response: %v", err)}
	}
	value := body.Token
	if value == "" {
		value = body.AccessToken
	}
	if value == "" {
		return &upstreamError{Kind: kindAuth, Err: fmt.Errorf("token response without a token")}
	}
	ttl := time.Duration(body.ExpiresIn) * time.Second
	if ttl < time.Minute {
		ttl = time.Minute // the spec's default lifetime
	}
	a.mu.Lock()
	if a.tokens == nil {
		a.tokens = map[string]token{}
	}
	now := a.now()
	for s, t := range a.tokens {
		if !now.Before(t.expires) {
			delete(a.tokens, s)
		}
	}
	a.tokens[scope] = token{value: value, expires: now.Add(ttl - 10*time.Second)}
	a.mu.Unlock()
	return nil
}

// parseChallenge parses `Scheme k="v", k2=v2`.
func parseChallenge(h string) challenge {
	scheme, rest, _ := strings.Cut(strings.TrimSpace(h), " ")
	ch := challenge{scheme: strings.ToLower(scheme), params: map[string]string{}}
	for rest = strings.TrimSpace(rest); rest != ""; {
		k, v, ok := strings.Cut(rest, "=")
		if !ok {
			break
		}
		k = strings.ToLower(strings.TrimSpace(k))
		v = strings.TrimSpace(v)
		if strings.HasPrefix(v, `"`) {
			end := strings.Index(v[1:], `"`)
			if end < 0 {
				ch.params[k] = v[1:]
				break
			}
			ch.params[k] = v[1 : end+1]
			rest = v[end+2:]
		} else {
			val, after, _ := strings.Cut(v, ",")
			ch.params[k] = strings.TrimSpace(val)
			rest = "," + after
		}
		rest = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(rest), ","))
	}
	return ch
}
