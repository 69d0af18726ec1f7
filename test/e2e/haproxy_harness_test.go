package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berthreg/berth/test/e2e/haproxycfg"
)

// haproxy is HAProxy in front of a cluster's members.
type haproxy struct {
	p    *proc
	Host string
	sock string
	cfg  string
}

// startHAProxy runs HAProxy in front of members as servers m1, m2, ...
// (health checks: GET /readyz). With pki it terminates TLS with the
// members' certificate and re-encrypts towards the members, verifying them
// with the cluster CA; without, it speaks plain HTTP on both sides.
func startHAProxy(t *testing.T, members []*reg, pki *testPKI) *haproxy {
	t.Helper()
	bin := tool(t, "haproxy")
	dir := t.TempDir()
	h := &haproxy{Host: fmt.Sprintf("127.0.0.1:%d", freePort(t)), sock: filepath.Join(dir, "admin.sock"), cfg: filepath.Join(dir, "haproxy.cfg")}
	cfg := haproxycfg.Config{StatsSocket: h.sock, Bind: h.Host, Log: true}
	for _, m := range members {
		cfg.Servers = append(cfg.Servers, m.Host)
	}
	if pki != nil {
		cert, err := os.ReadFile(pki.ServerCert)
		must(t, err)
		key, err := os.ReadFile(pki.ServerKey)
		must(t, err)
		cfg.FrontendPEM = filepath.Join(dir, "frontend.pem")
		must(t, os.WriteFile(cfg.FrontendPEM, append(cert, key...), 0o600))
		cfg.BackendCA = pki.CA
	}
	must(t, os.WriteFile(h.cfg, []byte(cfg.String()), 0o644))
	p, err := startProc("haproxy", filepath.Join(dir, "haproxy.log"), os.Environ(), bin, "-db", "-f", h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.p = p
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("haproxy log tail (%s):\n%s", p.Log, tailFile(p.Log, 30))
		}
	})
	if err := waitTCP(p, h.Host, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return h
}

// status returns each server's status (UP, DOWN, "UP 1/2", ...) from the
// stats socket.
func (h *haproxy) status() (map[string]string, error) { return haproxycfg.ServerStatus(h.sock) }

// waitStatus waits until every server in want has that status and
// returns how long it took.
func (h *haproxy) waitStatus(t *testing.T, want map[string]string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var last map[string]string
	var err error
	for {
		last, err = h.status()
		ok := err == nil
		for k, v := range want {
			ok = ok && last[k] == v
		}
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("haproxy servers %v (err %v) after %s, want %v", last, err, timeout, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
