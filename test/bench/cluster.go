package main

// The cluster under test: versitygw (S3) and dynalite (DynamoDB) on
// 127.0.0.1, three Berth members on 127.0.0.1, .2 and .3 with one port,
// sharing the bucket and the tables, and HAProxy (balance roundrobin) in
// front. Every process is a child of the bench, killed by its pid at the
// end (and by the kernel, Pdeathsig, if the bench dies first).

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/berthreg/berth/test/e2e/testproc"
)

const (
	clusterHashKey  = "berth-bench-key1" // exactly 16 bytes
	s3Key, s3Secret = "berthbench", "berthbench-secret"
)

var memberIPs = []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}

// child is a helper process (versitygw, dynalite, a member, HAProxy),
// stopped at exit.
type child struct{ *testproc.Proc }

// startChild starts args with the bench's environment plus env.
func startChild(name, logPath string, env []string, args ...string) (*child, error) {
	p, err := testproc.Start(name, logPath, append(os.Environ(), env...), args...)
	if err != nil {
		return nil, err
	}
	c := &child{p}
	atExit(c.stop)
	return c, nil
}

func (c *child) pid() int { return c.Pid() }

// stop asks the process to end (SIGTERM), then kills it after 5s.
func (c *child) stop() { c.Stop(5 * time.Second) }

// waitReady waits until ok() or the process exits.
func (c *child) waitReady(timeout time.Duration, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ok() {
		if c.Exited() {
			return fmt.Errorf("%s exited during startup (log %s):\n%s", c.Name, c.Log, tail(c.Log, 15))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s (log %s):\n%s", c.Name, timeout, c.Log, tail(c.Log, 15))
		}
		time.Sleep(30 * time.Millisecond)
	}
	return nil
}

func tcpUp(addr string) func() bool {
	return func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}
}

