package e2e

// Helpers of the sync tests: upstream and downstream registries (a
// single-node Berth or `crane registry serve`) as processes of their own.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// syncProc is a registry process (Berth or crane) on a loopback port.
type syncProc struct {
	t       *testing.T
	name    string
	args    []string
	probe   string // path answering 200 when ready
	Dir     string
	LogPath string // Berth's JSON log, or the process output
	Host    string // 127.0.0.1:PORT
	URL     string

	mu sync.Mutex
	p  *proc
}

// syncStartBerth starts a single-node Berth (the binary TestMain built) on
// filesystem storage with the given extensions section (nil: none).
func syncStartBerth(t *testing.T, label string, extensions map[string]any) *syncProc {
	t.Helper()
	p := &syncProc{t: t, name: label, probe: "/readyz", Dir: t.TempDir()}
	port := freePort(t)
	p.Host = fmt.Sprintf("127.0.0.1:%d", port)
	p.URL = "http://" + p.Host
	p.LogPath = filepath.Join(p.Dir, "registry.log")
	cfg := map[string]any{
		"http":    map[string]any{"address": "127.0.0.1", "port": strconv.Itoa(port)},
		"storage": map[string]any{"rootDirectory": filepath.Join(p.Dir, "data")},
		"log":     map[string]any{"level": "debug", "output": p.LogPath},
	}
	if extensions != nil {
		cfg["extensions"] = extensions
	}
	js, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(p.Dir, "config.json")
	if err := os.WriteFile(cfgPath, js, 0o644); err != nil {
		t.Fatal(err)
	}
	p.args = []string{registryBin, "serve", cfgPath}
	p.run()
	return p
}

// syncStartCrane starts `crane registry serve` (in memory).
func syncStartCrane(t *testing.T) *syncProc {
	t.Helper()
	p := &syncProc{t: t, name: "crane", probe: "/v2/", Dir: t.TempDir()}
	p.Host = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p.URL = "http://" + p.Host
	p.LogPath = filepath.Join(p.Dir, "output.log")
	p.args = []string{tool(t, "crane"), "registry", "serve", "--address", p.Host}
	p.run()
	return p
}

// run starts the process, waits until it is ready, and kills it when the
// test ends (logging its tail when the test failed).
func (p *syncProc) run() {
	p.t.Helper()
	p.t.Cleanup(func() {
		p.Kill()
		if p.t.Failed() {
			p.t.Logf("%s log tail (%s):\n%s", p.name, p.LogPath, tailFile(p.LogPath, 40))
			if out := filepath.Join(p.Dir, "output.log"); out != p.LogPath {
				p.t.Logf("%s output:\n%s", p.name, tailFile(out, 20))
			}
		}
	})
	p.start()
}

func (p *syncProc) start() {
	p.t.Helper()
	out := filepath.Join(p.Dir, "output.log")
	pr, err := startProc(p.name, out, append(os.Environ(), "HOME="+p.Dir, "DOCKER_CONFIG="+p.Dir), p.args...)
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.p = pr
	p.mu.Unlock()
	switch err := pollReady(&http.Client{Timeout: 2 * time.Second}, p.URL+p.probe, pr, 30*time.Second); {
	case err == errExited:
		p.t.Fatalf("%s exited during startup:\n%s\n%s", p.name, tailFile(out, 30), tailFile(p.LogPath, 30))
	case err != nil:
		p.t.Fatalf("%s %v", p.name, err)
	}
}

// Kill stops the process (its whole process group) with SIGKILL and waits
// for it.
func (p *syncProc) Kill() {
	p.mu.Lock()
	pr := p.p
	p.p = nil
	p.mu.Unlock()
	if pr == nil {
		return
	}
	_ = syscall.Kill(-pr.Pid(), syscall.SIGKILL)
	<-pr.Done()
}

// Restart starts the process again on the same port and data.
func (p *syncProc) Restart() {
	p.t.Helper()
	p.Kill()
	p.start()
}

// syncPush writes img (v1.Image or v1.ImageIndex) to host/ref and returns
// its digest.
func syncPush(t *testing.T, host, ref string, img any) string {
	t.Helper()
	r, err := name.ParseReference(host+"/"+ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	var d v1.Hash
	switch x := img.(type) {
	case v1.Image:
		if err = remote.Write(r, x); err == nil {
			d, err = x.Digest()
		}
	case v1.ImageIndex:
		if err = remote.WriteIndex(r, x); err == nil {
			d, err = x.Digest()
		}
	default:
		t.Fatalf("syncPush: %T", img)
	}
	if err != nil {
		t.Fatalf("push %s/%s: %v", host, ref, err)
	}
	return d.String()
}

// syncAccept lists every manifest media type.
const syncAccept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, " +
	"application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"

// syncResp is a fully read response, or the error that kept it from
// coming (then the response is empty).
type syncResp struct {
	resp
	Err error
}

// syncClient follows redirects (unlike httpClient), as registry clients do.
var syncClient = &http.Client{Timeout: 2 * time.Minute}

// syncGet sends method to url with every manifest type accepted; it never
// fails the test (safe in goroutines).
func syncGet(method, url string) syncResp {
	res, err := send(syncClient, method, url, "", "", map[string]string{"Accept": syncAccept}, nil)
	if err != nil {
		return syncResp{Err: err}
	}
	return syncResp{resp: *res}
}

// syncMetric sums the samples of metric whose labels contain every
// `k="v"` of labels, from p's /metrics.
func syncMetric(t *testing.T, p *syncProc, metric string, labels ...string) float64 {
	t.Helper()
	res := syncGet(http.MethodGet, p.URL+"/metrics")
	if res.Err != nil || res.Status != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", res.Status, res.Err)
	}
	sum, err := sumMetric(res.Body, metric, labels...)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// syncList GETs a listing (catalog or tags; these never trigger a sync)
// and returns its entries, nil on 404.
func syncList(t *testing.T, url, field string) []string {
	t.Helper()
	res := syncGet(http.MethodGet, url)
	if res.Err != nil {
		t.Fatalf("GET %s: %v", url, res.Err)
	}
	if res.Status == http.StatusNotFound {
		return nil
	}
	if res.Status != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, res.Status, res.Body)
	}
	var m map[string]json.RawMessage
	var list []string
	if err := json.Unmarshal(res.Body, &m); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	if err := json.Unmarshal(m[field], &list); m[field] != nil && err != nil {
		t.Fatalf("GET %s: %s: %v", url, field, err)
	}
	return list
}
