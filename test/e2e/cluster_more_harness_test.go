package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Helpers for the cluster resize, TLS and auth tests: members serving
// HTTPS (optionally with authentication; certificates in
// pki_harness_test.go), config rewrites and reloads, and a fake peer whose
// certificate can be switched.

// ---- a cluster serving HTTPS ----

// secureOpts configures startSecureCluster.
type secureOpts struct {
	LB bool
	// Users, when set, turns on htpasswd authentication on every member
	// (one file, shared); AccessControl is http.accessControl.
	Users         map[string]string
	AccessControl map[string]any
}

// secureCluster is a cluster whose members serve HTTPS with certificates
// of PKI and talk to each other over TLS (cluster.tls: the CA and a client
// certificate). Each member has its own copy of the server certificate, so
// a test can replace one member's certificate.
type secureCluster struct {
	*cluster
	PKI      *testPKI
	Client   *http.Client // trusts the cluster CA
	Htpasswd string
	certs    map[string][2]string // member host -> its cert and key files
}

func startSecureCluster(t *testing.T, opts secureOpts) *secureCluster {
	t.Helper()
	start := time.Now()
	pki := newTestPKI(t)
	c := &secureCluster{
		cluster: &cluster{t: t, Store: newStore(t, backendS3Dynamo), Port: clusterPort(t)},
		PKI:     pki,
		Client:  tlsClient(pki.Pool),
		certs:   map[string][2]string{},
	}
	if opts.Users != nil {
		c.Htpasswd = filepath.Join(t.TempDir(), "htpasswd")
		writeHTPasswdFile(t, c.Htpasswd, opts.Users)
	}
	for _, ip := range memberIPs {
		host := fmt.Sprintf("%s:%d", ip, c.Port)
		cd := t.TempDir()
		cert, key := filepath.Join(cd, "server.crt"), filepath.Join(cd, "server.key")
		cmCopyFile(t, pki.ServerCert, cert)
		cmCopyFile(t, pki.ServerKey, key)
		c.certs[host] = [2]string{cert, key}
		extra := map[string]any{
			"http": httpsConfig(ip, c.Port, cert, key, c.Htpasswd, opts.AccessControl),
			"cluster": map[string]any{"members": memberHosts(c.Port), "hashKey": clusterHashKey,
				"tls": map[string]any{"cacert": pki.CA, "cert": pki.ClientCert, "key": pki.ClientKey}},
		}
		c.Members = append(c.Members, newHTTPSRegistry(t, regOpts{Store: c.Store, Addr: ip, Port: c.Port, Extra: extra}, pki.Pool))
	}
	for _, m := range c.Members {
		m.start()
	}
	c.finishStart(t, opts.LB, pki, start)
	return c
}

func cmReadFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	must(t, err)
	return b
}

func cmCopyFile(t *testing.T, from, to string) {
	t.Helper()
	must(t, os.WriteFile(to, cmReadFile(t, from), 0o600))
}

// useCert replaces member r's certificate and key files (read at start).
func (c *secureCluster) useCert(r *reg, cert, key string) {
	cmCopyFile(c.t, cert, c.certs[r.Host][0])
	cmCopyFile(c.t, key, c.certs[r.Host][1])
}

// try sends one request over HTTPS to endpoint e with optional Basic
// credentials (user "" sends none). It never fails the test.
func (c *secureCluster) try(e *reg, method, path, user, pass string, hdr map[string]string, body []byte) (*resp, error) {
	return send(c.Client, method, e.URL+path, user, pass, hdr, body)
}

func (c *secureCluster) do(t *testing.T, e *reg, method, path, user, pass string, hdr map[string]string, body []byte) *resp {
	t.Helper()
	res, err := c.try(e, method, path, user, pass, hdr, body)
	if err != nil {
		t.Fatalf("%s %s via %s: %v", method, path, c.name(e), err)
	}
	return res
}

