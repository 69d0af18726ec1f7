package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeConfig writes content to a temp file named name and returns its path.
func writeConfig(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRun(t *testing.T) {
	t.Parallel()
	root := filepath.ToSlash(t.TempDir())
	valid := writeConfig(t, "valid.json", `{"storage":{"rootDirectory":"`+root+`"},"http":{"address":"127.0.0.1","port":"5000"}}`)
	validYAML := writeConfig(t, "valid.yaml", "storage:\n  rootDirectory: "+root+"\nhttp:\n  port: 5001\nlog:\n  level: debug\n")
	unknownKey := writeConfig(t, "unknown.json", `{"storage":{"rootDirectory":"`+root+`"},"storag":{}}`)
	badPort := writeConfig(t, "port.json", `{"storage":{"rootDirectory":"`+root+`"},"http":{"port":"99999"}}`)
	both := writeConfig(t, "both.yaml", "storage:\n  rootDirectory: "+root+"\n  rootDirectry: x\nhttp:\n  port: \"-1\"\n")
	notConfig := writeConfig(t, "garbage.yaml", "{{{{ not yaml")
	missing := filepath.Join(t.TempDir(), "missing.json")

	tests := []struct {
		name       string
		args       []string
		code       int
		stdout     []string // substrings of stdout
		stderr     []string // substrings of stderr
		quietOut   bool     // stdout must be empty
		quietError bool     // stderr must be empty
	}{
		{name: "no args", args: nil, code: 2, stderr: []string{"Usage:"}, quietOut: true},
		{name: "unknown command", args: []string{"frobnicate"}, code: 2, stderr: []string{`unknown command "frobnicate"`, "Usage:"}, quietOut: true},
		{name: "version", args: []string{"version"}, code: 0, stdout: []string{"berth"}, quietError: true},
		{name: "--version", args: []string{"--version"}, code: 0, stdout: []string{"berth"}},
		{name: "-v", args: []string{"-v"}, code: 0, stdout: []string{"berth"}},
		{name: "help", args: []string{"help"}, code: 0, stdout: []string{"Usage:", "serve", "verify"}, quietError: true},
		{name: "-h", args: []string{"-h"}, code: 0, stdout: []string{"Usage:"}},
		{name: "--help", args: []string{"--help"}, code: 0, stdout: []string{"Usage:"}},

		{name: "verify valid JSON", args: []string{"verify", valid}, code: 0, stdout: []string{valid, "valid"}, quietError: true},
		{name: "verify valid YAML", args: []string{"verify", validYAML}, code: 0, stdout: []string{"valid"}, quietError: true},
		{name: "verify unknown key", args: []string{"verify", unknownKey}, code: 1, stderr: []string{"storag", "unknown key", "invalid"}, quietOut: true},
		{name: "verify bad port", args: []string{"verify", badPort}, code: 1, stderr: []string{"http.port", "99999"}, quietOut: true},
		{name: "verify reports every problem", args: []string{"verify", both}, code: 1,
			stderr: []string{"storage.rootDirectry", "http.port"}, quietOut: true},
		{name: "verify not YAML", args: []string{"verify", notConfig}, code: 1, quietOut: true},
		{name: "verify missing file", args: []string{"verify", missing}, code: 1, stderr: []string{"missing.json"}, quietOut: true},
		{name: "verify without file", args: []string{"verify"}, code: 2, stderr: []string{"verify"}, quietOut: true},
		{name: "verify two files", args: []string{"verify", valid, valid}, code: 2, quietOut: true},
		{name: "verify --help", args: []string{"verify", "--help"}, code: 0, stderr: []string{"Usage: registry verify"}},
		// A bad flag is a command-line mistake like a missing argument.
		{name: "verify unknown flag", args: []string{"verify", "--frob", valid}, code: 2, stderr: []string{"frob"}},

		{name: "serve --help", args: []string{"serve", "--help"}, code: 0, stderr: []string{"Usage: registry serve"}},
		{name: "serve -h", args: []string{"serve", "-h"}, code: 0},
		{name: "serve unknown flag", args: []string{"serve", "--frob"}, code: 2, stderr: []string{"frob"}},
		{name: "serve two files", args: []string{"serve", valid, valid}, code: 2, stderr: []string{"at most one"}},
		{name: "serve invalid config", args: []string{"serve", badPort}, code: 1, stderr: []string{"http.port"}},
		{name: "serve missing config", args: []string{"serve", missing}, code: 1, stderr: []string{"missing.json"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var out, errOut bytes.Buffer
			code := run(tt.args, &out, &errOut)
			if code != tt.code {
				t.Errorf("run(%q) = %d, want %d\nstdout: %s\nstderr: %s", tt.args, code, tt.code, out.String(), errOut.String())
			}
			for _, s := range tt.stdout {
				if !strings.Contains(out.String(), s) {
					t.Errorf("stdout %q lacks %q", out.String(), s)
				}
			}
			for _, s := range tt.stderr {
				if !strings.Contains(errOut.String(), s) {
					t.Errorf("stderr %q lacks %q", errOut.String(), s)
				}
			}
			if tt.quietOut && out.Len() != 0 {
				t.Errorf("stdout %q, want nothing", out.String())
			}
			if tt.quietError && errOut.Len() != 0 {
				t.Errorf("stderr %q, want nothing", errOut.String())
			}
		})
	}
}

func TestBuildVersion(t *testing.T) {
	// Not parallel: it sets the package-level version.
	old := version
	t.Cleanup(func() { version = old })
	version = "v1.2.3"
	var out bytes.Buffer
	if code := run([]string{"version"}, &out, &bytes.Buffer{}); code != 0 || strings.TrimSpace(out.String()) != "berth v1.2.3" {
		t.Errorf("version with -X main.version: %d %q, want \"berth v1.2.3\"", code, out.String())
	}
	version = ""
	if v := buildVersion(); v == "" || !strings.HasPrefix(v, "dev") {
		t.Errorf("buildVersion() = %q, want a dev version", v)
	}
}
