package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// clusterHashKey is the cluster's SipHash key (exactly 16 bytes).
const clusterHashKey = "berth-e2e-key-16"

// memberIPs are the members' addresses: 127.0.0.0/8 is all local.
var memberIPs = []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}

// cluster is three registry processes on 127.0.0.1/2/3, same port, sharing
// one bucket and one set of tables, optionally behind HAProxy.
type cluster struct {
	t       *testing.T
	Store   *store
	Port    int
	Members []*reg
	// LB is HAProxy (nil without one); LBReg is its frontend as an HTTP
	// endpoint for do/try (it has no process of its own).
	LB    *haproxy
	LBReg *reg
}

type clusterOpts struct {
	LB bool
	// Storage keys merged into every member's storage section (gc,
	// gcDelay, gcInterval, retention).
	Storage map[string]any
	// Extra top-level config keys (e.g. "extensions").
	Extra map[string]any
	// SpareIPs are more addresses the cluster's port must be free on (for
	// members a test adds later, e.g. 127.0.0.4).
	SpareIPs []string
}

// startCluster starts the members (and HAProxy) and waits until every
// member is ready, every member has seen every peer up, and HAProxy has
// every server UP.
func startCluster(t *testing.T, opts clusterOpts) *cluster {
	t.Helper()
	start := time.Now()
	c := &cluster{t: t, Store: newStore(t, backendS3Dynamo), Port: clusterPort(t, opts.SpareIPs...)}
	extra := map[string]any{"cluster": map[string]any{"members": memberHosts(c.Port), "hashKey": clusterHashKey}}
	for k, v := range opts.Extra {
		extra[k] = v
	}
	for _, ip := range memberIPs {
		c.Members = append(c.Members, newRegistry(t, regOpts{Store: c.Store, Addr: ip, Port: c.Port, Storage: opts.Storage, Extra: extra}))
	}
	for _, m := range c.Members {
		m.start()
	}
	c.finishStart(t, opts.LB, nil, start)
	return c
}

// memberHosts are the members' addresses at port ("127.0.0.1:P", ...).
func memberHosts(port int) []string {
	var hosts []string
	for _, ip := range memberIPs {
		hosts = append(hosts, fmt.Sprintf("%s:%d", ip, port))
	}
	return hosts
}

// finishStart starts HAProxy in front of the running members when lb is
// set (with TLS on both sides when pki is set), waits until every member
// sees every peer up and HAProxy has every server UP, and logs how long
// the start took.
func (c *cluster) finishStart(t *testing.T, lb bool, pki *testPKI, start time.Time) {
	t.Helper()
	kind, scheme := "cluster", "http://"
	if pki != nil {
		kind, scheme = "TLS cluster", "https://"
	}
	if lb {
		c.LB = startHAProxy(t, c.Members, pki)
		c.LBReg = &reg{t: t, Host: c.LB.Host, URL: scheme + c.LB.Host, Store: c.Store}
	}
	c.waitPeersUp(t, nil, 10*time.Second)
	if c.LB != nil {
		c.LB.waitStatus(t, map[string]string{"m1": "UP", "m2": "UP", "m3": "UP"}, 10*time.Second)
	}
	t.Logf("%s %v (bucket %s) ready in %s", kind, memberHosts(c.Port), c.Store.Bucket, time.Since(start).Round(time.Millisecond))
}

// clusterPort finds a port free on every member address (and on spare).
func clusterPort(t *testing.T, spare ...string) int {
	t.Helper()
	for try := 0; try < 50; try++ {
		p := freePort(t)
		ok := true
		for _, ip := range append(memberIPs[1:], spare...) {
			ln, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, p))
			if err != nil {
				ok = false
				break
			}
			ln.Close()
		}
		if ok {
			return p
		}
	}
	t.Fatalf("no port free on %v", append(memberIPs, spare...))
	return 0
}

// StorageRoot is where the cluster's repositories are (versitygw's posix
// directory of the shared bucket).
func (c *cluster) StorageRoot() string { return c.Store.repoRoot("") }

// member returns the member listening on host ("127.0.0.2:P").
func (c *cluster) member(host string) *reg {
	for _, m := range c.Members {
		if m.Host == host {
			return m
		}
	}
	c.t.Fatalf("no member %q", host)
	return nil
}

