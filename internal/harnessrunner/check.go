package harnessrunner

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
)

// unsupportedFields lists, by JSON path, every Unsupported field of v that
// holds something other than zero.
func unsupportedFields(v any) []string {
	var paths []string
	walk(reflect.ValueOf(v), "", &paths)
	return paths
}

var unsupportedType = reflect.TypeFor[Unsupported]()

func walk(v reflect.Value, path string, paths *[]string) {
	switch {
	case v.Type() == unsupportedType:
		if !zeroJSON(v.Bytes()) {
			*paths = append(*paths, path)
		}
		return
	case v.Kind() == reflect.Pointer:
		if !v.IsNil() {
			walk(v.Elem(), path, paths)
		}
	case v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Struct:
		for i := range v.Len() {
			walk(v.Index(i), fmt.Sprintf("%s[%d]", path, i), paths)
		}
	case v.Kind() == reflect.Struct:
		for i := range v.NumField() {
			f := v.Type().Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if path != "" {
				name = path + "." + name
			}
			walk(v.Field(i), name, paths)
		}
	}
}

// zeroJSON reports whether raw is absent or JSON's zero: null, false, 0, "",
// [], or an object whose members are all zero. The delegate sends many fields
// without omitempty, so zeros are what it says when it means nothing.
func zeroJSON(raw []byte) bool {
	if len(bytes.TrimSpace(raw)) == 0 {
		return true
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return false
	}
	return zeroValue(v)
}

func zeroValue(v any) bool {
	switch v := v.(type) {
	case nil:
		return true
	case bool:
		return !v
	case float64:
		return v == 0
	case string:
		return v == ""
	case []any:
		return len(v) == 0
	case map[string]any:
		for _, member := range v {
			if !zeroValue(member) {
				return false
			}
		}
		return true
	}
	return false
}
