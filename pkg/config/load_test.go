package config

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// wantErrContaining fails unless err is non-nil and its text contains every
// one of subs.
func wantErrContaining(t *testing.T, err error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("error = nil, want one containing %q", subs)
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error = %q\nwant it to contain %q", err, s)
		}
	}
}

const sampleJSON = `{
  "distSpecVersion": "1.1.0",
  "http": {"address": "127.0.0.1", "port": "8080"},
  "storage": {"rootDirectory": "/srv/berth", "gc": true, "gcDelay": "2h",
    "storageDriver": {"name": "s3", "bucket": "b", "region": "eu-west-1", "chunksize": 6000000}},
  "log": {"level": "debug", "output": "/tmp/berth.log"},
  "cluster": {"members": ["a:5000", "b:5000"], "hashKey": "0123456789abcdef"},
  "extensions": {"metrics": {"prometheus": {"path": "/m"}}}
}`

const sampleYAML = `
distSpecVersion: 1.1.0
http:
  address: 127.0.0.1
  port: 8080
storage:
  rootDirectory: /srv/berth
  gc: true
  gcDelay: 2h
  storageDriver: {name: s3, bucket: b, region: eu-west-1, chunksize: 6000000}
log:
  level: debug
  output: /tmp/berth.log
cluster:
  members: [a:5000, b:5000]
  hashKey: 0123456789abcdef
extensions:
  metrics:
    prometheus:
      path: /m
`

func TestParseJSONAndYAML(t *testing.T) {
	t.Parallel()
	fromJSON, warns, err := Parse([]byte(sampleJSON), "json")
	if err != nil || len(warns) != 0 {
		t.Fatalf("Parse(json) = %v, %q", err, warns)
	}
	if fromJSON.ListenAddr() != "127.0.0.1:8080" || fromJSON.Storage.StorageDriver.ChunkSize != 6000000 ||
		fromJSON.Cluster.Members[1] != "b:5000" || fromJSON.Extensions.Metrics.Prometheus.Path != "/m" {
		t.Errorf("Parse(json) = %+v", fromJSON)
	}
	for _, format := range []string{"yaml", "yml", "YAML", ""} {
		fromYAML, warns, err := Parse([]byte(sampleYAML), format)
		if err != nil || len(warns) != 0 {
			t.Fatalf("Parse(yaml, %q) = %v, %q", format, err, warns)
		}
		if !reflect.DeepEqual(fromJSON, fromYAML) {
			t.Errorf("format %q: YAML and JSON differ:\n%+v\n%+v", format, fromYAML, fromJSON)
		}
	}
	if _, _, err := Parse([]byte(sampleJSON), "toml"); err == nil {
		t.Error(`Parse(format "toml") succeeded`)
	}
}