// pushImage pushes a one-layer image by raw HTTPS as user and returns the
// manifest digest.
func (c *secureCluster) pushImage(t *testing.T, e *reg, user, pass, repo, tag string) string {
	t.Helper()
	config := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"created":"%s"}`,
		time.Now().UTC().Format(time.RFC3339Nano)))
	layer := randBytes(t, 2048)
	for _, b := range [][]byte{config, layer} {
		res := c.do(t, e, "POST", "/v2/"+repo+"/blobs/uploads/", user, pass, nil, nil)
		if res.Status != http.StatusAccepted {
			t.Fatalf("POST upload to %s via %s: %s", repo, c.name(e), res)
		}
		res = c.do(t, e, "PUT", withQuery(uploadPath(t, res), "digest="+sha256Digest(b)), user, pass,
			map[string]string{"Content-Type": "application/octet-stream"}, b)
		if res.Status != http.StatusCreated {
			t.Fatalf("PUT blob to %s via %s: %s", repo, c.name(e), res)
		}
	}
	man := imageManifest(config, [][]byte{layer}, nil)
	res := c.do(t, e, "PUT", "/v2/"+repo+"/manifests/"+tag, user, pass, map[string]string{"Content-Type": mtManifest}, man)
	if res.Status != http.StatusCreated {
		t.Fatalf("PUT manifest %s:%s via %s: %s", repo, tag, c.name(e), res)
	}
	return sha256Digest(man)
}

// env is the client environment of the test that started the cluster
// (shared by its subtests, so a login holds for all of them) trusting the
// cluster CA (crane, regctl, oras read SSL_CERT_FILE).
func (c *secureCluster) env(*testing.T) []string {
	return append(slices.Clone(clientEnv(c.t)), "SSL_CERT_FILE="+c.PKI.CA)
}

// must runs a client command that must succeed and returns its stdout.
func (c *secureCluster) must(t *testing.T, args ...string) string {
	t.Helper()
	return runEnv(t, c.env(t), "", args...).Stdout
}

// mustFail runs a client command that must fail and returns its output.
func (c *secureCluster) mustFail(t *testing.T, args ...string) string {
	t.Helper()
	return runFailEnv(t, c.env(t), args...)
}

// ---- membership changes ----

// setMembers rewrites member r's configuration file with a new
// cluster.members list (atomically: a new file renamed over the old one).
// With keepMtime the new file gets the old file's modification time, so
// the member's poll of the file cannot notice the change: only a SIGHUP
// makes it reload.
func setMembers(t *testing.T, r *reg, members []string, keepMtime bool) {
	t.Helper()
	b, err := os.ReadFile(r.cfgPath)
	must(t, err)
	var cfg map[string]any
	must(t, json.Unmarshal(b, &cfg))
	cl, ok := cfg["cluster"].(map[string]any)
	if !ok {
		t.Fatalf("%s has no cluster section", r.cfgPath)
	}
	cl["members"] = members
	out, err := json.MarshalIndent(cfg, "", "  ")
	must(t, err)
	fi, err := os.Stat(r.cfgPath)
	must(t, err)
	tmp := r.cfgPath + ".new"
	must(t, os.WriteFile(tmp, out, 0o644))
	if keepMtime {
		must(t, os.Chtimes(tmp, fi.ModTime(), fi.ModTime()))
	} else {
		now := time.Now()
		if !now.After(fi.ModTime()) {
			now = fi.ModTime().Add(time.Second)
		}
		must(t, os.Chtimes(tmp, now, now))
	}
	must(t, os.Rename(tmp, r.cfgPath))
}

// signal sends sig to the member's process.
func (r *reg) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	r.mu.Lock()
	cmd := r.cmd
	r.mu.Unlock()
	if cmd == nil {
		t.Fatalf("%s is not running", r.Host)
	}
	must(t, cmd.Process.Signal(sig))
}

// terminate stops the member with SIGTERM (graceful shutdown) and waits,
// killing it after timeout.
func (r *reg) terminate(t *testing.T, timeout time.Duration) {
	t.Helper()
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(timeout):
		t.Errorf("%s did not stop within %s of SIGTERM", r.Host, timeout)
		r.Kill9()
	}
	r.mu.Lock()
	r.cmd = nil
	r.mu.Unlock()
}

// waitMembersChanged waits until r logs "cluster members changed" with
// members after offset, and returns the line.
func waitMembersChanged(t *testing.T, r *reg, offset int64, members []string, timeout time.Duration) logLine {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		lines, _, err := readLog(r.LogPath, offset)
		must(t, err)
		for _, l := range lines {
			if l.str("message") == "cluster members changed" && slices.Equal(cmStrings(l["members"]), members) {
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not log \"cluster members changed\" to %v within %s; log tail:\n%s", r.Host, members, timeout, tailFile(r.LogPath, 20))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func cmStrings(v any) []string {
	a, _ := v.([]any)
	var out []string
	for _, x := range a {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

// problemLines returns log lines after marks that show a failed or
// misrouted request: 5xx or 421 answers, failed or rejected forwards,
// errors, panics. Requests that failed on versitygw's known race (a
// PutObject answered 409 ExistingObjectIsDirectory while a concurrent
// DeleteObject removes the parent directory, versitygw#1988: a test
// backend artefact, not something S3 does) are counted in known instead.
func problemLines(t *testing.T, members []*reg, marks map[string]int64) (out []string, known int) {
	t.Helper()
	race := map[string]bool{}
	for _, m := range members {
		for _, l := range m.logSince(t, marks[m.Host]) {
			if strings.Contains(l.str("error"), "ExistingObjectIsDirectory") {
				race[l.str("req_id")] = true
			}
		}
	}
	known = len(race)
	for _, m := range members {
		for _, l := range m.logSince(t, marks[m.Host]) {
			msg := l.str("message")
			st := l.num("status")
			if race[l.str("req_id")] {
				continue
			}
			if (msg == "request" && (st >= 500 || st == http.StatusMisdirectedRequest)) ||
				msg == "failed to forward request" || msg == "rejected forwarded request" ||
				msg == "forwarded request for a repository this member does not own" ||
				msg == "handler panicked" || l.str("level") == "error" {
				b, _ := json.Marshal(l)
				out = append(out, m.Host+": "+string(b))
			}
		}
	}
	return out, known
}

// requireNoPanic fails when a member's stderr shows a Go panic.
func requireNoPanic(t *testing.T, members ...*reg) {
	t.Helper()
	for _, m := range members {
		b, _ := os.ReadFile(filepath.Join(m.Dir, "stderr.log"))
		if strings.Contains(string(b), "panic:") || strings.Contains(string(b), "goroutine ") {
			t.Errorf("%s panicked:\n%s", m.Host, tailString(string(b), 40))
		}
		lb, _ := os.ReadFile(m.LogPath)
		if strings.Contains(string(lb), "handler panicked") {
			t.Errorf("%s logged a handler panic", m.Host)
		}
	}
}

// ---- a fake peer ----

// fakePeer listens on a member's address in the member's place and
// answers /readyz, presenting a certificate the test can switch: it lets a
// test make a peer look healthy and then fail TLS verification. It records
// the client certificates members present and every other request.
type fakePeer struct {
	ln     net.Listener
	srv    *http.Server
	bad    atomic.Bool
	good   tls.Certificate
	other  tls.Certificate
	pool   *x509.CertPool
	mu     sync.Mutex
	conns  map[net.Conn]bool
	client map[string]int // verified client certificate CN (or "none"/"unverified: ...") -> /readyz count
	other_ []string       // non-/readyz requests
}

func startFakePeer(t *testing.T, host string, pki *testPKI) *fakePeer {
	t.Helper()
	good, err := tls.LoadX509KeyPair(pki.ServerCert, pki.ServerKey)
	must(t, err)
	other, err := tls.LoadX509KeyPair(pki.OtherCert, pki.OtherKey)
	must(t, err)
	f := &fakePeer{good: good, other: other, pool: pki.Pool, conns: map[net.Conn]bool{}, client: map[string]int{}}
	ln, err := net.Listen("tcp", host)
	if err != nil {
		t.Fatalf("fake peer on %s: %v", host, err)
	}
	tc := &tls.Config{
		MinVersion: tls.VersionTLS12,
		ClientAuth: tls.RequestClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if f.bad.Load() {
				return &f.other, nil
			}
			return &f.good, nil
		},
	}
	f.ln = tls.NewListener(ln, tc)
	f.srv = &http.Server{
		Handler: http.HandlerFunc(f.serve),
		ConnState: func(c net.Conn, st http.ConnState) {
			f.mu.Lock()
			defer f.mu.Unlock()
			switch st {
			case http.StateNew:
				f.conns[c] = true
			case http.StateClosed, http.StateHijacked:
				delete(f.conns, c)
			}
		},
		ErrorLog: log.New(io.Discard, "", 0), // failed handshakes are the point
	}
	go func() { _ = f.srv.Serve(f.ln) }()
	t.Cleanup(f.stop)
	return f
}

func (f *fakePeer) serve(w http.ResponseWriter, r *http.Request) {
	who := "none"
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		c := r.TLS.PeerCertificates[0]
		inter := x509.NewCertPool()
		for _, ic := range r.TLS.PeerCertificates[1:] {
			inter.AddCert(ic)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: f.pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			who = "unverified: " + c.Subject.CommonName + ": " + err.Error()
		} else {
			who = c.Subject.CommonName
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.URL.Path == "/readyz" {
		f.client[who]++
		w.WriteHeader(http.StatusOK)
		return
	}
	f.other_ = append(f.other_, r.Method+" "+r.URL.RequestURI())
	http.Error(w, `{"errors":[{"code":"UNKNOWN","message":"fake peer"}]}`, http.StatusTeapot)
}

// switchToOther makes every new TLS handshake present the untrusted
// certificate and closes every open connection.
func (f *fakePeer) switchToOther() {
	f.bad.Store(true)
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.Close()
	}
}

func (f *fakePeer) stats() (clients map[string]int, others []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	clients = map[string]int{}
	for k, v := range f.client {
		clients[k] = v
	}
	return clients, slices.Clone(f.other_)
}

func (f *fakePeer) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = f.srv.Shutdown(ctx)
	_ = f.srv.Close()
}
