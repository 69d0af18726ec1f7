package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fullValid returns a valid config that uses every block, with TLS files
// created under a temporary directory.
func fullValid(t *testing.T) *Config {
	t.Helper()
	dir := t.TempDir()
	file := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cert, key, ca := file("c.pem"), file("k.pem"), file("ca.pem")
	week, three := Duration(168*time.Hour), 3
	delay, regex := Duration(time.Second), "^v"
	c := Default()
	c.HTTP.TLS = &TLSConfig{Cert: cert, Key: key, CACert: ca}
	c.Storage.Retention = &RetentionConfig{Policies: []RetentionPolicy{{
		Repositories: []string{"a/**"},
		KeepTags:     []KeepTagsPolicy{{Patterns: []string{"^v"}, PulledWithin: &week, PushedWithin: &week}},
	}}}
	c.Storage.StorageDriver = &StorageDriverConfig{Name: "s3", Bucket: "b", Region: "r",
		RegionEndpoint: "http://127.0.0.1:9000", AccessKey: "a", SecretKey: "s"}
	c.Storage.CacheDriver = &CacheDriverConfig{Name: "dynamodb", Region: "r", Endpoint: "http://127.0.0.1:8000"}
	c.Cluster = &ClusterConfig{Members: []string{"127.0.0.1:5000", "[::1]:5000", "node3:5000"},
		HashKey: "0123456789abcdef", TLS: &TLSConfig{CACert: ca}}
	c.Extensions = &ExtensionsConfig{
		Sync: &SyncConfig{Registries: []SyncRegistry{{
			URLs:       []string{"https://r.example"},
			Content:    []SyncContent{{Prefix: "a/*", Tags: &SyncTags{Regex: &regex, ExcludeRegex: &regex}}},
			MaxRetries: &three, RetryDelay: &delay,
		}}},
		Metrics: &MetricsConfig{},
	}
	c.SetDefaults()
	return c
}

func TestValidateValid(t *testing.T) {
	t.Parallel()
	if err := fullValid(t).Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
	for _, v := range []string{"1.0.0", "1.0.1", "1.1.0", "1.1.1", "1.1.0-dev"} {
		c := Default()
		c.DistSpecVersion = v
		if err := c.Validate(); err != nil {
			t.Errorf("distSpecVersion %q: %v", v, err)
		}
	}
}

