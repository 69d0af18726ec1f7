package config

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// exampleFiles returns the absolute paths of the configuration files
// (.json, .yaml, .yml) under examples/config, subdirectories included.
func exampleFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir("../../examples/config", func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch filepath.Ext(p) {
		case ".json", ".yaml", ".yml":
			abs, err := filepath.Abs(p)
			if err != nil {
				return err
			}
			files = append(files, abs)
		}
		return nil
	})
	if err != nil || len(files) == 0 {
		t.Fatalf("no example files found: %v", err)
	}
	return files
}

// TestExamples loads every example file: none may fail or warn. The TLS
// paths in the examples are relative, so the test runs in a directory
// where they exist.
func TestExamples(t *testing.T) {
	files := exampleFiles(t)
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "tls"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "auth"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"tls/server.crt", "tls/server.key", "tls/client.crt", "tls/client.key", "tls/ca.crt",
		"auth/htpasswd", "auth/token.crt"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("placeholder"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(dir)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c, warns, err := Load(f)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if len(warns) != 0 {
				t.Errorf("Load warnings: %q", warns)
			}
			if c == nil {
				t.Fatal("Load returned a nil config")
			}
		})
	}
}

// TestExamplesCoverEveryKey checks that every key of the schema is set in
// at least one example file. The values of maps of objects
// (http.accessControl.repositories) count under the key "{}".
func TestExamplesCoverEveryKey(t *testing.T) {
	t.Parallel()
	want := map[string]bool{}
	schemaPaths(reflect.TypeFor[Config](), "", want)
	maps := map[string]bool{}
	for p := range want {
		if strings.HasSuffix(p, "{}") {
			maps[strings.TrimSuffix(p, "{}")] = true
		}
	}
	seen := map[string]bool{}
	for _, f := range exampleFiles(t) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		j, err := yaml.YAMLToJSON(data) // JSON is YAML too
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		raw, err := decodeRaw(j)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		documentPaths(raw, "", maps, seen)
	}
	var missing []string
	for p := range want {
		if !seen[p] {
			missing = append(missing, p)
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("keys no example sets:\n  %s", strings.Join(missing, "\n  "))
	}
}

// schemaPaths records the path of every JSON key of struct type t, with
// "[]" for list elements and "{}" for the values of a map of objects.
func schemaPaths(t reflect.Type, prefix string, out map[string]bool) {
	for _, f := range jsonFields(t) {
		p := join(prefix, f.name)
		out[p] = true
		ft := f.typ
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft == durationType:
		case ft.Kind() == reflect.Struct:
			schemaPaths(ft, p, out)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			schemaPaths(ft.Elem(), p+"[]", out)
		case ft.Kind() == reflect.Map && ft.Elem().Kind() == reflect.Struct:
			out[p+"{}"] = true
			schemaPaths(ft.Elem(), p+"{}", out)
		}
	}
}

// documentPaths records the path of every key of a decoded document; the
// keys of the objects at the paths in maps become "{}".
func documentPaths(v any, prefix string, maps, out map[string]bool) {
	switch x := v.(type) {
	case map[string]any:
		for k, child := range x {
			p := join(prefix, k)
			if maps[prefix] {
				p = prefix + "{}"
			}
			out[p] = true
			documentPaths(child, p, maps, out)
		}
	case []any:
		for _, el := range x {
			documentPaths(el, prefix+"[]", maps, out)
		}
	}
}
