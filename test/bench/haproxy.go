package main

// HAProxy in front of the cluster, as the e2e tests run it.

import (
	"encoding/csv"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

func (c *clusterEnv) startHAProxy(bin, dir string) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	sock := filepath.Join(dir, "haproxy.sock")
	var servers strings.Builder
	for i, m := range c.members {
		fmt.Fprintf(&servers, "  server m%d %s check\n", i+1, m.host)
	}
	cfg := fmt.Sprintf(`global
  maxconn 2000
  stats socket %s mode 600 level admin

defaults
  mode http
  timeout connect 2s
  timeout client 300s
  timeout server 300s
  retries 2
  option redispatch

frontend registry
  bind %s
  default_backend members

backend members
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 500ms fall 2 rise 2
%s`, sock, addr, servers.String())
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return err
	}
	if c.lb, err = startChild("haproxy", filepath.Join(dir, "haproxy.log"), nil, bin, "-db", "-f", path); err != nil {
		return err
	}
	c.lbURL = "http://" + addr
	return c.lb.waitReady(15*time.Second, func() bool {
		st, err := haproxyStatus(sock)
		return err == nil && st["m1"] == "UP" && st["m2"] == "UP" && st["m3"] == "UP"
	})
}

// haproxyStatus reads each server's status from the stats socket.
func haproxyStatus(sock string) (map[string]string, error) {
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("show stat\n")); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return nil, err
	}
	rd := csv.NewReader(strings.NewReader(strings.TrimPrefix(strings.TrimSpace(string(b)), "# ")))
	rd.FieldsPerRecord = -1
	recs, err := rd.ReadAll()
	if err != nil || len(recs) < 2 {
		return nil, fmt.Errorf("show stat: %v", err)
	}
	col := map[string]int{}
	for i, name := range recs[0] {
		col[name] = i
	}
	out := map[string]string{}
	for _, r := range recs[1:] {
		if len(r) > col["status"] && r[col["pxname"]] == "members" {
			out[r[col["svname"]]] = r[col["status"]]
		}
	}
	return out, nil
}
