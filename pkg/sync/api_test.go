package sync

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	gosync "sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/api"
	"github.com/berthreg/berth/pkg/config"
)

// TestThroughAPI pulls through the HTTP API: the answers a client sees.
func TestThroughAPI(t *testing.T) {
	up := newUpstream(t, true)
	want := up.push(t, "lib/app:1", randomImage(t, 256, 2))
	e := newSyncEnv(t, []config.SyncRegistry{regConfig(up.URL)}, nil)
	srv := httptest.NewServer(api.New(e.reg, api.Options{Log: zerolog.Nop(), Sync: e.s}))
	t.Cleanup(srv.Close)
	get := func(path string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}

	// Concurrent pulls of a missing image: all succeed, one upstream fetch.
	var wg gosync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(srv.URL + "/v2/lib/app/manifests/1")
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != want.String() {
				t.Errorf("pull: %d %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
			}
		}()
	}
	wg.Wait()
	settle(t, e.s)
	if n := up.count("GET", "/v2/lib/app/manifests/1"); n != 1 {
		t.Errorf("upstream manifest GETs = %d, want 1", n)
	}

	resp, body := get("/v2/lib/nothing/manifests/1")
	if resp.StatusCode != http.StatusNotFound || errorCode(body) != "MANIFEST_UNKNOWN" {
		t.Errorf("missing upstream: %d %s", resp.StatusCode, body)
	}

	up.Close() // upstream down
	resp, body = get("/v2/lib/other/manifests/1")
	if resp.StatusCode != http.StatusServiceUnavailable || errorCode(body) != "UNAVAILABLE" {
		t.Errorf("upstream down: %d %s", resp.StatusCode, body)
	}
	// What was synced is still served.
	resp, _ = get("/v2/lib/app/manifests/1")
	if resp.StatusCode != http.StatusOK {
		t.Errorf("synced image while upstream is down: %d", resp.StatusCode)
	}
}

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
