package config

import (
	"strings"
	"time"
)

// Defaults of the scalar options.
const (
	DefaultDistSpecVersion = "1.1.1"             // distSpecVersion
	DefaultPort            = "5000"              // http.port
	DefaultRootDirectory   = "./data"            // storage.rootDirectory
	DefaultLogLevel        = "info"              // log.level
	DefaultGCDelay         = Duration(time.Hour) // storage.gcDelay
	DefaultGCInterval      = Duration(time.Hour) // storage.gcInterval
	// DefaultS3ChunkSize is storage.storageDriver.chunksize (10 MiB).
	DefaultS3ChunkSize = 2 * MinS3ChunkSize

	DefaultMaxUploadsPerClient = 64                         // http.maxUploadsPerClient
	DefaultReadIdleTimeout     = Duration(time.Minute)      // http.readIdleTimeout
	DefaultWriteIdleTimeout    = Duration(time.Minute)      // http.writeIdleTimeout
	DefaultReadHeaderTimeout   = Duration(30 * time.Second) // http.readHeaderTimeout
	DefaultMaxHeaderBytes      = 1 << 20                    // http.maxHeaderBytes
)

// Bounds of the HTTP limits.
const (
	MinIdleTimeout    = Duration(time.Second) // http.readIdleTimeout, http.writeIdleTimeout when not 0
	MinMaxHeaderBytes = 4 << 10               // http.maxHeaderBytes
	MaxMaxHeaderBytes = 64 << 20              // http.maxHeaderBytes
)

// Default DynamoDB table names (storage.cacheDriver.*Tablename).
const (
	DefaultRepoMetaTable      = "BerthRepoMetaTable"
	DefaultImageMetaTable     = "BerthImageMetaTable"
	DefaultRepoBlobsInfoTable = "BerthRepoBlobsInfoTable"
	DefaultUserDataTable      = "BerthUserDataTable"
	DefaultAPIKeyTable        = "BerthAPIKeyTable"
	DefaultVersionTable       = "BerthVersionTable"
)

// Default returns the complete default configuration: a single node
// listening on all interfaces, port 5000, plain HTTP, with the default
// HTTP limits, storing under ./data
// with boltdb metadata, GC on (1h delay, every 1h), no retention, no
// cluster, no extensions, logging at info to standard output.
func Default() *Config {
	c := &Config{
		DistSpecVersion: DefaultDistSpecVersion,
		HTTP: HTTPConfig{Address: "", Port: DefaultPort,
			MaxUploadsPerClient: DefaultMaxUploadsPerClient,
			ReadIdleTimeout:     DefaultReadIdleTimeout,
			WriteIdleTimeout:    DefaultWriteIdleTimeout,
			ReadHeaderTimeout:   DefaultReadHeaderTimeout,
			MaxHeaderBytes:      DefaultMaxHeaderBytes,
		},
		Storage: StorageConfig{
			RootDirectory: DefaultRootDirectory,
			GCDelay:       DefaultGCDelay,
			GCInterval:    DefaultGCInterval,
		},
		Log: LogConfig{Level: DefaultLogLevel, Output: ""},
	}
	c.SetDefaults()
	return c
}

// SetDefaults fills the options left unset: empty strings that have a
// default, nil *bool switches, a zero http.readHeaderTimeout and
// http.maxHeaderBytes, and the defaults inside optional blocks that
// are present (sync, metrics, retention, s3, dynamodb); retention.delay 0
// becomes storage.gcDelay, as in zot. It lower-cases
// log.level and the actions of http.accessControl. Durations are left alone, since zero is a meaningful value;
// Default() carries their defaults, and Parse decodes on top of it.
func (c *Config) SetDefaults() {
	if c.DistSpecVersion == "" {
		c.DistSpecVersion = DefaultDistSpecVersion
	}
	if c.HTTP.Port == "" {
		c.HTTP.Port = DefaultPort
	}
	// 0 is no limit for the other HTTP limits, but not for these two.
	if c.HTTP.ReadHeaderTimeout == 0 {
		c.HTTP.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if c.HTTP.MaxHeaderBytes == 0 {
		c.HTTP.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	c.Log.Level = strings.ToLower(c.Log.Level)
	if c.Log.Level == "" {
		c.Log.Level = DefaultLogLevel
	}
	c.Storage.setDefaults()
	if a := c.HTTP.AccessControl; a != nil {
		a.setDefaults()
	}
	if e := c.Extensions; e != nil {
		e.setDefaults()
	}
}

// setDefaults fills the storage section.
func (s *StorageConfig) setDefaults() {
	if s.RootDirectory == "" {
		s.RootDirectory = DefaultRootDirectory
	}
	setBool(&s.Dedupe, false)
	setBool(&s.GC, true)
	if r := s.Retention; r != nil {
		if r.Delay == 0 {
			r.Delay = s.GCDelay
		}
		for i := range r.Policies {
			setBool(&r.Policies[i].DeleteUntagged, true)
		}
	}
	if d := s.StorageDriver; d != nil && d.Name == DriverS3 {
		setBool(&d.Secure, true)
		if d.ChunkSize == 0 {
			d.ChunkSize = DefaultS3ChunkSize
		}
	}
	if c := s.CacheDriver; c != nil && c.Name == CacheDynamoDB {
		setString(&c.RepoMetaTablename, DefaultRepoMetaTable)
		setString(&c.ImageMetaTablename, DefaultImageMetaTable)
		setString(&c.RepoBlobsInfoTablename, DefaultRepoBlobsInfoTable)
		setString(&c.UserDataTablename, DefaultUserDataTable)
		setString(&c.APIKeyTablename, DefaultAPIKeyTable)
		setString(&c.VersionTablename, DefaultVersionTable)
	}
}

// setDefaults fills the extensions that are present.
func (e *ExtensionsConfig) setDefaults() {
	if s := e.Sync; s != nil {
		setBool(&s.Enable, true)
		for i := range s.Registries {
			setBool(&s.Registries[i].TLSVerify, true)
		}
	}
	if m := e.Metrics; m != nil {
		setBool(&m.Enable, true)
		if m.Prometheus == nil {
			m.Prometheus = &PrometheusConfig{}
		}
		setString(&m.Prometheus.Path, DefaultMetricsPath)
	}
}

// setBool points *p at v when it is nil.
func setBool(p **bool, v bool) {
	if *p == nil {
		*p = &v
	}
}

// setString sets *p to v when it is empty.
func setString(p *string, v string) {
	if *p == "" {
		*p = v
	}
}