func TestLoad(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct{ name, content string }{
		{"c.json", sampleJSON},
		{"c.yaml", sampleYAML},
		{"c.yml", sampleYAML},
		{"c.conf", sampleJSON}, // sniffed: starts with {
		{"c.cfg", sampleYAML},  // sniffed: YAML
	}
	for _, tt := range tests {
		p := filepath.Join(dir, tt.name)
		if err := os.WriteFile(p, []byte(tt.content), 0o600); err != nil {
			t.Fatal(err)
		}
		c, _, err := Load(p)
		if err != nil {
			t.Errorf("Load(%s): %v", tt.name, err)
			continue
		}
		if c.HTTP.Port != "8080" {
			t.Errorf("Load(%s): port %q", tt.name, c.HTTP.Port)
		}
	}
	if _, _, err := Load(filepath.Join(dir, "missing.json")); err == nil {
		t.Error("Load(missing) succeeded")
	}
	// A .json file holding YAML is read as JSON, and fails.
	p := filepath.Join(dir, "wrong.json")
	if err := os.WriteFile(p, []byte(sampleYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Load(p); err == nil {
		t.Error("Load(YAML in .json) succeeded")
	}
}

func TestParsePort(t *testing.T) {
	t.Parallel()
	tests := []struct {
		doc, want, wantErr string
	}{
		{`{"http":{"port":"8080"}}`, "8080", ""},
		{`{"http":{"port":8080}}`, "8080", ""},
		{`{"http":{"port":0}}`, "0", ""},
		{`{"http":{"port":80.5}}`, "", "http.port: must be a number"},
		{`{"http":{"port":true}}`, "", "http.port: must be a string, got boolean"},
		{`{"http":{"port":"http"}}`, "", "http.port: must be a number in 0..65535"},
		{`{"http":{"port":65536}}`, "", "http.port: must be a number in 0..65535"},
	}
	for _, tt := range tests {
		c, _, err := Parse([]byte(tt.doc), "json")
		if tt.wantErr != "" {
			wantErrContaining(t, err, tt.wantErr)
			continue
		}
		if err != nil {
			t.Errorf("Parse(%s): %v", tt.doc, err)
			continue
		}
		if c.HTTP.Port != tt.want {
			t.Errorf("Parse(%s): port = %q, want %q", tt.doc, c.HTTP.Port, tt.want)
		}
	}
}

func TestParseCaseInsensitiveKeys(t *testing.T) {
	t.Parallel()
	c, warns, err := Parse([]byte(`{
		"DistSpecVersion": "1.0.1",
		"HTTP": {"Port": "6000", "TLS": null},
		"storage": {"rootdirectory": "/a", "GCDELAY": "3h", "StorageDriver": {"NAME": "filesystem"},
			"cachedriver": {"name": "dynamodb", "region": "r", "repometatablename": "T"}},
		"extensions": {"Sync": {"Registries": [{"URLs": ["https://x"], "ondemand": true, "Content": [{"Prefix": "**"}]}]}}
	}`), "json")
	if err != nil || len(warns) != 0 {
		t.Fatalf("Parse = %v, %q", err, warns)
	}
	r := c.Extensions.Sync.Registries[0]
	if c.DistSpecVersion != "1.0.1" || c.HTTP.Port != "6000" || c.Storage.RootDirectory != "/a" ||
		c.Storage.GCDelay.String() != "3h0m0s" || c.Storage.DriverName() != "filesystem" ||
		c.Storage.CacheDriver.RepoMetaTablename != "T" || !r.OnDemand || r.URLs[0] != "https://x" ||
		r.Content[0].Prefix != "**" {
		t.Errorf("case-insensitive keys not applied: %+v", c)
	}
}

func TestParseDuplicateKeyDifferentCase(t *testing.T) {
	t.Parallel()
	_, _, err := Parse([]byte(`{"storage":{"rootDirectory":"/a","rootdirectory":"/b"}}`), "json")
	wantErrContaining(t, err, `storage.rootdirectory: duplicate of key "storage.rootDirectory"`)
}

func TestParseUnknownKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, doc string
		want      []string
	}{
		{"top", `{"storag": {}}`, []string{`storag: unknown key (did you mean "storage"?)`}},
		{"nested typo", `{"storage": {"rootDirectry": "/x"}}`,
			[]string{`storage.rootDirectry: unknown key (did you mean "rootDirectory"?)`}},
		{"no suggestion", `{"http": {"frobnicate": 1}}`, []string{"http.frobnicate: unknown key"}},
		{"in list", `{"extensions": {"sync": {"registries": [{"urls": ["http://x"]}, {"url": "http://y"}]}}}`,
			[]string{`extensions.sync.registries[1].url: unknown key (did you mean "urls"?)`}},
		{"deep in list", `{"storage": {"retention": {"policies": [{"keepTags": [{"pattern": ["x"]}]}]}}}`,
			[]string{`storage.retention.policies[0].keepTags[0].pattern: unknown key (did you mean "patterns"?)`}},
		{"yaml", "cluster:\n  member: [a:1]\n", []string{`cluster.member: unknown key (did you mean "members"?)`}},
		{"several", `{"a": 1, "http": {"b": 2}, "log": {"levle": "x"}}`,
			[]string{"a: unknown key", "http.b: unknown key", `log.levle: unknown key (did you mean "level"?)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, _, err := Parse([]byte(tt.doc), "")
			if c != nil {
				t.Error("config returned with an error")
			}
			wantErrContaining(t, err, tt.want...)
		})
	}
}

func TestParseZotKnownKeysWarn(t *testing.T) {
	t.Parallel()
	tests := []struct {
		doc  string
		want string
	}{
		{`{"http": {"auth": {"bearer": {"realm": "https://a/t", "service": "s", "cert": "load_test.go"}, "ldap": {"address": "x"}}}}`,
			"http.auth.ldap: known zot option not supported yet; ignored"},
		{`{"http": {"accessControl": {"metrics": {"users": ["m"]}}}}`, "http.accessControl.metrics: known zot option"},
		{`{"http": {"externalUrl": "https://r"}}`, "http.externalUrl: known zot option"},
		{`{"storage": {"subPaths": {"/a": {"rootDirectory": "/b"}}}}`, "storage.subPaths: known zot option"},
		{`{"storage": {"commit": true}}`, "storage.commit: known zot option"},
		{`{"storage": {"remoteCache": true}}`, "storage.remoteCache: known zot option"},
		{`{"storage": {"storageDriver": {"name": "s3", "bucket": "b", "region": "r", "encrypt": true}}}`,
			"storage.storageDriver.encrypt: known zot option"},
		{`{"storage": {"cacheDriver": {"name": "dynamodb", "region": "r", "cacheTablename": "t"}}}`,
			"storage.cacheDriver.cacheTablename: known zot option"},
		{`{"log": {"audit": "/var/log/audit.log"}}`, "log.audit: known zot option"},
		{`{"scheduler": {"numWorkers": 3}}`, "scheduler: known zot option"},
		{`{"extensions": {"search": {"enable": true}, "ui": {"enable": true}}}`, "extensions.search: known zot option"},
		{`{"extensions": {"scrub": {}, "lint": {}, "trust": {}, "mgmt": {}, "apikey": {}}}`, "extensions.trust: known zot option"},
		{`{"extensions": {"sync": {"registries": [{"urls": ["http://x"], "syncTimeout": "1h"}]}}}`,
			"extensions.sync.registries[0].syncTimeout: known zot option"},
	}
	for _, tt := range tests {
		c, warns, err := Parse([]byte(tt.doc), "json")
		if err != nil || c == nil {
			t.Errorf("Parse(%s): %v", tt.doc, err)
			continue
		}
		if !slices.ContainsFunc(warns, func(w string) bool { return strings.HasPrefix(w, tt.want) }) {
			t.Errorf("Parse(%s) warnings = %q, want one starting %q", tt.doc, warns, tt.want)
		}
	}
}

func TestParseTypeErrors(t *testing.T) {
	t.Parallel()
	tests := []struct{ doc, want string }{
		{`{"storage": "x"}`, `storage: must be an object, got string "x"`},
		{`{"storage": {"gc": "maybe"}}`, `storage.gc: must be true or false`},
		{`{"storage": {"storageDriver": {"name": "s3", "chunksize": "big"}}}`, `storage.storageDriver.chunksize: must be an integer`},
		{`{"cluster": {"members": "a:1"}}`, `cluster.members: must be a list, got string`},
		{`{"cluster": {"members": [["a:1"]]}}`, `cluster.members[0]: must be a string, got list`},
		{`{"extensions": {"sync": {"registries": [{"maxRetries": 1.5}]}}}`, `extensions.sync.registries[0].maxRetries: must be an integer`},
	}
	for _, tt := range tests {
		_, _, err := Parse([]byte(tt.doc), "json")
		wantErrContaining(t, err, tt.want)
	}
}

// TestParseWeakTypes checks the coercions zot's loader also performs.
func TestParseWeakTypes(t *testing.T) {
	t.Parallel()
	c, _, err := Parse([]byte(`storage:
  gc: "false"
  storageDriver: {name: s3, bucket: b, region: r, chunksize: "6000000", secure: "true"}
cluster:
  members: [a:1]
  hashKey: 1234567890123456
`), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	if *c.Storage.GC || c.Storage.StorageDriver.ChunkSize != 6000000 || !*c.Storage.StorageDriver.Secure ||
		c.Cluster.HashKey != "1234567890123456" {
		t.Errorf("weak types not coerced: %+v %+v", c.Storage, c.Cluster)
	}
}

func TestParseSyntaxErrors(t *testing.T) {
	t.Parallel()
	tests := []struct{ doc, format, want string }{
		{"{\n  \"http\": {\n    \"port\": 5000,\n  }\n}", "json", "invalid JSON at line 4"},
		{`{"http": {}} {}`, "json", "unexpected data after the top-level object"},
		{`[1, 2]`, "json", "the top level must be an object, got list"},
		{"http:\n  port: [\n", "yaml", "invalid YAML"},
		{"- a\n- b\n", "yaml", "the top level must be an object"},
	}
	for _, tt := range tests {
		_, _, err := Parse([]byte(tt.doc), tt.format)
		wantErrContaining(t, err, tt.want)
	}
	for _, empty := range []string{"", "  \n", "null", "{}"} {
		if _, _, err := Parse([]byte(empty), ""); err != nil {
			t.Errorf("Parse(%q) = %v, want the defaults", empty, err)
		}
	}
}

// TestParseCollectsAllErrors checks that key, type and validation errors
// all come back together.
func TestParseCollectsAllErrors(t *testing.T) {
	t.Parallel()
	_, _, err := Parse([]byte(`{
		"distSpecVersion": "2.0",
		"http": {"port": "99999", "adress": "x"},
		"storage": {"dedupe": true, "gc": 3},
		"log": {"level": "loud"},
		"cluster": {"members": [], "hashKey": "short"}
	}`), "json")
	wantErrContaining(t, err,
		`http.adress: unknown key (did you mean "address"?)`,
		"storage.gc: must be true or false",
		"distSpecVersion: must be 1.0.x or 1.1.x",
		"http.port: must be a number",
		"storage.dedupe: not supported",
		"log.level: must be one of",
		"cluster.members: must list at least one member",
		"cluster.hashKey: must be exactly 16 bytes, got 5",
	)
}