func httpOK(u string) func() bool {
	return func() bool {
		resp, err := client.Get(u)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// toolPath finds a helper: <module>/.tools/bin/NAME, then PATH.
func toolPath(name string) (string, error) {
	if out, err := exec.Command("go", "env", "GOMOD").Output(); err == nil {
		p := filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), ".tools", "bin", name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not found in .tools/bin or PATH (make tools)", name)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// member is one Berth process of the cluster.
type member struct {
	*child
	host, url, cfg string
	jlog           string // the JSON log (config log.output)
}

type clusterEnv struct {
	members []*member
	s3      *child
	lb      *child
	lbURL   string
	bin     string
	desc    string // versions of the helpers, for the report
	retries atomic.Int64
}

// startCluster starts everything under dir.
func startCluster(bin, dir string) (*clusterEnv, error) {
	vgw, err := toolPath("versitygw")
	if err != nil {
		return nil, err
	}
	dyn, err := toolPath("dynalite")
	if err != nil {
		return nil, err
	}
	hap, err := toolPath("haproxy")
	if err != nil {
		return nil, err
	}
	s3dir := filepath.Join(dir, "s3")
	if err := os.MkdirAll(s3dir, 0o755); err != nil {
		return nil, err
	}
	s3Port, err := freePort()
	if err != nil {
		return nil, err
	}
	ddbPort, err := freePort()
	if err != nil {
		return nil, err
	}
	s3Addr, ddbAddr := fmt.Sprintf("127.0.0.1:%d", s3Port), fmt.Sprintf("127.0.0.1:%d", ddbPort)
	s3, err := startChild("versitygw", filepath.Join(dir, "versitygw.log"),
		[]string{"ROOT_ACCESS_KEY=" + s3Key, "ROOT_SECRET_KEY=" + s3Secret}, vgw, "--port", s3Addr, "posix", s3dir)
	if err != nil {
		return nil, err
	}
	ddb, err := startChild("dynalite", filepath.Join(dir, "dynalite.log"), nil, dyn, "--host", "127.0.0.1",
		"--port", fmt.Sprint(ddbPort), "--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0")
	if err != nil {
		return nil, err
	}
	if err := s3.waitReady(20*time.Second, tcpUp(s3Addr)); err != nil {
		return nil, err
	}
	if err := ddb.waitReady(20*time.Second, tcpUp(ddbAddr)); err != nil {
		return nil, err
	}

	port, err := clusterPort()
	if err != nil {
		return nil, err
	}
	var hosts []string
	for _, ip := range memberIPs {
		hosts = append(hosts, fmt.Sprintf("%s:%d", ip, port))
	}
	c := &clusterEnv{bin: bin, s3: s3}
	env := []string{"AWS_ACCESS_KEY_ID=bench", "AWS_SECRET_ACCESS_KEY=bench", "AWS_EC2_METADATA_DISABLED=true"}
	for i, ip := range memberIPs {
		mdir := filepath.Join(dir, fmt.Sprintf("m%d", i+1))
		if err := os.MkdirAll(mdir, 0o755); err != nil {
			return nil, err
		}
		cfg := map[string]any{
			"http": map[string]any{"address": ip, "port": fmt.Sprint(port)},
			"storage": map[string]any{
				"rootDirectory": filepath.Join(mdir, "data"),
				"storageDriver": map[string]any{
					"name": "s3", "rootdirectory": "/berth", "region": "us-east-1", "bucket": "berth-bench",
					"regionendpoint": "http://" + s3Addr, "forcepathstyle": true, "secure": false,
					"accesskey": s3Key, "secretkey": s3Secret,
				},
				"cacheDriver": map[string]any{
					"name": "dynamodb", "endpoint": "http://" + ddbAddr, "region": "us-east-1",
					"repoMetaTablename": "BenchRepoMeta", "imageMetaTablename": "BenchImageMeta",
					"repoBlobsInfoTablename": "BenchRepoBlobs", "versionTablename": "BenchVersion",
				},
			},
			"cluster": map[string]any{"members": hosts, "hashKey": clusterHashKey},
			// info is the default level: every request is logged, by the
			// forwarding member and by the owner.
			"log": map[string]any{"level": "info", "output": filepath.Join(mdir, "registry.log")},
		}
		js, _ := json.MarshalIndent(cfg, "", "  ")
		m := &member{host: hosts[i], url: "http://" + hosts[i], cfg: filepath.Join(mdir, "config.json"), jlog: filepath.Join(mdir, "registry.log")}
		if err := os.WriteFile(m.cfg, js, 0o644); err != nil {
			return nil, err
		}
		if m.child, err = startChild("member "+m.host, filepath.Join(mdir, "stderr.log"), env, bin, "serve", m.cfg); err != nil {
			return nil, err
		}
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		if err := m.waitReady(30*time.Second, httpOK(m.url+"/readyz")); err != nil {
			return nil, err
		}
	}
	if err := c.waitPeersUp(15 * time.Second); err != nil {
		return nil, err
	}
	if err := c.startHAProxy(hap, dir); err != nil {
		return nil, err
	}
	hv, _ := exec.Command(hap, "-v").Output()
	hvs, _, _ := strings.Cut(string(hv), " - ")
	c.desc = fmt.Sprintf("members %s (s3 + dynamodb, log level info); versitygw posix in %s (%s); dynalite; %s",
		strings.Join(hosts, ", "), s3dir, fsType(s3dir), strings.TrimSpace(hvs))
	return c, nil
}

// clusterPort finds a port free on every member address.
func clusterPort() (int, error) {
	for try := 0; try < 50; try++ {
		p, err := freePort()
		if err != nil {
			return 0, err
		}
		ok := true
		for _, ip := range memberIPs[1:] {
			ln, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, p))
			if err != nil {
				ok = false
				break
			}
			ln.Close()
		}
		if ok {
			return p, nil
		}
	}
	return 0, errors.New("no port free on 127.0.0.1, 127.0.0.2 and 127.0.0.3")
}

// waitPeersUp waits until no member's log says a peer is down. Members
// check each other every second, and one started before its peers may
// have marked them down: a full interval after all are ready, wait for
// the last health event about every peer to be "up".
func (c *clusterEnv) waitPeersUp(timeout time.Duration) error {
	time.Sleep(2100 * time.Millisecond)
	deadline := time.Now().Add(timeout)
	for {
		var bad []string
		for _, m := range c.members {
			down := map[string]bool{}
			_ = eachLogLine(m.jlog, 0, func(l map[string]any) {
				switch p, _ := l["peer"].(string); l["message"] {
				case "peer is down", "peer marked down after a failed forward":
					down[p] = true
				case "peer is up":
					down[p] = false
				}
			})
			for p, d := range down {
				if d {
					bad = append(bad, m.host+" sees "+p+" down")
				}
			}
		}
		if len(bad) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("members do not see each other up: %v", bad)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// eachLogLine calls fn with every JSON line of path from offset on.
func eachLogLine(path string, offset int64, fn func(map[string]any)) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b[min(offset, int64(len(b))):]), "\n") {
		var l map[string]any
		if json.Unmarshal([]byte(line), &l) == nil {
			fn(l)
		}
	}
	return nil
}

func logSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// cpu is the CPU seconds used so far by the members and versitygw.
func (c *clusterEnv) cpu() float64 {
	t := cpuSeconds(c.s3.pid())
	for _, m := range c.members {
		t += cpuSeconds(m.pid())
	}
	return t
}

// owner asks `registry cluster owner` which member owns repo, and returns
// it and a member that does not.
func (c *clusterEnv) owner(repo string) (own, other *member, err error) {
	out, err := exec.Command(c.bin, "cluster", "owner", repo, "--config", c.members[0].cfg).CombinedOutput()
	if err != nil {
		return nil, nil, fmt.Errorf("registry cluster owner %s: %v: %s", repo, err, out)
	}
	var host string
	for _, line := range strings.Split(string(out), "\n") {
		if h, ok := strings.CutPrefix(line, "owner: "); ok {
			host = strings.TrimSpace(h)
		}
	}
	for _, m := range c.members {
		if m.host == host {
			own = m
		} else if other == nil {
			other = m
		}
	}
	if own == nil {
		return nil, nil, fmt.Errorf("registry cluster owner %s: no member %q in %q", repo, host, out)
	}
	return own, other, nil
}
