package agentapi

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
)

var unmarshaler = reflect.TypeFor[json.Unmarshaler]()

// maxKeyProblems is how many unknown or misspelt keys one answer names.
const maxKeyProblems = 20

// checkKeys walks a decoded JSON value against the Go type it is meant for
// and reports every key that is not exactly a field's JSON name (Go's
// decoder matches keys case-insensitively, so COMMAND would pass as
// command) and every []byte field that is not base64, by its path, all at
// once rather than the first.
func checkKeys(v any, t reflect.Type, where string, problems *[]string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	// A type that decodes itself, or anything, takes what it is given.
	if t.Kind() == reflect.Interface || t.Implements(unmarshaler) || reflect.PointerTo(t).Implements(unmarshaler) ||
		t == reflect.TypeFor[json.RawMessage]() {
		return
	}
	switch val := v.(type) {
	case map[string]any:
		switch t.Kind() {
		case reflect.Map:
			for _, k := range slices.Sorted(maps.Keys(val)) {
				checkKeys(val[k], t.Elem(), where+"."+k, problems)
			}
		case reflect.Struct:
			fields := jsonFields(t)
			for _, k := range slices.Sorted(maps.Keys(val)) {
				if f, ok := fields[k]; ok {
					checkKeys(val[k], f, join(where, k), problems)
					continue
				}
				msg := fmt.Sprintf("unknown field %q", truncateValue(k))
				if where != "" {
					msg = where + ": " + msg
				}
				for name := range fields {
					if strings.EqualFold(name, k) {
						msg += fmt.Sprintf(" (keys are case-sensitive: %q)", name)
					}
				}
				*problems = append(*problems, msg)
			}
		}
	case []any:
		if t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
			for i, e := range val {
				checkKeys(e, t.Elem(), fmt.Sprintf("%s[%d]", where, i), problems)
			}
		}
	case string:
		if t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Uint8 {
			if _, err := base64.StdEncoding.DecodeString(val); err != nil {
				*problems = append(*problems, fmt.Sprintf("%s: not base64 (%v)", where, err))
			}
		}
	}
}

func join(where, key string) string {
	if where == "" {
		return key
	}
	return where + "." + key
}

// jsonFields are a struct's fields by their JSON names, the fields of
// embedded structs included, as encoding/json sees them.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if f.Anonymous && name == "" && ft.Kind() == reflect.Struct {
			for k, v := range jsonFields(ft) {
				if _, shadowed := out[k]; !shadowed {
					out[k] = v
				}
			}
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}
