package api_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// wantStatus is a check that path answers GET (or HEAD) with status.
func wantStatus(method, path string, status int) func(*testing.T, *testServer, *http.Response, []byte) {
	return func(t *testing.T, ts *testServer, _ *http.Response, _ []byte) {
		t.Helper()
		path := path
		if ts.st != nil {
			path = strings.ReplaceAll(path, "{uuid}", ts.st.uuid)
		}
		if resp, body := ts.get(t, method, path); resp.StatusCode != status {
			t.Errorf("then %s %s: status %d, want %d; body %.200s", method, path, resp.StatusCode, status, body)
		}
	}
}

// both combines checks.
func both(fs ...func(*testing.T, *testServer, *http.Response, []byte)) func(*testing.T, *testServer, *http.Response, []byte) {
	return func(t *testing.T, ts *testServer, resp *http.Response, body []byte) {
		t.Helper()
		for _, f := range fs {
			f(t, ts, resp, body)
		}
	}
}

// wantHeaderValues checks every value of a multi-valued header, in order.
func wantHeaderValues(key string, want ...string) func(*testing.T, *testServer, *http.Response, []byte) {
	return func(t *testing.T, _ *testServer, resp *http.Response, _ []byte) {
		t.Helper()
		if got := resp.Header.Values(key); !slices.Equal(got, want) {
			t.Errorf("header %s = %q, want %q", key, got, want)
		}
	}
}

// wantJSON checks that the body decodes to the same JSON as want.
func wantJSON(want string) func(*testing.T, *testServer, *http.Response, []byte) {
	return func(t *testing.T, _ *testServer, _ *http.Response, body []byte) {
		t.Helper()
		var g, w any
		if err := json.Unmarshal(body, &g); err != nil {
			t.Fatalf("body %.200q: %v", body, err)
		}
		if err := json.Unmarshal([]byte(want), &w); err != nil {
			t.Fatalf("want %q: %v", want, err)
		}
		if gb, wb := mustJSON(g), mustJSON(w); !bytes.Equal(gb, wb) {
			t.Errorf("body %s, want %s", gb, wb)
		}
	}
}

// wantMessage checks that the first error of the body has a message
// containing sub.
func wantMessage(sub string) func(*testing.T, *testServer, *http.Response, []byte) {
	return func(t *testing.T, _ *testServer, _ *http.Response, body []byte) {
		t.Helper()
		var eb errorBody
		if err := json.Unmarshal(body, &eb); err != nil || len(eb.Errors) == 0 {
			t.Fatalf("body %.200q is no error body (%v)", body, err)
		}
		if m := eb.Errors[0].Message; !strings.Contains(m, sub) {
			t.Errorf("error message %q, want it to contain %q", m, sub)
		}
	}
}
