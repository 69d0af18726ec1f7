package e2e

// Helpers of the sync tests. They stand on their own (names start with
// "sync") so that the rest of the harness can change without them.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// syncModuleRoot is the directory holding go.mod.
func syncModuleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		if dir == filepath.Dir(dir) {
			t.Fatal("no go.mod above the test directory")
		}
		dir = filepath.Dir(dir)
	}
}

// syncBuild builds the registry binary into a temp dir of t.
func syncBuild(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "registry")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/registry")
	cmd.Dir = syncModuleRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/registry: %v\n%s", err, out)
	}
	return bin
}

// syncTool finds a client tool in <root>/.tools/bin or PATH; missing fails.
func syncTool(t *testing.T, tool string) string {
	t.Helper()
	p := filepath.Join(syncModuleRoot(t), ".tools", "bin", tool)
	if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
		return p
	}
	if p, err := exec.LookPath(tool); err == nil {
		return p
	}
	t.Fatalf("tool %q not found in .tools/bin or PATH: run scripts/tools.sh", tool)
	return ""
}

func syncFreePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

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

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// syncStartBerth starts a single-node Berth on filesystem storage with the
// given extensions section (nil: none).
func syncStartBerth(t *testing.T, bin, label string, extensions map[string]any) *syncProc {
	t.Helper()
	p := &syncProc{t: t, name: label, probe: "/readyz", Dir: t.TempDir()}
	port := syncFreePort(t)
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
	p.args = []string{bin, "serve", cfgPath}
	p.run()
	return p
}

// syncStartCrane starts `crane registry serve` (in memory).
func syncStartCrane(t *testing.T) *syncProc {
	t.Helper()
	p := &syncProc{t: t, name: "crane", probe: "/v2/", Dir: t.TempDir()}
	p.Host = fmt.Sprintf("127.0.0.1:%d", syncFreePort(t))
	p.URL = "http://" + p.Host
	p.LogPath = filepath.Join(p.Dir, "output.log")
	p.args = []string{syncTool(t, "crane"), "registry", "serve", "--address", p.Host}
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
	out, err := os.OpenFile(filepath.Join(p.Dir, "output.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	cmd := exec.Command(p.args[0], p.args[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append(os.Environ(), "HOME="+p.Dir, "DOCKER_CONFIG="+p.Dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		out.Close()
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); out.Close(); close(done) }()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-done:
			p.t.Fatalf("%s exited during startup:\n%s\n%s", p.name, tailFile(filepath.Join(p.Dir, "output.log"), 30), tailFile(p.LogPath, 30))
		default:
		}
		resp, err := client.Get(p.URL + p.probe)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s not ready on %s after 30s: %v", p.name, p.URL, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill stops the process with SIGKILL and waits for it.
func (p *syncProc) Kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
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

// syncResp is a fully read response.
type syncResp struct {
	Status int
	Header http.Header
	Body   []byte
	Err    error
}

var syncClient = &http.Client{Timeout: 2 * time.Minute}

// syncGet sends method to url with every manifest type accepted; it never
// fails the test (safe in goroutines).
func syncGet(method, url string) syncResp {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return syncResp{Err: err}
	}
	req.Header.Set("Accept", syncAccept)
	resp, err := syncClient.Do(req)
	if err != nil {
		return syncResp{Err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return syncResp{Status: resp.StatusCode, Header: resp.Header, Body: b, Err: err}
}

// syncErrorCode is the first OCI error code of a JSON error body.
func syncErrorCode(body []byte) string {
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

// syncWait polls ok until it holds or timeout passes.
func syncWait(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// syncRunTool runs a client tool with an isolated HOME and returns stdout.
func syncRunTool(t *testing.T, args ...string) string {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "HOME="+home, "DOCKER_CONFIG="+home, "NO_PROXY=*")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}
