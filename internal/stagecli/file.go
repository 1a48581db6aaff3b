package stagecli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/slipway-ci/slipway/internal/stage"
)

// LoadStageFile reads a stage file: the body of POST /v1/stages in YAML
// (or JSON), every problem reported with its line. Without an id the stage
// gets a fresh one.
func LoadStageFile(path string) (*stage.Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &UsageError{err}
	}
	spec, err := ParseStageFile(data)
	if err != nil {
		return nil, &UsageError{fmt.Errorf("%s:\n%w", path, err)}
	}
	return spec, nil
}

// ParseStageFile decodes and checks a stage file. Secrets are refused: a
// file is no place for them (--secret NAME=env:VAR reads one from the
// environment). A file gives the whole stage: its last group is final
// whether it says so or not (else the stage would wait out its idle
// timeout for a group that never comes).
func ParseStageFile(data []byte) (*stage.Spec, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, err
	}
	if len(root.Content) == 0 {
		return nil, errors.New("line 1: the file is empty")
	}
	lines := map[string]int{}
	var problems []lineError
	checkNode(root.Content[0], reflect.TypeFor[stage.Spec](), "", lines, &problems)
	if len(problems) == 0 {
		var v any
		if err := root.Content[0].Decode(&v); err != nil {
			return nil, err
		}
		raw, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		var spec stage.Spec
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&spec); err != nil {
			return nil, fmt.Errorf("line 1: %w", err)
		}
		if spec.ID == "" {
			spec.ID = newID()
		}
		if n := len(spec.Groups); n > 0 {
			spec.Groups[n-1].Final = true
		}
		// The pool is the API's to check: it knows the deployment's pools.
		if err := spec.Validate([]string{spec.Pool}); err != nil {
			for _, msg := range strings.Split(err.Error(), "\n") {
				problems = append(problems, lineError{line: lineOf(lines, msg), msg: msg})
			}
		}
		if len(problems) == 0 {
			return &spec, nil
		}
	}
	sort.SliceStable(problems, func(i, j int) bool { return problems[i].line < problems[j].line })
	msgs := make([]string, len(problems))
	for i, p := range problems {
		msgs[i] = fmt.Sprintf("line %d: %s", p.line, p.msg)
	}
	return nil, errors.New(strings.Join(msgs, "\n"))
}

type lineError struct {
	line int
	msg  string
}

// checkNode walks the YAML against the type the API decodes, recording the
// line of every field path ("groups[0].steps[1].image") and refusing keys
// the type does not have.
func checkNode(n *yaml.Node, t reflect.Type, path string, lines map[string]int, problems *[]lineError) {
	lines[path] = n.Line
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		fields := jsonFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, value := n.Content[i], n.Content[i+1]
			child := join(path, key.Value)
			if key.Value == "secrets" {
				*problems = append(*problems, lineError{key.Line, child + ": secrets do not belong in a file: pass --secret NAME=env:VARIABLE"})
				continue
			}
			ft, ok := fields[key.Value]
			if !ok {
				*problems = append(*problems, lineError{key.Line, fmt.Sprintf("%s: unknown field (known here: %s)", child, knownNames(fields))})
				continue
			}
			checkNode(value, ft, child, lines, problems)
		}
	case t.Kind() == reflect.Struct:
		*problems = append(*problems, lineError{n.Line, fmt.Sprintf("%s: want a mapping", orTop(path))})
	case t.Kind() == reflect.Slice && t.Elem().Kind() != reflect.Uint8:
		if n.Kind != yaml.SequenceNode {
			*problems = append(*problems, lineError{n.Line, fmt.Sprintf("%s: want a list", orTop(path))})
			return
		}
		for i, item := range n.Content {
			checkNode(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i), lines, problems)
		}
	case t.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			*problems = append(*problems, lineError{n.Line, fmt.Sprintf("%s: want a mapping", orTop(path))})
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			checkNode(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value), lines, problems)
		}
	default:
		if n.Kind != yaml.ScalarNode {
			*problems = append(*problems, lineError{n.Line, fmt.Sprintf("%s: want a single value", orTop(path))})
			return
		}
		if want := scalarWant(n, t); want != "" {
			*problems = append(*problems, lineError{n.Line, fmt.Sprintf("%s: %s is not %s", orTop(path), n.Value, want)})
		}
	}
}

// scalarWant says what a value should have been when YAML read it as
// another kind than the field's ("script: true" is a boolean, not a
// script), in the file's terms; "" when it fits.
func scalarWant(n *yaml.Node, t reflect.Type) string {
	tag := n.ShortTag()
	if tag == "!!null" {
		return ""
	}
	switch t.Kind() {
	case reflect.String:
		if tag != "!!str" {
			return fmt.Sprintf("a string (YAML reads it as %s: quote it, \"%s\")", strings.TrimPrefix(tag, "!!"), n.Value)
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if tag != "!!int" {
			return "a whole number"
		}
	case reflect.Float32, reflect.Float64:
		if tag != "!!int" && tag != "!!float" {
			return "a number"
		}
	case reflect.Bool:
		if tag != "!!bool" {
			return "true or false"
		}
	}
	return ""
}

// jsonFields are a struct's fields by JSON name, embedded structs' too.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			for name, ft := range jsonFields(f.Type) {
				fields[name] = ft
			}
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" && f.IsExported() {
			fields[name] = f.Type
		}
	}
	return fields
}

func knownNames(fields map[string]reflect.Type) string {
	names := make([]string, 0, len(fields))
	for n := range fields {
		if n != "secrets" {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// lineOf finds the line of the longest field path a message starts with.
func lineOf(lines map[string]int, msg string) int {
	best, line := -1, 1
	for path, l := range lines {
		if path != "" && strings.HasPrefix(msg, path) && len(path) > best {
			rest := msg[len(path):]
			if strings.HasPrefix(rest, ":") || strings.HasPrefix(rest, ".") || strings.HasPrefix(rest, "[") {
				best, line = len(path), l
			}
		}
	}
	return line
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func orTop(path string) string {
	if path == "" {
		return "the file"
	}
	return path
}
