// Package e2e runs the real registry binary against real clients (crane,
// skopeo, oras, regctl, the OCI conformance tool) and raw HTTP.
//
// Tools come from <repo>/.tools/bin (installed by scripts/tools.sh) or PATH.
// Nothing here touches the network beyond 127.0.0.1.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	repoRoot    string // module root (holds go.mod)
	registryBin string // the binary under test, built once by TestMain
)

func TestMain(m *testing.M) {
	os.Exit(mainWithBuild(m))
}

func mainWithBuild(m *testing.M) int {
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			repoRoot = dir
			break
		}
		if dir == filepath.Dir(dir) {
			fmt.Fprintln(os.Stderr, "e2e: no go.mod above", wd)
			return 1
		}
	}
	binDir, err := os.MkdirTemp("", "berth-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(binDir)
	registryBin = filepath.Join(binDir, "registry")
	build := exec.Command("go", "build", "-o", registryBin, "./cmd/registry")
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build ./cmd/registry failed: %v\n%s", err, out)
		return 1
	}
	defer stopSharedServers()
	return m.Run()
}

// regOpts tunes startRegistry.
type regOpts struct {
	// Backend is backendFS (default) or backendS3Dynamo; ignored when
	// Store is set.
	Backend string
	// Store, when set, is shared storage (cluster members share one).
	Store *store
	// Addr and Port to listen on (default 127.0.0.1 and a free port).
	Addr string
	Port int
	// Storage keys merged into the generated storage section (gc,
	// gcDelay, gcInterval, retention).
	Storage map[string]any
	// Extra top-level config keys merged into the generated config
	// (e.g. "extensions", "cluster").
	Extra map[string]any
}

// reg is one running registry process with its own local root.
type reg struct {
	t       *testing.T
	Dir     string // temp dir holding config, logs, data
	Root    string // storage.rootDirectory
	LogPath string // JSON log file
	Addr    string // listen IP
	Port    int
	Host    string // ADDR:PORT
	URL     string // http://ADDR:PORT
	Store   *store
	cfgPath string
	bin     string       // the binary start runs ("": registryBin)
	ready   *http.Client // what start polls /readyz with (nil: plain HTTP)

	mu   sync.Mutex
	cmd  *exec.Cmd
	done <-chan struct{}
}

// startRegistry starts the registry on a free loopback port with fresh
// storage; it is killed when the test ends.
func startRegistry(t *testing.T, opts regOpts) *reg {
	t.Helper()
	r := newRegistry(t, opts)
	r.start()
	return r
}

// newRegistry writes the configuration of a registry without starting it.
func newRegistry(t *testing.T, opts regOpts) *reg {
	t.Helper()
	dir := t.TempDir()
	if opts.Store == nil {
		be := opts.Backend
		if be == "" {
			be = backendFS
		}
		opts.Store = newStore(t, be)
	}
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1"
	}
	r := &reg{t: t, Dir: dir, Root: filepath.Join(dir, "data"), LogPath: filepath.Join(dir, "registry.log"),
		Addr: opts.Addr, Store: opts.Store}
	r.Port = opts.Port
	if r.Port == 0 {
		r.Port = freePort(t)
	}
	r.Host = fmt.Sprintf("%s:%d", r.Addr, r.Port)
	r.URL = "http://" + r.Host
	storage := opts.Store.config(r.Root)
	for k, v := range opts.Storage {
		storage[k] = v
	}
	cfg := map[string]any{
		"http":    map[string]any{"address": r.Addr, "port": fmt.Sprint(r.Port)},
		"storage": storage,
		"log":     map[string]any{"level": "debug", "output": r.LogPath},
	}
	for k, v := range opts.Extra {
		cfg[k] = v
	}
	js, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	r.cfgPath = filepath.Join(dir, "config.json")
	if err := os.WriteFile(r.cfgPath, js, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Kill9()
		if t.Failed() {
			t.Logf("registry %s log tail (%s):\n%s", r.Host, r.LogPath, tailFile(r.LogPath, 30))
		}
	})
	return r
}

// StorageRoot is the directory holding the repositories' OCI layouts (on
// s3: the bucket prefix in versitygw's posix directory).
func (r *reg) StorageRoot() string { return r.Store.repoRoot(r.Root) }

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// start runs the registry and waits until its /readyz answers 200.
func (r *reg) start() {
	r.t.Helper()
	bin, client := r.bin, r.ready
	if bin == "" {
		bin = registryBin
	}
	if client == nil {
		client = &http.Client{Timeout: 2 * time.Second}
	}
	stderr := filepath.Join(r.Dir, "stderr.log")
	p, err := startProc("registry", stderr, append(os.Environ(), r.Store.env()...), bin, "serve", r.cfgPath)
	if err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	r.cmd, r.done = p.Cmd, p.Done()
	r.mu.Unlock()
	switch err := pollReady(client, r.URL+"/readyz", p, 30*time.Second); {
	case err == errExited:
		r.t.Fatalf("registry %s exited during startup: %s\nstderr:\n%s\nlog:\n%s", r.Host, p.Cmd.ProcessState,
			tailFile(stderr, 30), tailFile(r.LogPath, 30))
	case err != nil:
		r.t.Fatalf("registry %v\nlog:\n%s", err, tailFile(r.LogPath, 30))
	}
}