// entries are the places a client can send requests: every member and the LB.
func (c *cluster) entries() []*reg {
	e := append([]*reg(nil), c.Members...)
	if c.LBReg != nil {
		e = append(e, c.LBReg)
	}
	return e
}

// name is a short label for an endpoint in messages.
func (c *cluster) name(r *reg) string {
	if r == c.LBReg {
		return "lb(" + r.Host + ")"
	}
	for i, m := range c.Members {
		if m == r {
			return fmt.Sprintf("m%d(%s)", i+1, m.Host)
		}
	}
	return r.Host
}

// ---- logs ----

// logLine is one JSON log line.
type logLine map[string]any

func (l logLine) str(k string) string { s, _ := l[k].(string); return s }

func (l logLine) num(k string) int { f, _ := l[k].(float64); return int(f) }

func (l logLine) has(k string) bool { _, ok := l[k]; return ok }

// logSize is the current length of a member's log, a mark for logSince.
func (r *reg) logSize() int64 {
	fi, err := os.Stat(r.LogPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logSince returns the complete JSON lines written at or after offset
// (the log survives restarts: it is opened for appending).
func (r *reg) logSince(t *testing.T, offset int64) []logLine {
	t.Helper()
	out, bad, err := readLog(r.LogPath, offset)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bad {
		t.Errorf("%s: %s", r.LogPath, b)
	}
	return out
}

// readLog reads the JSON lines of path from offset; lines that do not
// parse are returned as messages. A trailing fragment without its newline
// is a line the live process is still writing: it is left for a later
// read. It never fails a test (goroutines use it).
func readLog(path string, offset int64) (out []logLine, bad []string, err error) {
	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil, nil
		}
		return nil, nil, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(f, 1<<20)
	for {
		b, err := br.ReadBytes('\n')
		if err == io.EOF {
			return out, bad, nil // b, if any, is an unfinished line
		}
		if err != nil {
			return out, bad, err
		}
		b = bytes.TrimSuffix(b[:len(b)-1], []byte("\r"))
		var l logLine
		if err := json.Unmarshal(b, &l); err != nil {
			bad = append(bad, fmt.Sprintf("log line is not JSON: %v: %s", err, b))
			continue
		}
		out = append(out, l)
	}
}

// reqLine is an access log line ("request" with a status) and where it
// was written.
type reqLine struct {
	logLine
	On string // member that wrote it
}

// requests returns the access log lines of every member written after the
// marks (nil marks: from the start), in file order per member.
func (c *cluster) requests(t *testing.T, marks map[string]int64) []reqLine {
	t.Helper()
	var out []reqLine
	for _, m := range c.Members {
		for _, l := range m.logSince(t, marks[m.Host]) {
			if l.str("message") == "request" && l.has("status") && l.str("repo") != "" {
				out = append(out, reqLine{l, m.Host})
			}
		}
	}
	return out
}

// marks records the current end of every member's log.
func (c *cluster) marks() map[string]int64 {
	m := map[string]int64{}
	for _, r := range c.Members {
		m[r.Host] = r.logSize()
	}
	return m
}

// storedBy returns, per repository, the members that served a manifest
// PUT with 201 themselves (a line without an owner field).
func storedBy(lines []reqLine) map[string]map[string]int {
	out := map[string]map[string]int{}
	for _, l := range lines {
		if l.str("method") != "PUT" || l.num("status") != 201 || !strings.Contains(l.str("path"), "/manifests/") || l.has("owner") {
			continue
		}
		repo := l.str("repo")
		if out[repo] == nil {
			out[repo] = map[string]int{}
		}
		out[repo][l.On]++
	}
	return out
}

// peerState reads member m's view of peer from its log: false when the
// last health event says down. Safe in goroutines.
func peerState(m *reg, peer string) (up bool, events int) {
	up = true
	lines, _, _ := readLog(m.LogPath, 0)
	for _, l := range lines {
		if l.str("peer") != peer {
			continue
		}
		switch l.str("message") {
		case "peer is down", "peer marked down after a failed forward":
			up, events = false, events+1
		case "peer is up":
			up, events = true, events+1
		}
	}
	return up, events
}

// waitPeersUp waits until every running member (not in skip) sees every
// other running member up, then one more health interval.
func (c *cluster) waitPeersUp(t *testing.T, skip map[string]bool, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	// Members check peers every second; a peer that was not listening yet
	// is marked down only after two failed checks. Waiting a full interval
	// after all are ready lets every member record at least one good check.
	time.Sleep(1100 * time.Millisecond)
	for {
		var bad []string
		for _, m := range c.Members {
			if skip[m.Host] {
				continue
			}
			for _, p := range c.Members {
				if p == m || skip[p.Host] {
					continue
				}
				if up, _ := peerState(m, p.Host); !up {
					bad = append(bad, m.Host+" sees "+p.Host+" down")
				}
			}
		}
		if len(bad) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("members do not see each other up after %s: %v", timeout, bad)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ---- private /etc/hosts and /etc/resolv.conf ----

// unshareAvailable reports why a private mount namespace cannot be made
// (to bind-mount files over /etc/hosts and /etc/resolv.conf for one
// command), or nil when it can.
func unshareAvailable() error {
	p, err := exec.LookPath("unshare")
	if err != nil {
		return err
	}
	res := execCmd(context.Background(), os.Environ(), "", 10*time.Second, p, "-m", "true")
	if res.Err != nil {
		return fmt.Errorf("unshare -m true: %v: %s", res.Err, strings.TrimSpace(res.Combined))
	}
	return nil
}

// inPrivateEtc wraps args so that they run with hosts bind-mounted over
// /etc/hosts and resolv over /etc/resolv.conf ("" keeps the real one), in a
// private mount namespace: the machine's files are untouched.
func inPrivateEtc(hosts, resolv string, args ...string) []string {
	script := `mount --bind "$1" /etc/hosts || exit 97
if [ -n "$2" ]; then mount --bind "$2" /etc/resolv.conf || exit 98; fi
shift 2
exec "$@"`
	return append([]string{"unshare", "-m", "sh", "-c", script, "sh", hosts, resolv}, args...)
}

// dnsServer answers A queries for one name with every address, rotating
// their order on each query (like dnsmasq or CoreDNS loadbalance); AAAA
// gets an empty answer, other names NXDOMAIN.
type dnsServer struct {
	pc      net.PacketConn
	name    string
	addrs   []net.IP
	mu      sync.Mutex
	queries int
}

func startDNS(t *testing.T, listen, name string, addrs []string) *dnsServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", listen)
	if err != nil {
		t.Fatalf("DNS server on %s: %v", listen, err)
	}
	d := &dnsServer{pc: pc, name: strings.ToLower(strings.TrimSuffix(name, "."))}
	for _, a := range addrs {
		d.addrs = append(d.addrs, net.ParseIP(a).To4())
	}
	t.Cleanup(func() { pc.Close() })
	go d.serve()
	return d
}

func (d *dnsServer) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := d.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if out := d.answer(buf[:n]); out != nil {
			_, _ = d.pc.WriteTo(out, from)
		}
	}
}

