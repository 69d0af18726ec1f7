package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLogsAndMetrics checks the access log, /metrics and /livez after a push.
func TestLogsAndMetrics(t *testing.T) {
	forEachBackend(t, testLogsAndMetrics)
}

func testLogsAndMetrics(t *testing.T, be string) {
	r := startRegistry(t, regOpts{Backend: be, Extra: map[string]any{
		"extensions": map[string]any{"metrics": map[string]any{"enable": true, "prometheus": map[string]any{"path": "/metrics"}}},
	}})
	const repo = "obs/img"
	dgst, man := r.pushImage(t, repo, "v1")
	get := r.do(t, "GET", "/v2/"+repo+"/manifests/v1", map[string]string{"Accept": mtManifest}, nil)
	if get.Status != 200 || sha256Digest(get.Body) != dgst {
		t.Fatalf("GET manifest: %s", get)
	}
	reqID := get.Header.Get("X-Request-Id")
	if reqID == "" {
		t.Errorf("no X-Request-Id response header")
	}

	// Log lines are written after the response; give them a moment.
	var putLine, getLine map[string]any
	deadline := time.Now().Add(30 * time.Second)
	for {
		putLine, getLine = nil, nil
		for _, l := range readLogLines(t, r.LogPath) {
			if l["repo"] != repo || l["status"] == nil {
				continue
			}
			path, _ := l["path"].(string)
			switch {
			case l["method"] == "PUT" && path == "/v2/"+repo+"/manifests/v1":
				putLine = l
			case l["method"] == "GET" && path == "/v2/"+repo+"/manifests/v1":
				getLine = l
			}
		}
		if (putLine != nil && getLine != nil) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if putLine == nil || getLine == nil {
		t.Fatalf("no access log lines for PUT and GET of %s:v1 in %s:\n%s", repo, r.LogPath, tailFile(r.LogPath, 20))
	}
	for name, l := range map[string]map[string]any{"PUT": putLine, "GET": getLine} {
		for _, f := range []string{"req_id", "method", "repo", "status", "bytes_in", "bytes_out"} {
			if _, ok := l[f]; !ok {
				t.Errorf("%s log line lacks %q: %v", name, f, l)
			}
		}
		if id, _ := l["req_id"].(string); id == "" {
			t.Errorf("%s log line: empty req_id: %v", name, l)
		}
	}
	if st, _ := putLine["status"].(float64); st != 201 {
		t.Errorf("PUT log status %v, want 201", putLine["status"])
	}
	if n, _ := putLine["bytes_in"].(float64); int(n) != len(man) {
		t.Errorf("PUT log bytes_in %v, want %d", putLine["bytes_in"], len(man))
	}
	if n, _ := getLine["bytes_out"].(float64); int(n) != len(man) {
		t.Errorf("GET log bytes_out %v, want %d", getLine["bytes_out"], len(man))
	}
	if getLine["req_id"] != reqID {
		t.Errorf("GET log req_id %v, response X-Request-Id %q", getLine["req_id"], reqID)
	}

	res := r.do(t, "GET", "/metrics", nil, nil)
	if res.Status != 200 {
		t.Fatalf("GET /metrics: %s", res)
	}
	body := string(res.Body)
	for _, name := range []string{"berth_http_requests_total", "berth_http_request_duration_seconds", "berth_uploads_in_progress"} {
		if !regexp.MustCompile(`(?m)^` + name + `(_bucket|_sum|_count)?(\{| )`).MatchString(body) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	// At least the manifest PUT is counted with its status.
	var puts float64
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "berth_http_requests_total{") && strings.Contains(l, `method="PUT"`) && strings.Contains(l, `status="201"`) {
			f := strings.Fields(l)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			puts += v
		}
	}
	if puts < 3 { // config blob, layer blob, manifest
		t.Errorf("berth_http_requests_total counts %v PUT 201, want >= 3", puts)
	}
	if m := regexp.MustCompile(`(?m)^berth_uploads_in_progress (\S+)$`).FindStringSubmatch(body); m == nil || m[1] != "0" {
		t.Errorf("berth_uploads_in_progress with no upload running: %v, want 0", m)
	}

	for _, p := range []string{"/livez", "/readyz"} {
		if res := r.do(t, "GET", p, nil, nil); res.Status != http.StatusOK {
			t.Errorf("GET %s: %s", p, res)
		}
	}
}

func readLogLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// The registry may be writing a line: leave a trailing fragment
	// without its newline for a later read.
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i+1]
	} else {
		b = nil
	}
	var out []map[string]any
	for i, l := range lines(string(b)) {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Errorf("log line %d is not JSON: %v: %s", i+1, err, l)
			continue
		}
		out = append(out, m)
	}
	return out
}