func TestValidateRules(t *testing.T) {
	t.Parallel()
	neg, bad := Duration(-time.Second), "(("
	minus, three := -1, 3
	tests := []struct {
		name   string
		mutate func(c *Config)
		want   string
	}{
		{"distSpecVersion", func(c *Config) { c.DistSpecVersion = "1.2.0" }, `distSpecVersion: must be 1.0.x or 1.1.x, got "1.2.0"`},
		{"address with port", func(c *Config) { c.HTTP.Address = "0.0.0.0:5000" }, "http.address: must be a host without a port"},
		{"port not numeric", func(c *Config) { c.HTTP.Port = "web" }, `http.port: must be a number in 0..65535, got "web"`},
		{"port too big", func(c *Config) { c.HTTP.Port = "65536" }, "http.port: must be a number in 0..65535"},
		{"port negative", func(c *Config) { c.HTTP.Port = "-1" }, "http.port: must be a number"},
		{"tls cert without key", func(c *Config) { c.HTTP.TLS.Key = "" }, "http.tls: cert and key must both be set or both be empty"},
		{"tls cert missing", func(c *Config) { c.HTTP.TLS.Cert = "/nonexistent/c.pem" }, `http.tls.cert: file "/nonexistent/c.pem" does not exist`},
		{"tls key missing", func(c *Config) { c.HTTP.TLS.Key = "/nonexistent/k.pem" }, "http.tls.key: file"},
		{"tls cacert is a dir", func(c *Config) { c.HTTP.TLS.CACert = os.TempDir() }, "http.tls.cacert: " + `"` + os.TempDir() + `" is a directory`},
		{"maxUploadsPerClient", func(c *Config) { c.HTTP.MaxUploadsPerClient = -1 }, "http.maxUploadsPerClient: must be 0 (no limit) or more, got -1"},
		{"readIdleTimeout", func(c *Config) { c.HTTP.ReadIdleTimeout = Duration(time.Millisecond) }, "http.readIdleTimeout: must be 0 (no limit) or at least 1s, got 1ms"},
		{"writeIdleTimeout", func(c *Config) { c.HTTP.WriteIdleTimeout = neg }, "http.writeIdleTimeout: must be 0 (no limit) or at least 1s, got -1s"},
		{"readHeaderTimeout", func(c *Config) { c.HTTP.ReadHeaderTimeout = neg }, "http.readHeaderTimeout: must be positive, got -1s"},
		{"maxHeaderBytes small", func(c *Config) { c.HTTP.MaxHeaderBytes = 100 }, "http.maxHeaderBytes: must be 4096..67108864, got 100"},
		{"maxHeaderBytes large", func(c *Config) { c.HTTP.MaxHeaderBytes = 1 << 30 }, "http.maxHeaderBytes: must be 4096..67108864"},
		{"log.level", func(c *Config) { c.Log.Level = "trace" }, `log.level: must be one of debug, info, warn, error, got "trace"`},
		{"rootDirectory", func(c *Config) { c.Storage.RootDirectory = "" }, "storage.rootDirectory: must not be empty"},
		{"dedupe", func(c *Config) { on := true; c.Storage.Dedupe = &on }, "storage.dedupe: not supported: Berth keeps blobs per repository"},
		{"gcDelay", func(c *Config) { c.Storage.GCDelay = neg }, "storage.gcDelay: must not be negative, got -1s"},
		{"gcInterval", func(c *Config) { c.Storage.GCInterval = neg }, "storage.gcInterval: must not be negative"},
		{"retention.delay", func(c *Config) { c.Storage.Retention.Delay = neg }, "storage.retention.delay: must not be negative"},
		{"retention glob", func(c *Config) { c.Storage.Retention.Policies[0].Repositories = []string{"a/**", "b/["} },
			`storage.retention.policies[0].repositories[1]: invalid glob "b/["`},
		{"retention empty glob", func(c *Config) { c.Storage.Retention.Policies[0].Repositories = []string{""} },
			"storage.retention.policies[0].repositories[0]: must not be empty"},
		{"keepTags pattern", func(c *Config) { c.Storage.Retention.Policies[0].KeepTags[0].Patterns = []string{"ok", bad} },
			"storage.retention.policies[0].keepTags[0].patterns[1]: invalid regular expression"},
		{"pulledWithin", func(c *Config) { c.Storage.Retention.Policies[0].KeepTags[0].PulledWithin = &neg },
			"storage.retention.policies[0].keepTags[0].pulledWithin: must not be negative"},
		{"pushedWithin", func(c *Config) { c.Storage.Retention.Policies[0].KeepTags[0].PushedWithin = &neg },
			"storage.retention.policies[0].keepTags[0].pushedWithin: must not be negative"},
		{"mostRecentlyPushedCount", func(c *Config) { c.Storage.Retention.Policies[0].KeepTags[0].MostRecentlyPushedCount = -1 },
			"storage.retention.policies[0].keepTags[0].mostRecentlyPushedCount: must not be negative"},
		{"mostRecentlyPulledCount", func(c *Config) { c.Storage.Retention.Policies[0].KeepTags[0].MostRecentlyPulledCount = -2 },
			"storage.retention.policies[0].keepTags[0].mostRecentlyPulledCount: must not be negative"},
		{"storageDriver.name", func(c *Config) { c.Storage.StorageDriver.Name = "gcs" }, `storage.storageDriver.name: must be "filesystem" or "s3", got "gcs"`},
		{"s3 bucket", func(c *Config) { c.Storage.StorageDriver.Bucket = "" }, "storage.storageDriver.bucket: required by the s3 driver"},
		{"s3 region", func(c *Config) { c.Storage.StorageDriver.Region = "" }, "storage.storageDriver.region: required by the s3 driver"},
		{"s3 endpoint", func(c *Config) { c.Storage.StorageDriver.RegionEndpoint = "127.0.0.1:9000" }, "storage.storageDriver.regionendpoint: must be an http:// or https:// URL"},
		{"s3 keys", func(c *Config) { c.Storage.StorageDriver.SecretKey = "" }, "storage.storageDriver: accesskey and secretkey must both be set"},
		{"s3 chunksize", func(c *Config) { c.Storage.StorageDriver.ChunkSize = 1024 }, "storage.storageDriver.chunksize: must be at least 5242880 bytes"},
		{"filesystem with s3 keys", func(c *Config) { c.Storage.StorageDriver = &StorageDriverConfig{Name: "filesystem", Bucket: "b"} }, "storage.storageDriver.bucket: only used by the s3 driver"},
		{"cacheDriver.name", func(c *Config) { c.Storage.CacheDriver.Name = "redis" }, `storage.cacheDriver.name: must be "boltdb" or "dynamodb", got "redis"`},
		{"dynamodb region", func(c *Config) { c.Storage.CacheDriver.Region = "" }, "storage.cacheDriver.region: required by the dynamodb driver"},
		{"dynamodb endpoint", func(c *Config) { c.Storage.CacheDriver.Endpoint = "ftp://x" }, "storage.cacheDriver.endpoint: must be an http:// or https:// URL"},
		{"cluster no members", func(c *Config) { c.Cluster.Members = nil }, "cluster.members: must list at least one member"},
		{"member without port", func(c *Config) { c.Cluster.Members[1] = "node2" }, `cluster.members[1]: must be host:port, got "node2"`},
		{"member port not numeric", func(c *Config) { c.Cluster.Members[2] = "node3:http" }, `cluster.members[2]: port of "node3:http" must be a number in 1..65535`},
		{"member port 0", func(c *Config) { c.Cluster.Members[2] = "node3:0" }, "cluster.members[2]: port of"},
		{"member empty host", func(c *Config) { c.Cluster.Members[0] = ":5000" }, `cluster.members[0]: host is empty in ":5000"`},
		{"member duplicate", func(c *Config) { c.Cluster.Members[2] = "127.0.0.1:5000" }, `cluster.members[2]: duplicate of cluster.members[0] "127.0.0.1:5000"`},
		{"hashKey", func(c *Config) { c.Cluster.HashKey = "123456789" }, "cluster.hashKey: must be exactly 16 bytes, got 9"},
		{"cluster.tls", func(c *Config) { c.Cluster.TLS.Cert = c.HTTP.TLS.Cert }, "cluster.tls: cert and key must both be set"},
		{"sync urls", func(c *Config) { c.Extensions.Sync.Registries[0].URLs = nil }, "extensions.sync.registries[0].urls: must list at least one URL"},
		{"sync url scheme", func(c *Config) { c.Extensions.Sync.Registries[0].URLs = []string{"https://ok", "docker.io"} },
			`extensions.sync.registries[0].urls[1]: must be an http:// or https:// URL with a host, got "docker.io"`},
		{"sync url parse", func(c *Config) { c.Extensions.Sync.Registries[0].URLs = []string{"http://a b/%zz"} }, "extensions.sync.registries[0].urls[0]: must be an http:// or https:// URL"},
		{"pollInterval", func(c *Config) { c.Extensions.Sync.Registries[0].PollInterval = neg }, "extensions.sync.registries[0].pollInterval: must not be negative"},
		{"prefix empty", func(c *Config) { c.Extensions.Sync.Registries[0].Content[0].Prefix = "" }, "extensions.sync.registries[0].content[0].prefix: must not be empty"},
		{"prefix glob", func(c *Config) { c.Extensions.Sync.Registries[0].Content[0].Prefix = "a/[" }, `extensions.sync.registries[0].content[0].prefix: invalid glob "a/["`},
		{"tags.regex", func(c *Config) {
			r := &c.Extensions.Sync.Registries[0]
			r.Content = append(r.Content, SyncContent{Prefix: "b", Tags: &SyncTags{Regex: &bad}})
		}, "extensions.sync.registries[0].content[1].tags.regex: invalid regular expression"},
		{"tags.excludeRegex", func(c *Config) { c.Extensions.Sync.Registries[0].Content[0].Tags.ExcludeRegex = &bad },
			"extensions.sync.registries[0].content[0].tags.excludeRegex: invalid regular expression"},
		{"stripPrefix", func(c *Config) {
			c.Extensions.Sync.Registries[0].Content[0] = SyncContent{Prefix: "a", StripPrefix: true, Destination: "/"}
		}, "extensions.sync.registries[0].content[0].stripPrefix: needs a glob"},
		{"maxRetries negative", func(c *Config) { c.Extensions.Sync.Registries[0].MaxRetries = &minus }, "extensions.sync.registries[0].maxRetries: must not be negative"},
		{"maxRetries without retryDelay", func(c *Config) {
			c.Extensions.Sync.Registries[0].MaxRetries, c.Extensions.Sync.Registries[0].RetryDelay = &three, nil
		}, "extensions.sync.registries[0].retryDelay: required when maxRetries is set"},
		{"retryDelay negative", func(c *Config) { c.Extensions.Sync.Registries[0].RetryDelay = &neg }, "extensions.sync.registries[0].retryDelay: must not be negative"},
		{"metrics path", func(c *Config) { c.Extensions.Metrics.Prometheus.Path = "metrics" }, `extensions.metrics.prometheus.path: must start with /, got "metrics"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := fullValid(t)
			tt.mutate(c)
			err := c.Validate()
			wantErrContaining(t, err, tt.want)
			if n := len(err.(interface{ Unwrap() []error }).Unwrap()); n != 1 {
				t.Errorf("got %d errors, want 1:\n%v", n, err)
			}
		})
	}
}

func TestValidateCollectsAll(t *testing.T) {
	t.Parallel()
	c := fullValid(t)
	c.HTTP.Port = "x"
	c.Log.Level = "loud"
	c.Cluster.HashKey = ""
	c.Extensions.Sync.Registries[0].URLs = nil
	err := c.Validate()
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) || len(joined.Unwrap()) != 4 {
		t.Fatalf("Validate() = %v, want 4 joined errors", err)
	}
	wantErrContaining(t, err, "http.port:", "log.level:", "cluster.hashKey: must be exactly 16 bytes, got 0",
		"extensions.sync.registries[0].urls:")
}