// Kill9 sends SIGKILL and waits for the process to be gone. Safe to call
// from any goroutine, and again after the process is gone.
func (r *reg) Kill9() {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// Restart kills the process if it still runs, then starts it again on the
// same port and storage root, and waits for /readyz.
func (r *reg) Restart() {
	r.t.Helper()
	r.Kill9()
	r.start()
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// tool returns the path of a client binary: <repo>/.tools/bin/NAME, then
// PATH. A missing tool fails the test: the suite never skips.
func tool(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(repoRoot, ".tools", "bin", name)
	if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	t.Fatalf("tool %q not found in %s/.tools/bin or PATH: run scripts/tools.sh", name, repoRoot)
	return ""
}

// clientEnv is the environment for client tools: an isolated HOME and
// config dirs per test, so nothing depends on the user's machine.
var envCache sync.Map // *testing.T -> []string

func clientEnv(t *testing.T) []string {
	if v, ok := envCache.Load(t); ok {
		return v.([]string)
	}
	home := t.TempDir()
	for _, d := range []string{"docker", "xdg-config", "xdg-runtime", "regctl", "tmp"} {
		if err := os.MkdirAll(filepath.Join(home, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	regConf := filepath.Join(home, "registries.conf")
	if err := os.WriteFile(regConf, []byte("unqualified-search-registries = []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "HOME", k == "DOCKER_CONFIG", k == "REGCTL_CONFIG", k == "REGISTRY_AUTH_FILE",
			k == "CONTAINERS_REGISTRIES_CONF", k == "TMPDIR", strings.HasPrefix(k, "XDG_"),
			strings.HasPrefix(k, "OCI_"), strings.HasSuffix(k, "_PROXY"), strings.HasSuffix(k, "_proxy"):
			continue
		}
		env = append(env, kv)
	}
	env = append(env,
		"HOME="+home,
		"DOCKER_CONFIG="+filepath.Join(home, "docker"),
		"XDG_CONFIG_HOME="+filepath.Join(home, "xdg-config"),
		"XDG_RUNTIME_DIR="+filepath.Join(home, "xdg-runtime"),
		"REGCTL_CONFIG="+filepath.Join(home, "regctl", "config.json"),
		"REGISTRY_AUTH_FILE="+filepath.Join(home, "auth.json"),
		"CONTAINERS_REGISTRIES_CONF="+regConf,
		"TMPDIR="+filepath.Join(home, "tmp"),
		"NO_PROXY=*",
	)
	if err := os.WriteFile(filepath.Join(home, "auth.json"), []byte(`{"auths":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	envCache.Store(t, env)
	t.Cleanup(func() { envCache.Delete(t) })
	return env
}

// cmdResult is the outcome of one command.
type cmdResult struct {
	Stdout   string
	Combined string
	Err      error
}

// execCmd runs args in dir with env and a timeout; it never fails a test,
// so it is safe in goroutines.
func execCmd(ctx context.Context, env []string, dir string, timeout time.Duration, args ...string) cmdResult {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env, cmd.Dir = env, dir
	var stdout, combined bytes.Buffer
	cmd.Stdout = multiWriter{&stdout, &combined}
	cmd.Stderr = &combined
	err := cmd.Run()
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("timed out after %s: %w", timeout, err)
	}
	return cmdResult{Stdout: stdout.String(), Combined: combined.String(), Err: err}
}

type multiWriter struct{ a, b *bytes.Buffer }

func (m multiWriter) Write(p []byte) (int, error) { m.a.Write(p); return m.b.Write(p) }

const cmdTimeout = 3 * time.Minute

// run runs a command with the test's isolated client environment and
// returns its combined output; a non-zero exit fails the test with it.
func run(t *testing.T, args ...string) string {
	t.Helper()
	return runIn(t, "", args...).Combined
}

// runStdout is run returning only standard output (for parsing).
func runStdout(t *testing.T, args ...string) string {
	t.Helper()
	return runIn(t, "", args...).Stdout
}

// runIn runs a command in dir.
func runIn(t *testing.T, dir string, args ...string) cmdResult {
	t.Helper()
	return runEnv(t, clientEnv(t), dir, args...)
}

// runFail runs a command that must fail, returning its output.
func runFail(t *testing.T, args ...string) string {
	t.Helper()
	return runFailEnv(t, clientEnv(t), args...)
}

// runEnv runs a command in dir with env; a non-zero exit fails the test
// with the command line (passwords hidden) and its output.
func runEnv(t *testing.T, env []string, dir string, args ...string) cmdResult {
	t.Helper()
	res := execCmd(context.Background(), env, dir, cmdTimeout, args...)
	if res.Err != nil {
		t.Fatalf("command failed: %s\nerror: %v\noutput:\n%s", strings.Join(redact(args), " "), res.Err, res.Combined)
	}
	return res
}

// runFailEnv runs a command with env that must fail, returning its output.
func runFailEnv(t *testing.T, env []string, args ...string) string {
	t.Helper()
	res := execCmd(context.Background(), env, "", cmdTimeout, args...)
	if res.Err == nil {
		t.Fatalf("command succeeded but should have failed: %s\noutput:\n%s", strings.Join(redact(args), " "), res.Combined)
	}
	return res.Combined
}

// redact hides passwords in a command line shown in a failure.
func redact(args []string) []string {
	out := slices.Clone(args)
	for i, a := range out {
		switch {
		case i > 0 && (out[i-1] == "-p" || out[i-1] == "--password" || out[i-1] == "--pass"):
			out[i] = "***"
		case strings.HasPrefix(a, "--creds=") || strings.HasPrefix(a, "--src-creds=") || strings.HasPrefix(a, "--dest-creds="):
			k, _, _ := strings.Cut(a, "=")
			out[i] = k + "=***"
		}
	}
	return out
}

// lines splits output into its non-empty trimmed lines.
func lines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// waitUntil polls ok every 100ms until it holds, failing the test when
// timeout passes first.
func waitUntil(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
