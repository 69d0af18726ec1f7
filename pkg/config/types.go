// Package config reads, defaults and validates Berth's configuration file.
//
// The keys follow zot's configuration schema (project-zot/zot
// pkg/api/config), so an operator moving from zot keeps their file. A file
// is JSON or YAML; YAML is converted to JSON before it is read. Keys match
// case-insensitively, as they do in zot. A key zot knows but Berth does not
// implement yet is dropped with a warning; any other unknown key is an error.
//
// Load and Parse return a Config that has been defaulted (SetDefaults) and
// validated (Validate). Every error names the field path it is about, for
// example "cluster.hashKey: must be exactly 16 bytes, got 9".
package config

import "net"

// Config is the whole configuration file.
type Config struct {
	// DistSpecVersion is the OCI distribution-spec version served, 1.0.x or
	// 1.1.x. Default "1.1.1".
	DistSpecVersion string `json:"distSpecVersion,omitempty"`
	// HTTP is the listener.
	HTTP HTTPConfig `json:"http"`
	// Storage is where images live and how they are collected.
	Storage StorageConfig `json:"storage"`
	// Log is the server log.
	Log LogConfig `json:"log"`
	// Cluster turns on scale-out: repositories are sharded over the members.
	// Nil means a single node.
	Cluster *ClusterConfig `json:"cluster,omitempty"`
	// Extensions holds the optional features (sync, metrics). Nil means none.
	Extensions *ExtensionsConfig `json:"extensions,omitempty"`
}

// HTTPConfig is the HTTP listener.
type HTTPConfig struct {
	// Address is the host or IP to listen on. Empty means all interfaces.
	Address string `json:"address"`
	// Port is the TCP port, as a string like zot's (a JSON number is
	// accepted too). "0" picks a free port. Default "5000".
	Port string `json:"port"`
	// Realm is the realm of the Basic authentication challenge (default
	// "berth").
	Realm string `json:"realm,omitempty"`
	// TLS turns on HTTPS when Cert and Key are set. Nil means plain HTTP.
	TLS *TLSConfig `json:"tls,omitempty"`
	// Auth authenticates callers. Nil means every caller is anonymous.
	Auth *AuthConfig `json:"auth,omitempty"`
	// AccessControl authorises callers per repository. Nil with Auth set
	// means any authenticated caller may do everything and anonymous
	// callers nothing; nil without Auth means no checks at all.
	AccessControl *AccessControlConfig `json:"accessControl,omitempty"`

	// The limits below are Berth's own keys (zot has none of them).
	// Default() carries their defaults; 0 turns a limit off, except for
	// ReadHeaderTimeout and MaxHeaderBytes, where 0 is the default.

	// MaxUploadsPerClient bounds the blob uploads with a body (PATCH, PUT,
	// monolithic POST) in progress at once from one client IP; one more is
	// answered 429 TOOMANYREQUESTS with Retry-After. Default 64.
	MaxUploadsPerClient int `json:"maxUploadsPerClient"`
	// ReadIdleTimeout is how long a request body may send nothing before
	// the request is aborted with its connection; an upload session keeps
	// what arrived. It bounds silence, not the whole transfer. Default 60s.
	ReadIdleTimeout Duration `json:"readIdleTimeout"`
	// WriteIdleTimeout is how long a response may wait for the client to
	// read before the connection is closed. Default 60s.
	WriteIdleTimeout Duration `json:"writeIdleTimeout"`
	// ReadHeaderTimeout bounds the reading of a request's headers.
	// Default 30s.
	ReadHeaderTimeout Duration `json:"readHeaderTimeout"`
	// MaxHeaderBytes bounds the size of a request's headers; larger ones
	// are answered 431. Default 1 MiB.
	MaxHeaderBytes int `json:"maxHeaderBytes"`
}

// TLSConfig names PEM files. For http.tls, Cert and Key are the server
// certificate and CACert, when set, makes the server require client
// certificates signed by it (mTLS). For cluster.tls it is the client side:
// CACert verifies peers, Cert and Key are presented to them.
type TLSConfig struct {
	// Cert is the certificate chain file.
	Cert string `json:"cert,omitempty"`
	// Key is the private key file.
	Key string `json:"key,omitempty"`
	// CACert is a CA bundle file.
	CACert string `json:"cacert,omitempty"`
}

// LogConfig is the server log.
type LogConfig struct {
	// Level is debug, info, warn or error. Default "info".
	Level string `json:"level"`
	// Output is a file to append to. Empty means standard output.
	Output string `json:"output"`
}

// ClusterConfig is the scale-out configuration; it must be identical on
// every member.
type ClusterConfig struct {
	// Members is the host:port of every member, this one included. The
	// order matters to nobody but must be the same everywhere.
	Members []string `json:"members"`
	// HashKey is the SipHash key used to place repositories on members:
	// exactly 16 bytes, used as is.
	HashKey string `json:"hashKey"`
	// TLS is the client TLS used to talk to peers. Nil means plain HTTP to
	// peers.
	TLS *TLSConfig `json:"tls,omitempty"`
}

// ListenAddr returns the address to listen on, http.address and http.port
// joined as host:port (":5000" when the address is empty).
func (c *Config) ListenAddr() string {
	return net.JoinHostPort(c.HTTP.Address, c.HTTP.Port)
}

// AuthEnabled reports whether requests go through authentication or access
// control (http.auth or http.accessControl is set).
func (h HTTPConfig) AuthEnabled() bool {
	return h.Auth != nil || h.AccessControl != nil
}

// TLSEnabled reports whether the server serves HTTPS.
func (h HTTPConfig) TLSEnabled() bool {
	return h.TLS != nil && h.TLS.Cert != "" && h.TLS.Key != ""
}
