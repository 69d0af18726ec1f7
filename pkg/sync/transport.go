package sync

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/berthreg/berth/pkg/config"
)

// responseHeaderTimeout bounds the wait for an upstream's response headers
// (bodies stream as long as they need).
const responseHeaderTimeout = 30 * time.Second

// bodyIdleTimeout bounds how long a read of an upstream's response body
// waits for data: a connection that stops sending without closing (a
// stuck CDN edge) is given up, retried, then the next mirror is tried,
// instead of holding the copy and every client joined to it.
const bodyIdleTimeout = 60 * time.Second

// idleTransport gives up a response whose body sends nothing for idle
// while it is being read (time the reader spends elsewhere, say writing
// to storage, does not count).
type idleTransport struct {
	base http.RoundTripper
	idle time.Duration
}

func (t idleTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancel(req.Context())
	resp, err := t.base.RoundTrip(req.WithContext(ctx))
	if err != nil {
		cancel()
		return nil, err
	}
	b := &idleBody{ReadCloser: resp.Body, idle: t.idle, cancel: cancel}
	b.timer = time.AfterFunc(time.Hour, func() { b.stalled.Store(true); cancel() })
	b.timer.Stop()
	resp.Body = b
	return resp, nil
}

// idleBody is a response body whose reads are cut after idle without data.
type idleBody struct {
	io.ReadCloser
	idle    time.Duration
	timer   *time.Timer
	stalled atomic.Bool
	cancel  context.CancelFunc
}

func (b *idleBody) Read(p []byte) (int, error) {
	b.timer.Reset(b.idle)
	n, err := b.ReadCloser.Read(p)
	b.timer.Stop()
	if err != nil && err != io.EOF && b.stalled.Load() {
		return n, &upstreamError{Kind: kindUnreachable, Err: fmt.Errorf("upstream sent no data for %s", b.idle)}
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.timer.Stop()
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// newTransport is the HTTP transport to one upstream registry: tlsVerify,
// and certDir in the Docker certs.d layout (*.crt: CAs added to the system
// roots; *.cert with the *.key of the same name: a client certificate).
func newTransport(rc config.SyncRegistry, field string) (http.RoundTripper, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if rc.TLSVerify != nil && !*rc.TLSVerify {
		tc.InsecureSkipVerify = true
	}
	if dir := rc.CertDir; dir != "" {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("%s.certDir: %w", field, err)
		}
		for _, e := range entries {
			p := filepath.Join(dir, e.Name())
			switch {
			case strings.HasSuffix(e.Name(), ".crt"):
				if tc.RootCAs == nil {
					if tc.RootCAs, err = x509.SystemCertPool(); err != nil {
						tc.RootCAs = x509.NewCertPool()
					}
				}
				pem, err := os.ReadFile(p)
				if err != nil {
					return nil, fmt.Errorf("%s.certDir: %w", field, err)
				}
				if !tc.RootCAs.AppendCertsFromPEM(pem) {
					return nil, fmt.Errorf("%s.certDir: no certificates in %s", field, p)
				}
			case strings.HasSuffix(e.Name(), ".cert"):
				cert, err := tls.LoadX509KeyPair(p, strings.TrimSuffix(p, ".cert")+".key")
				if err != nil {
					return nil, fmt.Errorf("%s.certDir: %w", field, err)
				}
				tc.Certificates = append(tc.Certificates, cert)
			}
		}
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = tc
	t.ResponseHeaderTimeout = responseHeaderTimeout
	return t, nil
}

// credential is one entry of the credentials file.
type credential struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// credentials maps an upstream host (with or without port) to a login.
type credentials map[string]credential

// loadCredentials reads the credentials file (none when path is empty).
func loadCredentials(path string) (credentials, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("extensions.sync.credentialsFile: %w", err)
	}
	var c credentials
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("extensions.sync.credentialsFile: %s: %w", path, err)
	}
	return c, nil
}

// lookup finds the login for u by host:port, then by host name.
func (c credentials) lookup(u *url.URL) credential {
	if cr, ok := c[u.Host]; ok {
		return cr
	}
	return c[u.Hostname()]
}

// isSelf reports whether u points at one of the addresses this member
// answers on: same port, and the same host, or a host that resolves to
// that address or, for an address listening on all interfaces, to a local
// one.
func isSelf(u *url.URL, self []string) bool {
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	host := u.Hostname()
	var hostIPs []net.IP
	resolved := false
	for _, s := range self {
		sh, sp, err := net.SplitHostPort(s)
		if err != nil || sp != port {
			continue
		}
		if strings.EqualFold(sh, host) {
			return true
		}
		if !resolved {
			hostIPs, resolved = resolve(host), true
		}
		anyHost := sh == "" || sh == "0.0.0.0" || sh == "::"
		var selfIPs []net.IP
		if !anyHost {
			selfIPs = resolve(sh)
		}
		for _, ip := range hostIPs {
			if anyHost && isLocalIP(ip) {
				return true
			}
			for _, sip := range selfIPs {
				if ip.Equal(sip) {
					return true
				}
			}
		}
	}
	return false
}

// resolve returns host's addresses, waiting at most two seconds.
func resolve(host string) []net.IP {
	if ip := net.ParseIP(host); ip != nil {
		return []net.IP{ip}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return nil
	}
	ips := make([]net.IP, 0, len(addrs))
	for _, a := range addrs {
		ips = append(ips, a.IP)
	}
	return ips
}

// isLocalIP reports loopback addresses and those of local interfaces.
func isLocalIP(ip net.IP) bool {
	if ip.IsLoopback() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
			return true
		}
	}
	return false
}