// answer builds the response to one query (nil: ignore it).
func (d *dnsServer) answer(q []byte) []byte {
	if len(q) < 12 || q[2]&0x80 != 0 || q[4] != 0 || q[5] != 1 {
		return nil
	}
	// The question: labels, then QTYPE and QCLASS.
	i := 12
	var labels []string
	for i < len(q) && q[i] != 0 {
		l := int(q[i])
		if l&0xc0 != 0 || i+1+l > len(q) {
			return nil
		}
		labels = append(labels, string(q[i+1:i+1+l]))
		i += 1 + l
	}
	if i+5 > len(q) {
		return nil
	}
	qend := i + 5
	qtype := int(q[i+1])<<8 | int(q[i+2])
	name := strings.ToLower(strings.Join(labels, "."))
	resp := make([]byte, 0, 512)
	resp = append(resp, q[0], q[1])             // id
	resp = append(resp, 0x84|(q[2]&0x79), 0x80) // QR, AA, opcode and RD copied; RA
	resp = append(resp, 0, 1, 0, 0, 0, 0, 0, 0) // QD=1, AN, NS, AR = 0
	resp = append(resp, q[12:qend]...)
	switch {
	case name != d.name:
		resp[3] |= 3 // NXDOMAIN
	case qtype == 1: // A
		d.mu.Lock()
		k := d.queries
		d.queries++
		d.mu.Unlock()
		resp[7] = byte(len(d.addrs))
		for j := range d.addrs {
			ip := d.addrs[(k+j)%len(d.addrs)]
			resp = append(resp, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4)
			resp = append(resp, ip...)
		}
	}
	return resp
}
