package stage_test

import (
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/slipway-ci/slipway/internal/stage"
)

// The document's Step schema names exactly the fields a step has, so that a
// field added to the agent's step is documented, and the document promises
// none the handler refuses.
func TestOpenAPIStepIsTheStep(t *testing.T) {
	var doc struct {
		Components struct {
			Schemas map[string]struct {
				Properties map[string]any `yaml:"properties"`
			} `yaml:"schemas"`
		} `yaml:"components"`
	}
	if err := yaml.Unmarshal(stage.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	documented := slices.Sorted(maps.Keys(doc.Components.Schemas["Step"].Properties))
	fields := slices.Sorted(slices.Values(jsonNames(reflect.TypeFor[stage.Step]())))
	if !slices.Equal(documented, fields) {
		t.Errorf("the OpenAPI Step has %v,\nstage.Step has %v", documented, fields)
	}
}

func jsonNames(t reflect.Type) []string {
	var names []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch {
		case f.Anonymous && name == "":
			names = append(names, jsonNames(f.Type)...)
		case f.IsExported() && name != "-":
			names = append(names, name)
		}
	}
	return names
}
