// Package haproxycfg is HAProxy as the e2e tests and the bench run it in
// front of a Berth cluster: the configuration file (round robin over the
// members, health checks on /readyz, optionally TLS on both sides) and the
// servers' states read from the stats socket.
package haproxycfg

import (
	"encoding/csv"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// Config describes HAProxy balancing round robin over Servers, which it
// names m1, m2, ... in order.
type Config struct {
	StatsSocket string   // admin socket (for ServerStatus)
	Bind        string   // frontend address, host:port
	Servers     []string // member addresses, host:port
	// Log has HAProxy log every request (option httplog) on stdout.
	Log bool
	// FrontendPEM, when set, is a certificate and key file the frontend
	// terminates TLS with.
	FrontendPEM string
	// BackendCA, when set, has HAProxy speak TLS to the servers (requests
	// and health checks) and verify them with this CA file.
	BackendCA string
}

// String is the text of the configuration file.
func (c Config) String() string {
	var b strings.Builder
	b.WriteString("global\n  maxconn 2000\n")
	fmt.Fprintf(&b, "  stats socket %s mode 600 level admin\n", c.StatsSocket)
	if c.Log {
		b.WriteString("  log stdout format raw local0 info\n")
	}
	b.WriteString("\ndefaults\n  mode http\n")
	if c.Log {
		b.WriteString("  log global\n  option httplog\n")
	}
	b.WriteString("  timeout connect 2s\n  timeout client 300s\n  timeout server 300s\n  retries 2\n  option redispatch\n")
	bind := c.Bind
	if c.FrontendPEM != "" {
		bind += " ssl crt " + c.FrontendPEM
	}
	fmt.Fprintf(&b, "\nfrontend registry\n  bind %s\n  default_backend members\n", bind)
	defaultServer := "inter 500ms fall 2 rise 2"
	if c.BackendCA != "" {
		defaultServer += " ssl verify required ca-file " + c.BackendCA + " check-ssl"
	}
	b.WriteString("\nbackend members\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n")
	fmt.Fprintf(&b, "  default-server %s\n", defaultServer)
	for i, s := range c.Servers {
		fmt.Fprintf(&b, "  server m%d %s check\n", i+1, s)
	}
	return b.String()
}

// ServerStatus returns the status of each server of the members backend
// (UP, DOWN, "UP 1/2", ...) from the stats socket at sock.
func ServerStatus(sock string) (map[string]string, error) {
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
	text := strings.TrimPrefix(strings.TrimSpace(string(b)), "# ")
	rd := csv.NewReader(strings.NewReader(text))
	rd.FieldsPerRecord = -1
	recs, err := rd.ReadAll()
	if err != nil || len(recs) < 2 {
		return nil, fmt.Errorf("show stat: %v: %q", err, b)
	}
	col := map[string]int{}
	for i, name := range recs[0] {
		col[name] = i
	}
	out := map[string]string{}
	for _, r := range recs[1:] {
		if len(r) > col["status"] && r[col["pxname"]] == "members" && r[col["svname"]] != "BACKEND" {
			out[r[col["svname"]]] = r[col["status"]]
		}
	}
	return out, nil
}
