package config

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// fuzzFormats are the formats FuzzConfigParse tries, by the fuzzer's pick.
var fuzzFormats = []string{"", FormatJSON, FormatYAML, "yml", "toml"}

// FuzzConfigParse: no document makes Parse panic. Errors are fine; a
// document that parses is valid, and its JSON form parses to the same
// configuration.
func FuzzConfigParse(f *testing.F) {
	files, _ := filepath.Glob("../../examples/config/*.*")
	more, _ := filepath.Glob("../../examples/config/*/*.*")
	for _, name := range append(files, more...) {
		if b, err := os.ReadFile(name); err == nil {
			f.Add(b, uint8(0))
		}
	}
	// The examples name TLS and auth files by relative paths: run where
	// they exist, so that the examples parse.
	dir := f.TempDir()
	for _, name := range []string{"tls/server.crt", "tls/server.key", "tls/client.crt", "tls/client.key", "tls/ca.crt",
		"auth/htpasswd", "auth/token.crt"} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			f.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("placeholder"), 0o600); err != nil {
			f.Fatal(err)
		}
	}
	f.Chdir(dir)
	for _, s := range []string{
		``, `{}`, `null`, `[]`, `"x"`, `{"http":{"port":5000}}`, `{"http":{"port":"70000"}}`,
		`{"HTTP":{"Port":"1"},"http":{"port":"2"}}`, `{"storage":{"gcDelay":"1h","gcInterval":-1}}`,
		`{"storage":{"gcDelay":12345678901234567890}}`, `{"log":{"level":"DEBUG"}}`, `{"cluster":{"members":[]}}`,
		`{"http":{"accessControl":{"repositories":{"**":{"policies":[{"users":["a"],"actions":["read"]}]}}}}}`,
		`{"extensions":{"sync":{"registries":[{"urls":["http://x"],"content":[{"prefix":"["}]}]}}}`,
		"http:\n  port: 5000\n  address: '::1'\n", "a: &a [*a]\n", "{", "\xff", "http: {port: [1, 2]}\n",
		"storage:\n  retention:\n    policies:\n      - keepTags:\n          - patterns: ['(']\n",
	} {
		f.Add([]byte(s), uint8(0))
		f.Add([]byte(s), uint8(2))
	}
	f.Fuzz(func(t *testing.T, data []byte, pick uint8) {
		format := fuzzFormats[int(pick)%len(fuzzFormats)]
		cfg, _, err := Parse(data, format)
		if err != nil {
			if cfg != nil {
				t.Fatalf("Parse returned a config with error %v", err)
			}
			return
		}
		if cfg == nil {
			t.Fatal("Parse returned neither a config nor an error")
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that Validate refuses: %v", err)
		}
		js, err := json.Marshal(cfg)
		if err != nil {
			t.Fatalf("marshal a parsed config: %v", err)
		}
		again, _, err := Parse(js, FormatJSON)
		if err != nil {
			t.Fatalf("a parsed config does not parse again: %v\n%s", err, js)
		}
		// Compared in JSON form: an empty list and an absent one are alike.
		if js2, err := json.Marshal(again); err != nil || !bytes.Equal(js, js2) {
			t.Fatalf("a parsed config changes when parsed again (%v):\n%s\n%s", err, js, js2)
		}
	})
}
