package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"sigs.k8s.io/yaml"
)

// Formats accepted by Parse.
const (
	FormatJSON = "json"
	FormatYAML = "yaml"
)

// Load reads the configuration file at path and returns it parsed,
// defaulted and validated, with the warnings for zot keys that were
// ignored. The format comes from the extension (.json, .yaml, .yml), else
// from the content: a file starting with "{" is JSON, anything else YAML.
func Load(path string) (*Config, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read config: %w", err)
	}
	format := ""
	switch strings.ToLower(filepath.Ext(path)) {
	case ".json":
		format = FormatJSON
	case ".yaml", ".yml":
		format = FormatYAML
	}
	return Parse(data, format)
}

// Parse reads a configuration document in format "json" or "yaml" ("" to
// guess from the content). It checks every key against the schema,
// decodes on top of Default(), applies SetDefaults and runs Validate. The
// warnings name the zot keys that were ignored. The error joins every
// problem found (unknown keys, wrong types, failed validation), each naming
// its field path; the Config is nil when there is an error.
func Parse(data []byte, format string) (*Config, []string, error) {
	switch strings.ToLower(format) {
	case "":
		if b := bytes.TrimSpace(data); len(b) == 0 || b[0] != '{' {
			format = FormatYAML
		} else {
			format = FormatJSON
		}
		return Parse(data, format)
	case FormatJSON:
	case FormatYAML, "yml":
		j, err := yaml.YAMLToJSON(data)
		if err != nil {
			return nil, nil, fmt.Errorf("config: invalid YAML: %w", err)
		}
		data = j
	default:
		return nil, nil, fmt.Errorf("config: unknown format %q, want %q or %q", format, FormatJSON, FormatYAML)
	}

	raw, err := decodeRaw(data)
	if err != nil {
		return nil, nil, err
	}
	w := &walker{}
	w.object(reflect.TypeFor[Config](), raw, "", "")

	cfg := Default()
	if err := decodeStrict(raw, cfg); err != nil {
		w.errs = append(w.errs, err)
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		w.errs = append(w.errs, err)
	}
	if len(w.errs) > 0 {
		return nil, w.warnings, errors.Join(w.errs...)
	}
	return cfg, w.warnings, nil
}

// decodeRaw decodes a JSON document into a generic object, keeping numbers
// exact. An empty document or null is an empty object.
func decodeRaw(data []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		if errors.Is(err, io.EOF) {
			return map[string]any{}, nil
		}
		return nil, jsonError(data, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("config: unexpected data after the top-level object")
	}
	switch x := v.(type) {
	case nil:
		return map[string]any{}, nil
	case map[string]any:
		return x, nil
	}
	return nil, fmt.Errorf("config: the top level must be an object, got %s", jsonKind(v))
}

// decodeStrict decodes the checked generic document into cfg.
func decodeStrict(raw map[string]any, cfg *Config) error {
	b, err := json.Marshal(raw)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return fmt.Errorf("%s: cannot hold JSON %s", te.Field, te.Value)
		}
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// jsonError adds the line and column to a JSON syntax error.
func jsonError(data []byte, err error) error {
	var se *json.SyntaxError
	if !errors.As(err, &se) {
		return fmt.Errorf("config: invalid JSON: %w", err)
	}
	before := data[:min(int(se.Offset), len(data))]
	line := bytes.Count(before, []byte("\n")) + 1
	col := len(before) - bytes.LastIndexByte(before, '\n')
	return fmt.Errorf("config: invalid JSON at line %d, column %d: %w", line, col, err)
}
