package main

// HAProxy in front of the cluster, as the e2e tests run it (the
// configuration comes from test/e2e/haproxycfg), without its request log.

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/berthreg/berth/test/e2e/haproxycfg"
)

func (c *clusterEnv) startHAProxy(bin, dir string) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	sock := filepath.Join(dir, "haproxy.sock")
	cfg := haproxycfg.Config{StatsSocket: sock, Bind: addr}
	for _, m := range c.members {
		cfg.Servers = append(cfg.Servers, m.host)
	}
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg.String()), 0o644); err != nil {
		return err
	}
	if c.lb, err = startChild("haproxy", filepath.Join(dir, "haproxy.log"), nil, bin, "-db", "-f", path); err != nil {
		return err
	}
	c.lbURL = "http://" + addr
	return c.lb.waitReady(15*time.Second, func() bool {
		st, err := haproxycfg.ServerStatus(sock)
		return err == nil && st["m1"] == "UP" && st["m2"] == "UP" && st["m3"] == "UP"
	})
}
