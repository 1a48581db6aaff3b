package metrics

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// units CloudWatch accepts (the EMF specification's Unit enumeration).
var units = []string{
	"Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
	"Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
	"Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second",
	"Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
}

// Validate checks one line against the Embedded Metric Format
// specification: the _aws metadata, its directives, and that every
// dimension and metric name refers to a root member of the right type.
// Tests of the code that emits metrics use it.
func Validate(line []byte) error {
	var root map[string]any
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	if err := dec.Decode(&root); err != nil {
		return fmt.Errorf("not a JSON object: %w", err)
	}
	meta, ok := root["_aws"].(map[string]any)
	if !ok {
		return errors.New("no _aws metadata object")
	}
	ts, ok := meta["Timestamp"].(json.Number)
	if !ok {
		return errors.New("_aws.Timestamp is not a number")
	}
	if ms, err := ts.Int64(); err != nil || ms < 1e12 {
		return fmt.Errorf("_aws.Timestamp %v is not epoch milliseconds", ts)
	}
	directives, ok := meta["CloudWatchMetrics"].([]any)
	if !ok || len(directives) == 0 {
		return errors.New("_aws.CloudWatchMetrics is not a non-empty array")
	}
	for i, raw := range directives {
		d, ok := raw.(map[string]any)
		if !ok {
			return fmt.Errorf("directive %d is not an object", i)
		}
		ns, ok := d["Namespace"].(string)
		if !ok || strings.TrimSpace(ns) == "" || len(ns) > 1024 {
			return fmt.Errorf("directive %d: Namespace %v", i, d["Namespace"])
		}
		sets, ok := d["Dimensions"].([]any)
		if !ok {
			return fmt.Errorf("directive %d: Dimensions is not an array", i)
		}
		for _, rawSet := range sets {
			set, ok := rawSet.([]any)
			if !ok || len(set) > 30 {
				return fmt.Errorf("directive %d: a dimension set is not an array of at most 30", i)
			}
			for _, rawName := range set {
				name, _ := rawName.(string)
				v, ok := root[name].(string)
				if !ok || v == "" || len(v) > 1024 {
					return fmt.Errorf("dimension %q has no string member at the root", name)
				}
			}
		}
		defs, ok := d["Metrics"].([]any)
		if !ok || len(defs) > 100 {
			return fmt.Errorf("directive %d: Metrics is not an array of at most 100", i)
		}
		for _, rawDef := range defs {
			def, ok := rawDef.(map[string]any)
			if !ok {
				return errors.New("a metric definition is not an object")
			}
			name, _ := def["Name"].(string)
			if name == "" || len(name) > 1024 {
				return fmt.Errorf("metric name %q", name)
			}
			switch v := root[name].(type) {
			case json.Number:
			case []any:
				if len(v) > 100 {
					return fmt.Errorf("metric %s has over 100 values", name)
				}
			default:
				return fmt.Errorf("metric %s has no numeric member at the root (%T)", name, root[name])
			}
			if u, ok := def["Unit"]; ok && !slices.Contains(units, fmt.Sprint(u)) {
				return fmt.Errorf("metric %s: unit %v", name, u)
			}
		}
	}
	return nil
}
