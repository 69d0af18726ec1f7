package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// Registries serving HTTPS (the cluster TLS and auth tests and the
// single-node auth tests) and their certificates.

// testPKI is a CA with a server certificate valid for every member
// address (127.0.0.1-4 and localhost) and a client certificate members
// present to each other, plus a second CA the members do not trust with a
// server certificate for the same names. Single registries serving HTTPS
// use it too (the server certificate holds 127.0.0.1).
type testPKI struct {
	CA         string // CA certificate (PEM)
	CertDir    string // holds only ca.crt (skopeo --cert-dir)
	ServerCert string
	ServerKey  string
	ClientCert string // cluster.tls.cert
	ClientKey  string
	ClientCN   string
	OtherCA    string // the untrusted CA
	OtherCert  string // a server certificate it signed, for the same names
	OtherKey   string
	Pool       *x509.CertPool // the trusted CA
	BothPool   *x509.CertPool // both CAs

	caCert *x509.Certificate
}

type cmKeyPair struct {
	cert *x509.Certificate
	der  []byte
	key  *ecdsa.PrivateKey
}

func (k cmKeyPair) pems(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	kd, err := x509.MarshalPKCS8PrivateKey(k.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: k.der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})
}

var cmSerial atomic.Int64

// cmIssue makes a certificate signed by parent (self-signed when parent is nil).
func cmIssue(t *testing.T, parent *cmKeyPair, tmpl *x509.Certificate) cmKeyPair {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(100 + cmSerial.Add(1))
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	signer, signKey := tmpl, key
	if parent != nil {
		signer, signKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cmKeyPair{cert: c, der: der, key: key}
}

func cmNewCA(t *testing.T, name string) cmKeyPair {
	return cmIssue(t, nil, &x509.Certificate{
		Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	})
}

// cmMemberCertTemplate is a server certificate for every member address.
func cmMemberCertTemplate() *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: "berth member"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("127.0.0.2"), net.ParseIP("127.0.0.3"), net.ParseIP("127.0.0.4")},
		DNSNames:    []string{"localhost"},
	}
}

// newTestPKI generates the CAs and certificates as PEM files in a
// temporary directory.
func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	ca := cmNewCA(t, "berth e2e cluster CA")
	other := cmNewCA(t, "some other CA")
	server := cmIssue(t, &ca, cmMemberCertTemplate())
	otherServer := cmIssue(t, &other, cmMemberCertTemplate())
	p := &testPKI{ClientCN: "berth-member-client"}
	client := cmIssue(t, &ca, &x509.Certificate{
		Subject:     pkix.Name{CommonName: p.ClientCN},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	p.caCert = ca.cert
	p.Pool = x509.NewCertPool()
	p.Pool.AddCert(ca.cert)
	p.BothPool = x509.NewCertPool()
	p.BothPool.AddCert(ca.cert)
	p.BothPool.AddCert(other.cert)
	p.CertDir = filepath.Join(dir, "certs.d")
	must(t, os.Mkdir(p.CertDir, 0o700))
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		must(t, os.WriteFile(path, data, 0o600))
		return path
	}
	caPEM, _ := ca.pems(t)
	otherPEM, _ := other.pems(t)
	p.CA = write("ca.crt", caPEM)
	write("certs.d/ca.crt", caPEM)
	p.OtherCA = write("other-ca.crt", otherPEM)
	c, k := server.pems(t)
	p.ServerCert, p.ServerKey = write("server.crt", c), write("server.key", k)
	c, k = client.pems(t)
	p.ClientCert, p.ClientKey = write("client.crt", c), write("client.key", k)
	c, k = otherServer.pems(t)
	p.OtherCert, p.OtherKey = write("other-server.crt", c), write("other-server.key", k)
	return p
}

// tlsClient is an HTTPS client trusting pool that does not follow redirects.
func tlsClient(pool *x509.CertPool) *http.Client {
	return &http.Client{
		Timeout:       2 * time.Minute,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
			MaxIdleConnsPerHost: 16,
		},
	}
}

// httpsConfig is the http section of a registry serving HTTPS on ip:port
// with cert and key, with htpasswd authentication when htpasswd is set and
// with accessControl as http.accessControl when it is not nil.
func httpsConfig(ip string, port int, cert, key, htpasswd string, accessControl map[string]any) map[string]any {
	cfg := map[string]any{"address": ip, "port": fmt.Sprint(port), "tls": map[string]any{"cert": cert, "key": key}}
	if htpasswd != "" {
		cfg["auth"] = map[string]any{"htpasswd": map[string]any{"path": htpasswd}}
	}
	if accessControl != nil {
		cfg["accessControl"] = accessControl
	}
	return cfg
}

// newHTTPSRegistry is newRegistry for a registry whose http section (in
// opts.Extra) serves HTTPS: its URL is https:// and start waits for
// /readyz over TLS verified with pool.
func newHTTPSRegistry(t *testing.T, opts regOpts, pool *x509.CertPool) *reg {
	t.Helper()
	r := newRegistry(t, opts)
	r.URL = "https://" + r.Host
	r.readyOverTLS(pool)
	return r
}

// readyOverTLS has start (and Restart) wait for /readyz over TLS verified
// with pool.
func (r *reg) readyOverTLS(pool *x509.CertPool) {
	r.ready = tlsClient(pool)
	r.ready.Timeout = 2 * time.Second
}
