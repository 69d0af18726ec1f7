package config

import (
	"testing"
	"time"
)

// TestParseHTTPLimits: the limits keep their defaults when absent, 0 turns
// the optional ones off, and a zero header limit means the default.
func TestParseHTTPLimits(t *testing.T) {
	t.Parallel()
	c, _, err := Parse([]byte("http:\n  port: 5000\n"), FormatYAML)
	if err != nil {
		t.Fatal(err)
	}
	if h := c.HTTP; h.MaxUploadsPerClient != DefaultMaxUploadsPerClient || h.ReadIdleTimeout != DefaultReadIdleTimeout ||
		h.WriteIdleTimeout != DefaultWriteIdleTimeout || h.ReadHeaderTimeout != DefaultReadHeaderTimeout ||
		h.MaxHeaderBytes != DefaultMaxHeaderBytes {
		t.Errorf("defaults: %+v", h)
	}
	c, _, err = Parse([]byte(`{"http":{"maxUploadsPerClient":0,"readIdleTimeout":"2s","writeIdleTimeout":0,
		"readHeaderTimeout":0,"maxHeaderBytes":"65536"}}`), FormatJSON)
	if err != nil {
		t.Fatal(err)
	}
	if h := c.HTTP; h.MaxUploadsPerClient != 0 || h.ReadIdleTimeout.Std() != 2*time.Second || h.WriteIdleTimeout != 0 ||
		h.ReadHeaderTimeout != DefaultReadHeaderTimeout || h.MaxHeaderBytes != 65536 {
		t.Errorf("set: %+v", h)
	}
	_, _, err = Parse([]byte(`{"http":{"maxUploadsPerClient":-3,"readIdleTimeout":"10ms","maxHeaderBytes":10}}`), FormatJSON)
	wantErrContaining(t, err, "http.maxUploadsPerClient: must be 0 (no limit) or more, got -3")
	wantErrContaining(t, err, "http.readIdleTimeout: must be 0 (no limit) or at least 1s, got 10ms")
	wantErrContaining(t, err, "http.maxHeaderBytes: must be 4096..67108864, got 10")
}
