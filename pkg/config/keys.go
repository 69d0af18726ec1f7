package config

import (
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// durationType is a leaf of the schema walk: it takes a string or a number.
var durationType = reflect.TypeFor[Duration]()

// walker checks a generic JSON document against the Config structs before
// it is decoded. It renames keys matched case-insensitively to their
// canonical spelling, drops zot keys Berth does not implement (a warning),
// drops unknown keys and values of the wrong type (an error), and coerces
// the weak types zot accepts (a number where a string is expected, "true"
// for a boolean, "10" for an integer). Lists of objects are walked element
// by element, maps of objects value by value; other maps are opaque.
type walker struct {
	errs     []error
	warnings []string
}

// fail records "path: message".
func (w *walker) fail(path, format string, args ...any) {
	w.errs = append(w.errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
}

// schemaField is one JSON key of a struct.
type schemaField struct {
	name string
	typ  reflect.Type
}

// object walks m against struct type t. path is the concrete path of m
// ("" at the top, "extensions.sync.registries[0]"); pattern is the same with
// "[]" for list indices, as in zotKnown.
func (w *walker) object(t reflect.Type, m map[string]any, path, pattern string) {
	fields := jsonFields(t)
	for _, k := range slices.Sorted(maps.Keys(m)) {
		v := m[k]
		f, ok := lookupField(fields, k)
		if !ok {
			delete(m, k)
			if isZotKnown(join(pattern, k)) {
				w.warnings = append(w.warnings, join(path, k)+": known zot option not supported yet; ignored")
				continue
			}
			names := zotKnownChildren(pattern)
			for _, f := range fields {
				names = append(names, f.name)
			}
			w.fail(join(path, k), "unknown key%s", suggest(k, names))
			continue
		}
		if f.name != k {
			delete(m, k)
			if _, dup := m[f.name]; dup {
				w.fail(join(path, k), "duplicate of key %q (keys are case-insensitive)", join(path, f.name))
				continue
			}
		}
		nv, ok := w.value(f.typ, v, join(path, f.name), join(pattern, f.name))
		if ok {
			m[f.name] = nv
		} else {
			delete(m, f.name)
		}
	}
}

// value walks one value of type t and returns it, coerced; ok is false when
// it is unusable (the error is recorded) and must be dropped.
func (w *walker) value(t reflect.Type, v any, path, pattern string) (any, bool) {
	if v == nil {
		return nil, true
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == durationType {
		b, _ := json.Marshal(v)
		if _, err := parseDuration(b); err != nil {
			w.fail(path, "%v, got %s", err, b)
			return nil, false
		}
		return v, true
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			w.fail(path, "must be an object, got %s", jsonKind(v))
			return nil, false
		}
		w.object(t, m, path, pattern)
		return m, true
	case reflect.Slice:
		list, ok := v.([]any)
		if !ok {
			w.fail(path, "must be a list, got %s", jsonKind(v))
			return nil, false
		}
		all := true
		for i, el := range list {
			nv, ok := w.value(t.Elem(), el, fmt.Sprintf("%s[%d]", path, i), pattern+"[]")
			list[i] = nv
			all = all && ok
		}
		return list, all
	case reflect.Map:
		// A map of objects (http.accessControl.repositories, groups) has
		// free-form keys; its values are walked like any object, under
		// `path["key"]`.
		et := t.Elem()
		for et.Kind() == reflect.Pointer {
			et = et.Elem()
		}
		if et.Kind() != reflect.Struct {
			return v, true
		}
		m, ok := v.(map[string]any)
		if !ok {
			w.fail(path, "must be an object, got %s", jsonKind(v))
			return nil, false
		}
		all := true
		for _, k := range slices.Sorted(maps.Keys(m)) {
			nv, ok := w.value(t.Elem(), m[k], fmt.Sprintf("%s[%q]", path, k), pattern+"{}")
			m[k] = nv
			all = all && ok
		}
		return m, all
	case reflect.String:
		switch x := v.(type) {
		case string:
			return x, true
		case json.Number:
			return x.String(), true
		}
		w.fail(path, "must be a string, got %s", jsonKind(v))
	case reflect.Bool:
		switch x := v.(type) {
		case bool:
			return x, true
		case string:
			if b, err := strconv.ParseBool(x); err == nil {
				return b, true
			}
		}
		w.fail(path, "must be true or false, got %s", jsonKind(v))
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		s := ""
		switch x := v.(type) {
		case json.Number:
			s = x.String()
		case string:
			s = x
		}
		if _, err := strconv.ParseInt(s, 10, t.Bits()); err == nil {
			return json.Number(s), true
		}
		w.fail(path, "must be an integer, got %s", jsonKind(v))
	default:
		return v, true
	}
	return nil, false
}

// jsonFields lists the JSON keys of struct type t.
func jsonFields(t reflect.Type) []schemaField {
	var out []schemaField
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out = append(out, schemaField{name: name, typ: f.Type})
	}
	return out
}

// lookupField finds key among fields, exactly first, then ignoring case.
func lookupField(fields []schemaField, key string) (schemaField, bool) {
	for _, f := range fields {
		if f.name == key {
			return f, true
		}
	}
	for _, f := range fields {
		if strings.EqualFold(f.name, key) {
			return f, true
		}
	}
	return schemaField{}, false
}

// join appends key to a dotted path.
func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// jsonKind names the JSON type of a decoded value, for messages.
func jsonKind(v any) string {
	switch x := v.(type) {
	case string:
		return fmt.Sprintf("string %q", x)
	case json.Number:
		return "number " + x.String()
	case bool:
		return "boolean " + strconv.FormatBool(x)
	case []any:
		return "list"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}

// suggest returns ` (did you mean "x"?)` for the candidate closest to key
// when it is within a few edits, else "".
func suggest(key string, candidates []string) string {
	best, bestDist := "", -1
	for _, c := range candidates {
		d := editDistance(strings.ToLower(key), strings.ToLower(c))
		if bestDist < 0 || d < bestDist {
			best, bestDist = c, d
		}
	}
	if bestDist < 0 || bestDist > 3 || bestDist > len(key)/3+1 {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
