package config

import (
	"testing"
	"time"
)

func TestDefault(t *testing.T) {
	t.Parallel()
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
	tests := []struct {
		name      string
		got, want any
	}{
		{"distSpecVersion", c.DistSpecVersion, "1.1.1"},
		{"http.address", c.HTTP.Address, ""},
		{"http.port", c.HTTP.Port, "5000"},
		{"http.tls", c.HTTP.TLS == nil, true},
		{"http.maxUploadsPerClient", c.HTTP.MaxUploadsPerClient, 64},
		{"http.readIdleTimeout", c.HTTP.ReadIdleTimeout.Std(), time.Minute},
		{"http.writeIdleTimeout", c.HTTP.WriteIdleTimeout.Std(), time.Minute},
		{"http.readHeaderTimeout", c.HTTP.ReadHeaderTimeout.Std(), 30 * time.Second},
		{"http.maxHeaderBytes", c.HTTP.MaxHeaderBytes, 1 << 20},
		{"ListenAddr", c.ListenAddr(), ":5000"},
		{"storage.rootDirectory", c.Storage.RootDirectory, "./data"},
		{"storage.dedupe", *c.Storage.Dedupe, false},
		{"storage.gc", *c.Storage.GC, true},
		{"storage.gcDelay", c.Storage.GCDelay.Std(), time.Hour},
		{"storage.gcInterval", c.Storage.GCInterval.Std(), time.Hour},
		{"storage.retention", c.Storage.Retention == nil, true},
		{"storage driver", c.Storage.DriverName(), "filesystem"},
		{"cache driver", c.Storage.CacheName(), "boltdb"},
		{"log.level", c.Log.Level, "info"},
		{"log.output", c.Log.Output, ""},
		{"cluster", c.Cluster == nil, true},
		{"extensions", c.Extensions == nil, true},
		{"sync enabled", c.Extensions.SyncEnabled(), false},
		{"metrics enabled", c.Extensions.MetricsEnabled(), false},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

func TestSetDefaultsBlocks(t *testing.T) {
	t.Parallel()
	c := &Config{
		Log: LogConfig{Level: "WARN"},
		Storage: StorageConfig{
			GCDelay:       Duration(2 * time.Hour),
			Retention:     &RetentionConfig{Policies: []RetentionPolicy{{Repositories: []string{"**"}}}},
			StorageDriver: &StorageDriverConfig{Name: "s3"},
			CacheDriver:   &CacheDriverConfig{Name: "dynamodb"},
		},
		Extensions: &ExtensionsConfig{
			Sync:    &SyncConfig{Registries: []SyncRegistry{{URLs: []string{"https://x"}}}},
			Metrics: &MetricsConfig{},
		},
	}
	c.SetDefaults()
	tests := []struct {
		name      string
		got, want any
	}{
		{"distSpecVersion", c.DistSpecVersion, DefaultDistSpecVersion},
		{"http.port", c.HTTP.Port, DefaultPort},
		{"http.readHeaderTimeout", c.HTTP.ReadHeaderTimeout, DefaultReadHeaderTimeout},
		{"http.maxHeaderBytes", c.HTTP.MaxHeaderBytes, DefaultMaxHeaderBytes},
		{"http.maxUploadsPerClient left at 0", c.HTTP.MaxUploadsPerClient, 0},
		{"log.level lower-cased", c.Log.Level, "warn"},
		{"storage.rootDirectory", c.Storage.RootDirectory, DefaultRootDirectory},
		{"storage.gc", *c.Storage.GC, true},
		{"storage.dedupe", *c.Storage.Dedupe, false},
		{"retention.delay = gcDelay", c.Storage.Retention.Delay.Std(), 2 * time.Hour},
		{"retention deleteUntagged", *c.Storage.Retention.Policies[0].DeleteUntagged, true},
		{"s3 secure", *c.Storage.StorageDriver.Secure, true},
		{"s3 chunksize", c.Storage.StorageDriver.ChunkSize, int64(10 << 20)},
		{"dynamodb repoMeta", c.Storage.CacheDriver.RepoMetaTablename, DefaultRepoMetaTable},
		{"dynamodb imageMeta", c.Storage.CacheDriver.ImageMetaTablename, DefaultImageMetaTable},
		{"dynamodb repoBlobsInfo", c.Storage.CacheDriver.RepoBlobsInfoTablename, DefaultRepoBlobsInfoTable},
		{"dynamodb userData", c.Storage.CacheDriver.UserDataTablename, DefaultUserDataTable},
		{"dynamodb apiKey", c.Storage.CacheDriver.APIKeyTablename, DefaultAPIKeyTable},
		{"dynamodb version", c.Storage.CacheDriver.VersionTablename, DefaultVersionTable},
		{"sync enable", *c.Extensions.Sync.Enable, true},
		{"sync tlsVerify", *c.Extensions.Sync.Registries[0].TLSVerify, true},
		{"metrics enable", *c.Extensions.Metrics.Enable, true},
		{"metrics path", c.Extensions.Metrics.Prometheus.Path, "/metrics"},
		{"SyncEnabled", c.Extensions.SyncEnabled(), true},
		{"MetricsEnabled", c.Extensions.MetricsEnabled(), true},
		{"GCEnabled", c.Storage.GCEnabled(), true},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

// TestParseKeepsExplicitValues checks that values a file sets, zero or
// false included, are not overwritten by defaults.
func TestParseKeepsExplicitValues(t *testing.T) {
	t.Parallel()
	c, _, err := Parse([]byte(`{
		"storage": {"gc": false, "gcDelay": 0, "gcInterval": "0s",
			"storageDriver": {"name": "s3", "bucket": "b", "region": "r", "secure": false}},
		"extensions": {"sync": {"enable": false, "registries": [{"urls": ["http://x"], "tlsVerify": false}]},
			"metrics": {"enable": false, "prometheus": {"path": "/m"}}}
	}`), "json")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		got, want any
	}{
		{"gc", *c.Storage.GC, false},
		{"gcDelay", c.Storage.GCDelay, Duration(0)},
		{"gcInterval", c.Storage.GCInterval, Duration(0)},
		{"secure", *c.Storage.StorageDriver.Secure, false},
		{"sync enable", *c.Extensions.Sync.Enable, false},
		{"tlsVerify", *c.Extensions.Sync.Registries[0].TLSVerify, false},
		{"metrics enable", *c.Extensions.Metrics.Enable, false},
		{"metrics path", c.Extensions.Metrics.Prometheus.Path, "/m"},
		{"SyncEnabled", c.Extensions.SyncEnabled(), false},
		{"GCEnabled", c.Storage.GCEnabled(), false},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}
